"""What a person finds in MLflow and optuna-dashboard: the saved runs-page view (sections by metric family from the
one name scheme, the objective as the first column), the parent run's summary, plots as MLflow images, Optuna's
objective names, intermediate values and the link to each trial's MLflow run. Real MLflow, Optuna and Ray."""

from __future__ import annotations

import io
import re

import optuna
import pytest
import yaml
from rich.console import Console

from eeopt.names import metric_of, parse_key
from eeopt.study import Study
from eeopt.study.tracking import (
    TAG_LIMIT, VIEW_ID, VIEW_TAG, decode_view, encode_view, fit_view, runs_url, section_of, view_state,
)

OBJECTIVES = {"val/acc_cost_auc": "maximize"}


@pytest.fixture(scope="module")
def trial_keys():
    """The MLflow keys of a real trial's assessment: 6 exits, failure heads, 5 calibrators compared."""
    from eeopt.assess import assess_model
    from eeopt.core.synthetic import synthetic_exit_outputs

    val = synthetic_exit_outputs(6, 600, 10, seed=1, with_scores=True)
    test = synthetic_exit_outputs(6, 600, 10, seed=2, with_scores=True)
    metrics = assess_model(val, test, compare=["none", "temperature", "vector", "histogram", "isotonic"],
                           trials=20).metrics
    return sorted(metrics) + [f"train/val_acc_exit{k}" for k in range(1, 7)] + ["train/train_loss"]


def test_sections_keep_the_families_apart(trial_keys):
    sections: dict[str, set[str]] = {}
    for key in trial_keys:
        placed = section_of(key, OBJECTIVES)
        if key.startswith("train/"):
            assert placed is None  # outside the scheme: MLflow's own grouping by prefix ('train')
            continue
        assert placed is not None, key
        sections.setdefault(placed[1], set()).add(key)
    for name, keys in sections.items():
        families = {metric_of(k).group for k in keys} - {"cost"}
        splits = {parse_key(k).split for k in keys}
        assert len(splits) == 1, (name, splits)
        if "calibrator" not in name and "score" not in name and "objectives" not in name:
            assert len(families - {"efficiency"}) <= 1 or families <= {"efficiency"}, (name, families)
            assert not {"calibration", "failure"} <= families, name
    assert sections["objectives (val: what the search optimises)"] == {"val/acc_cost_auc"}
    assert "test/mean/ece" in sections["test · calibration · mean over exits"]
    assert "test/mean/auroc" in sections["test · failure prediction · mean over exits"]
    assert "test/exit2/eefp" in sections["test · failure prediction · per exit"]
    assert "test/calib/isotonic/mean/ece" in sections["test · calibrator isotonic"]


def test_view_state_opens_on_the_objective_and_fits_the_tag(trial_keys):
    params = ["sampled.training.lr", "sampled.training.failure_loss"]
    state = view_state(trial_keys, OBJECTIVES, params, image_keys=["plots/reliability"])
    assert state["orderByKey"] == "metrics.`val/acc_cost_auc`" and state["orderByAsc"] is False
    assert state["selectedColumns"][0] == "metrics.`val/acc_cost_auc`" == state["columnOrder"][0]
    assert "params.`sampled.training.lr`" in state["selectedColumns"]
    charted = {c.get("metricKey") for c in state["compareRunCharts"]}
    assert {k for k in trial_keys if not k.startswith("train/")} <= charted  # every scheme key has its place
    names = [s["name"] for s in state["compareRunSections"]]
    assert names[0].startswith("objectives") and names.index("test · calibration · mean over exits") < names.index(
        "val · calibration · mean over exits")
    value = encode_view(state)
    assert len(value) < TAG_LIMIT  # six exits, five calibrators: the whole view fits
    assert decode_view(value) == state
    wide = view_state([*trial_keys, *(k.replace("exit6", f"exit{k_}") for k in trial_keys if "exit6" in k
                                      for k_ in range(7, 13))], OBJECTIVES, params)
    assert len(encode_view(wide)) > TAG_LIMIT  # twelve exits do not: thinned, the objectives still charted
    thinned = decode_view(fit_view(wide))
    assert thinned["selectedColumns"] == wide["selectedColumns"]
    drawn = {c.get("metricKey") for c in thinned["compareRunCharts"]} | {
        c["yaxis"]["key"] for c in thinned["compareRunCharts"] if c["type"] == "SCATTER"}
    assert "val/acc_cost_auc" in drawn  # in the scatter plots against the sampled values
    assert len(fit_view(wide)) <= TAG_LIMIT
    assert runs_url("http://h:1", "7") == ("http://h:1/#/experiments/7/runs?workflowType=machine_learning"
                                           f"&viewStateShareKey={VIEW_ID}")


