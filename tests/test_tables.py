"""Every table the CLI prints fits the terminal: snapshots of each command at COLUMNS=80 and 120.

The commands run in-process on small generated data: synthetic exit outputs (`eeopt.core.synthetic`), and a study store
built without training (Optuna trials added directly, their MLflow runs holding the metrics a real trial logs for
models assessed by `eeopt.assess`). Each output is checked for what a person needs: no line wider than the
terminal, no cell cut short ("…"), and compared with tests/snapshots/NAME-WIDTH.txt (the study folder and the MLflow
run ids, which change from run to run, replaced by fixed strings of their length).

After an intended change of the output, regenerate the snapshots and read the diff:
    EEOPT_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest -q -n 0 tests/test_tables.py
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from eeopt.cli import main
from eeopt.core.evaluation import jsonable
from eeopt.core.synthetic import synthetic_exit_outputs

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("EEOPT_UPDATE_SNAPSHOTS", "") not in ("", "0")
WIDTHS = (80, 120)
#: The study folder's name in snapshots: the real one has the same length, so lines wrap the same way.
FOLDER = "/tmp/eeopt-tables-SNAPSHOT"

STUDY = {
    "data": {"name": "digits"},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3, 5], "failure_head": True},
    "training": {"epochs": 1, "batch_size": 64},
    "calibration": {"method": "none", "compare": ["none", "temperature"]},
    "policy": {"trials": 20},
    "search_space": {
        "training.lr": {"type": "float", "low": 0.0015, "high": 0.005, "log": True},
        "training.failure_loss": {"type": "categorical", "choices": ["bce", "tcp", "ranking"]},
        "training.failure_weight": {"type": "float", "low": 0.1, "high": 1.0, "log": True},
        "training.label_smoothing": {"type": "float", "low": 0.0, "high": 0.1},
        "training.exit_weights": {"type": "categorical", "choices": ["uniform", "linear"]},
    },
    "study": {"name": "tables", "trials": 8, "sampler": "random", "seed": 0},
}


#: Every metric of each complete trial of the `store` study, by trial number (what its metrics.json holds).
FULL_METRICS: dict[int, dict[str, float]] = {}


def _assessed(seed: int) -> dict[str, float]:
    """The flat metrics a trial logs, for a synthetic model (4 exits) assessed as a trial assesses its own."""
    from eeopt.assess import assess_model

    val = synthetic_exit_outputs(3, 400, 10, seed=2 * seed, with_scores=True)
    test = synthetic_exit_outputs(3, 400, 10, seed=2 * seed + 1, with_scores=True)
    return dict(assess_model(val, test, calibration="none", compare=["none", "temperature"], trials=20,
                             seed=0).metrics)


@pytest.fixture(scope="module")
def store():
    """A study of 8 trials: 6 complete (each with an MLflow run holding its metrics), one failed, one running."""
    import optuna
    from mlflow.entities import Metric, Param

    from eeopt.study import Study
    from eeopt.study import tracking
    from eeopt.study.trials import ATTR_ERROR, ATTR_MLFLOW_RUN

    folder = Path(tempfile.mkdtemp(prefix="eeopt-tables-", dir="/tmp"))
    assert len(str(folder)) == len(FOLDER)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    study = Study.from_yaml(path)
    optuna_study = study.optuna_study(create=True)
    distributions = study.distributions()
    client = tracking.client(study.tracking_uri)
    experiment = client.create_experiment(study.experiment_name, artifact_location=study.artifact_root)
    client.create_run(experiment, tags={"eeopt.role": "study", "eeopt.study": study.name})  # the parent run
    sampler = optuna.samplers.RandomSampler(seed=3)
    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    for number in range(8):
        params = {name: sampler.sample_independent(optuna_study, None, name, dist)
                  for name, dist in distributions.items()}
        attrs, values, state = {}, None, optuna.trial.TrialState.COMPLETE
        if number < 6:  # logged as a trial logs: a selection in the run, every metric in metrics.json
            metrics = _assessed(number)
            FULL_METRICS[number] = metrics
            run = client.create_run(experiment, tags={"eeopt.role": "trial", "eeopt.trial": str(number)})
            client.log_batch(run.info.run_id, params=[Param("calibration.method", "none")],
                             metrics=[Metric(k, float(v), 0, 0) for k, v in tracking.run_metrics(metrics).items()])
            trial_dir = folder / "runs" / f"trial-{number}"
            trial_dir.mkdir(parents=True)
            (trial_dir / "metrics.json").write_text(json.dumps(jsonable(metrics)))
            client.log_artifact(run.info.run_id, str(trial_dir / "metrics.json"))
            values = [metrics["val/acc_cost_auc"]]
            attrs = {ATTR_MLFLOW_RUN: run.info.run_id,
                     **{k: float(metrics[k]) for k in ("test/acc_cost_auc", "test/acc_at_50", "test/mean/ece",
                                                       "test/mean/auroc", "test/mean/eefp") if k in metrics}}
        elif number == 6:
            state = optuna.trial.TrialState.FAIL
            attrs = {ATTR_ERROR: "TrainingDiverged: the loss was NaN at epoch 1, batch 3 (training.lr = 0.0049 is "
                                 "too high for this model?); the trial's folder keeps its last checkpoint"}
        else:
            state = optuna.trial.TrialState.RUNNING
        finished = start + datetime.timedelta(seconds=40 + 37 * number)
        optuna_study.add_trial(optuna.trial.FrozenTrial(
            number=number, state=state, value=None, values=values, datetime_start=start,
            datetime_complete=None if state == optuna.trial.TrialState.RUNNING else finished, params=params,
            distributions=distributions, user_attrs=attrs, system_attrs={}, intermediate_values={}, trial_id=0))
    exits = folder / "exits"
    for offset, split in enumerate(("val", "test")):
        synthetic_exit_outputs(5, 1500, 10, seed=11 + offset, with_scores=True).save(exits / f"{split}.npz")
    models = []
    for seed in range(6):
        model = folder / f"model{seed}"
        for offset, split in enumerate(("val", "test")):
            synthetic_exit_outputs(3, 300, 10, seed=20 + 2 * seed + offset).save(model / f"{split}.npz")
        models.append(model)
    yield folder, path, exits, models
    shutil.rmtree(folder, ignore_errors=True)


def _commands(store) -> dict[str, list[str]]:
    folder, path, exits, models = store
    val, test = str(exits / "val.npz"), str(exits / "test.npz")
    return {
        "study-status": ["study", "status", str(path)],
        "study-export": ["study", "export", str(path), "--format", "table"],
        "study-analyze": ["study", "analyze", str(path)],
        "exits-evaluate": ["exits", "evaluate", test, "--fit-on", val],
        "exits-evaluate-compare": ["exits", "evaluate", test, "--fit-on", val, "--compare",
                                   "none,temperature,isotonic"],
        "exits-search": ["exits", "search", "--fit-on", val, "--evaluate-on", test, "--trials", "40"],
        "exits-analyze": ["exits", "analyze", *map(str, models), "--compare", "none,temperature", "--trials", "20"],
    }


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["study-status", "study-export", "study-analyze", "exits-evaluate",
                                  "exits-evaluate-compare", "exits-search", "exits-analyze"])
def test_tables_fit_the_terminal(store, name, width, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", str(width))
    capsys.readouterr()
    assert main(_commands(store)[name]) == 0
    text = re.sub(r"\b[0-9a-f]{32}\b", "0" * 32, capsys.readouterr().out.replace(str(store[0]), FOLDER))
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines, name
    wide = [line for line in lines if len(line) > width]
    assert not wide, f"{name} at {width} columns: {len(wide)} lines too wide, e.g.\n{wide[0]}"
    assert "…" not in text, f"{name} at {width} columns cuts a cell:\n{text}"
    _check_snapshot(f"{name}-{width}", "\n".join(lines) + "\n")


def test_study_tables_keep_what_a_person_needs(store, monkeypatch, capsys):
    """At 80 columns: every sampled value, objective and run id whole; the best trial starred and its star promised;
    the failed trial's error once, under the table; analyze's shared note once, not on every row."""
    import optuna

    folder, path = store[0], store[1]
    monkeypatch.setenv("COLUMNS", "80")
    trials = optuna.load_study(study_name="tables", storage=f"sqlite:///{folder / 'eeopt.db'}").trials
    best = max((t for t in trials if t.values), key=lambda t: t.values[0])
    for command in (["study", "status", str(path)], ["study", "export", str(path), "--format", "table"]):
        capsys.readouterr()
        assert main(command) == 0
        out = capsys.readouterr().out
        assert "★ best" in out and re.search(rf"│\s+★ {best.number} │", out)
        for t in trials:
            for value in t.params.values():
                assert (f"{value:.3g}" if isinstance(value, float) else str(value)) in out
            if t.values:
                assert f"{t.values[0]:.4f}" in out
            if "mlflow_run_id" in t.user_attrs and "export" in command:
                assert t.user_attrs["mlflow_run_id"] in out
        assert out.count("TrainingDiverged") == 1 and re.search(r"^trial 6 \(FAIL\): TrainingDiverged", out, re.M)
    capsys.readouterr()  # four models: every row lacks numbers for one reason, said once under the table
    assert main(["exits", "analyze", *map(str, store[3][:4]), "--compare", "none,temperature", "--trials", "20"]) == 0
    out = capsys.readouterr().out
    assert out.count("fewer than 5 trials (4)") == 1 and "every row: fewer than 5 trials (4)" in out


def _check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE or not path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"{path} did not exist: written now; check it and commit it")
        return
    expected = path.read_text()
    assert text == expected, (f"{name} differs from {path} (EEOPT_UPDATE_SNAPSHOTS=1 rewrites it after an "
                              f"intended change):\n{text}")


def test_a_few_trials_with_many_columns_are_turned_to_fit(store, monkeypatch, capsys):
    """Three trials whose columns would take more than two tables at 80 columns: one table, a row per column and a
    column per trial, every value whole; at 200 columns, the usual table."""
    from eeopt import display
    from eeopt.study import Study

    study = Study.from_yaml(store[1])
    rows = study.trial_rows()[:3]
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    display.print_trials(rows, study.objectives, {1})
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80 and "…" not in out and "(continued)" not in out
    assert re.search(r"┃\s+┃\s+trial 0 ┃\s+★ trial 1 ┃\s+trial 2 ┃", out)
    for row in rows:
        assert all(display._param(v) in out for k, v in row.items() if k.startswith("param/"))
    assert re.search(r"│ test/mean/ece ↓\s+│", out) and re.search(r"│ val/acc_cost_auc ↑\s+│", out)
    monkeypatch.setenv("COLUMNS", "200")
    display.print_trials(rows, study.objectives, {1})
    assert re.search(r"│\s+★ 1 │ COMPLETE", capsys.readouterr().out)


def test_study_analyze_reads_every_metric_from_the_lighter_runs(store, capsys):
    """The trial runs hold a selection of the metrics (every compared calibrator's and score's variants are only in
    metrics.json); study analyze gives the same analysis as on the runs that held everything: the one computed
    here from the full metrics."""
    from eeopt.analysis import analyze
    from eeopt.analysis.gather import points_from_metrics
    from eeopt.study import Study
    from eeopt.study import tracking
    from eeopt.study.trials import ATTR_MLFLOW_RUN

    study = Study.from_yaml(store[1])
    client = tracking.client(study.tracking_uri)
    run_ids = {t.number: t.user_attrs[ATTR_MLFLOW_RUN] for t in study.optuna_study(create=False).trials
               if ATTR_MLFLOW_RUN in t.user_attrs}
    for number, run_id in run_ids.items():  # the runs are light: no per-exit metric of a variant
        logged = client.get_run(run_id).data.metrics
        assert len(logged) < len(FULL_METRICS[number]) / 2
        assert not [k for k in logged if k.split("/")[1] in ("calib", "score") and "/exit" in k]
    capsys.readouterr()
    assert main(["study", "analyze", str(store[1]), "--json", "--per-exit"]) == 0
    out = json.loads(capsys.readouterr().out)
    points = [p for number, run_id in sorted(run_ids.items())
              for p in points_from_metrics(number, run_id, FULL_METRICS[number], "test", primary="none")]
    assert out == json.loads(json.dumps(analyze(points).to_dict()))
    assert {p["calibrator"] for p in out["points"]} == {"none", "temperature"}
    assert any(r["proxy"].startswith("score/learned/exit") for r in out["correlations"])


def test_a_trial_run_logs_about_300_metric_keys():
    """A trial of 5 exits assessed under 5 calibrators and 2 scores has 1,336 metrics; its run logs 256 (the
    configured variant's all, 6 of each other's), the epoch metrics and costs add about 15."""
    from eeopt.assess import assess_model
    from eeopt.study.tracking import VARIANT_RUN_KEYS, run_metrics

    val = synthetic_exit_outputs(5, 500, 10, seed=1, with_scores=True)
    test = synthetic_exit_outputs(5, 500, 10, seed=2, with_scores=True)
    metrics = assess_model(val, test, calibration="none", trials=10,
                           compare=["none", "temperature", "vector", "histogram", "isotonic"]).metrics
    logged = run_metrics(metrics)
    plain = [k for k in metrics if k.split("/")[1] not in ("calib", "score")]
    variants = {"/".join(k.split("/")[1:3]) for k in metrics if k.split("/")[1] in ("calib", "score")}
    assert len(metrics) > 1300 and len(logged) == len(plain) + 2 * len(variants) * len(VARIANT_RUN_KEYS) <= 285
    assert set(plain) <= set(logged) and len(variants) == 6


def test_study_analyze_writes_to_mlflow_only_with_log(store, capsys):
    """Without --log, analyze leaves the study's MLflow parent run as it was (with --log the report goes there:
    tests/test_study_analysis.py, on a real study)."""
    from eeopt.study import Study
    from eeopt.study import tracking

    study = Study.from_yaml(store[1])
    client = tracking.client(study.tracking_uri)
    experiment = client.get_experiment_by_name(study.experiment_name).experiment_id
    parent = client.search_runs([experiment], "tags.`eeopt.role` = 'study'")[0].info.run_id
    capsys.readouterr()
    assert main(["study", "analyze", str(store[1])]) == 0
    assert "logged" not in capsys.readouterr().err
    assert client.list_artifacts(parent) == [] and "mlflow.note.content" not in client.get_run(parent).data.tags