def test_view_lists_trials_and_compares_them(trial_keys):
    """Trials only (the parent run holds the best trial's numbers); the objective against each sampled value and
    test against val as scatter plots first (bar charts start at 0); param columns wide enough for their names;
    image cards of several trials; a distinct colour per trial, by rank."""
    from eeopt.study.tracking import IMAGE_RUNS, PALETTE, TRIALS_FILTER, column_width, rank_colours

    params = ["sampled.training.failure_loss", "sampled.training.failure_weight"]
    state = view_state(trial_keys, OBJECTIVES, params, image_keys=["plots/accuracy_vs_cost"])
    assert state["searchFilter"] == TRIALS_FILTER == "tags.`eeopt.role` = 'trial'"
    first = state["compareRunSections"][0]  # the objectives': scatter plots in place of the objective's bar chart
    assert first["name"].startswith("objectives")
    cards = [c for c in state["compareRunCharts"] if c["metricSectionId"] == first["uuid"]]
    scatters = [c for c in cards if not c["deleted"]]
    assert [c["metricKey"] for c in cards if c["deleted"]] == ["val/acc_cost_auc"]
    assert [(c["type"], c["xaxis"], c["yaxis"]["key"]) for c in scatters] == [
        ("SCATTER", {"key": p, "type": "PARAM"}, "val/acc_cost_auc") for p in params] + [
        ("SCATTER", {"key": "val/acc_cost_auc", "type": "METRIC"}, "test/acc_cost_auc")]
    assert state["selectedColumns"][:4] == ["metrics.`val/acc_cost_auc`", *(f"params.`{p}`" for p in params),
                                            "metrics.`test/acc_cost_auc`"]  # what was tried, beside what it got
    widths = state["columnWidths"]
    # MLflow's header font takes ~6 px a character (seen in headless Chromium): both names fit whole, so they no
    # longer read the same
    assert all(widths[f"params.`{p}`"] >= 7 * len(p) for p in params)
    assert column_width("metrics.`val/acc_cost_auc`") == 7 * len("val/acc_cost_auc") + 32
    (image,) = [c for c in state["compareRunCharts"] if c["type"] == "IMAGE"]
    assert image["runsCountToCompare"] == IMAGE_RUNS > 1
    (section,) = [s for s in state["compareRunSections"] if s["uuid"] == image["metricSectionId"]]
    assert section["columns"] == 1 and section["cardHeight"] >= 600  # a row per plot: several trials side by side
    colours = rank_colours({"a": 0.5, "b": 0.9, "c": float("nan"), "d": 0.7})
    assert colours == {"b": PALETTE[0], "d": PALETTE[1], "a": PALETTE[2]}
    assert rank_colours({"a": 0.5, "b": 0.9}, maximize=False) == {"a": PALETTE[0], "b": PALETTE[1]}
    assert len(set(PALETTE)) == len(PALETTE)


# ---------------------------------------------------------------------------------------------------- end to end
BASE = {
    "seed": 0,
    "data": {"name": "digits", "train_subset": 500},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3], "failure_head": True},
    "training": {"epochs": 2, "batch_size": 64, "lr": 0.003},
    "calibration": {"method": "none", "compare": ["none", "temperature"]},
    "policy": {"trials": 20},
    "search_space": {"training.lr": {"type": "float", "low": 0.002, "high": 0.01, "log": True}},
    "study": {"name": "watched", "trials": 2, "sampler": "random",
              "resources": {"cpus_per_trial": 1, "max_concurrent": 2}},
}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_study_reads_well_in_mlflow_and_optuna(tmp_path, ray_local, capsys, monkeypatch):
    import mlflow

    from eeopt.study.progress import Reporter

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(BASE))
    study = Study.from_yaml(path)
    console = Console(file=io.StringIO(), width=120, soft_wrap=True)
    summary = study.run(progress=Reporter(console=console))
    assert summary.completed == 2
    printed = console.file.getvalue()
    assert "trial 0 epoch 2: val acc (last exit)" in printed and "2/2 done" in printed

    # Optuna: the objective by its name; each epoch's validation accuracy as an intermediate value, the same
    # number MLflow logged for the last exit; the MLflow run as a link in the trial's note and attributes.
    optuna_study = optuna.load_study(study_name="watched", storage=study.storage_url)
    assert optuna_study.metric_names == ["val/acc_cost_auc"]
    client = mlflow.MlflowClient(study.tracking_uri)
    from optuna_dashboard import get_note

    for trial in optuna_study.trials:
        run_id = trial.user_attrs["mlflow_run_id"]
        last = max((k for k in client.get_run(run_id).data.metrics if k.startswith("train/val_acc_exit")),
                   key=lambda k: int(k.rsplit("exit", 1)[1]))
        history = {m.step: m.value for m in client.get_metric_history(run_id, last)}
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.intermediate_values == pytest.approx(history)
        experiment = client.get_experiment_by_name("watched").experiment_id
        # a local store: the link is a path on optuna-dashboard, which redirects to wherever `eeopt ui` serves
        url = f"/eeopt/mlflow/{experiment}/{run_id}"
        assert trial.user_attrs["mlflow_run_url"] == url
        assert f"]({url})" in get_note(optuna.trial.Trial(optuna_study, trial._trial_id))
        # the trial's plots as MLflow images (the runs page's image grid), and as files
        images = [a.path for a in client.list_artifacts(run_id, "images")]
        for name in ("accuracy_vs_cost", "reliability", "risk_coverage", "per_exit_metrics"):
            assert any(p.startswith(f"images/plots~{name}+step+0") and p.endswith(".png") for p in images), name
        assert {a.path for a in client.list_artifacts(run_id, "plots")} >= {"plots/reliability.png"}

    # The parent run carries the summary under the trials' own keys; the experiment carries the saved view.
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if r.data.tags.get("eeopt.role") == "study"]
    best = optuna_study.best_trial
    assert parent.data.metrics["val/acc_cost_auc"] == pytest.approx(best.value)
    assert parent.data.metrics["test/acc_cost_auc"] == pytest.approx(best.user_attrs["test/acc_cost_auc"])
    assert parent.data.metrics["trials/complete"] == 2 and parent.data.metrics["trials/best"] == best.number
    assert f"[trial {best.number}]" in parent.data.tags["mlflow.note.content"]
    state = decode_view(client.get_experiment(experiment).tags[VIEW_TAG])
    assert state["selectedColumns"][0] == "metrics.`val/acc_cost_auc`"
    assert "params.`sampled.training.lr`" in state["selectedColumns"]
    images = {k for c in state["compareRunCharts"] if c["type"] == "IMAGE" for k in c["imageKeys"]}
    assert images == {f"plots/{n}" for n in ("accuracy_vs_cost", "reliability", "risk_coverage", "per_exit_metrics")}

    # The terminal: status lists every trial with its headline metrics; export puts the run id first and writes
    # an undefined number (EEFP at the last exit) as an empty CSV cell.
    from eeopt.cli import main

    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "200")  # one row per trial (a narrow terminal may get the table turned)
    assert main(["study", "status", str(path)]) == 0
    status = capsys.readouterr().out
    # headers on short lines (family, key prefix, metric and direction) so the table fits 80 columns
    assert "test/mean/" in status and "auroc ↑" in status and "ece ↓" in status
    assert all(re.search(rf"│\s+(★ )?{t.number} │ COMPLETE", status) for t in optuna_study.trials), status
    assert main(["study", "export", str(path)]) == 0
    import csv

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 and list(rows[0])[0] == "mlflow_run_id"
    assert {r["test/exit3/eefp"] for r in rows} == {""} and all(float(r["test/exit3/ece"]) >= 0 for r in rows)
    assert main(["study", "export", str(path), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert all(t.user_attrs["mlflow_run_id"] in table for t in optuna_study.trials)


def test_dashboard_links_follow_eeopt_ui_wherever_it_serves(tmp_path):
    """The trial notes' path on optuna-dashboard redirects to the run's page on the address the running `eeopt ui`
    recorded; with no UI running (no record, or its process gone), a page says how to start it."""
    import io as io_
    import os
    from wsgiref.util import setup_testing_defaults

    from bottle import Bottle

    from eeopt.cli.links import add_mlflow_route, forget_ui, record_ui, recorded_ui, ui_file
    from eeopt.study.tracking import dashboard_run_path

    record = ui_file(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert record == tmp_path / "mlflow.db.ui.json" and ui_file("http://mlflow:5000") is None
    app = Bottle()
    add_mlflow_route(app, record, "study.yaml")

    def get(path):
        environ, answer = {"PATH_INFO": path, "wsgi.input": io_.BytesIO()}, {}
        setup_testing_defaults(environ)
        body = b"".join(app(environ, lambda status, headers, *_: answer.update(status=status, headers=dict(headers))))
        return answer["status"], answer["headers"], body.decode()

    status, _, body = get(dashboard_run_path("3", "abc"))
    assert status.startswith("503") and "eeopt ui study.yaml" in body and "abc" in body
    record_ui(record, "http://127.0.0.1:5123")
    status, headers, _ = get(dashboard_run_path("3", "abc"))
    assert status.startswith("302")
    assert headers["Location"] == "http://127.0.0.1:5123/#/experiments/3/runs/abc?workflowType=machine_learning"
    record.write_text(record.read_text().replace(str(os.getpid()), "999999999"))  # a UI that is gone
    assert recorded_ui(record) is None and get(dashboard_run_path("3", "abc"))[0].startswith("503")
    record_ui(record, "http://127.0.0.1:5123")
    forget_ui(record)
    assert not record.exists()
