"""`eeopt study analyze` on a finished study: the numbers are scipy's on MLflow's metrics, the report reaches MLflow,
and `eeopt exits analyze` on the trials' folders gives the same numbers."""

from __future__ import annotations

import json

import pytest
import yaml
from scipy.stats import kendalltau, spearmanr

from eeopt.cli import main

pytestmark = pytest.mark.slow

STUDY = {
    "data": {"name": "digits", "train_subset": 400},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3, 5], "failure_head": True},
    "training": {"epochs": 1, "batch_size": 64},
    "calibration": {"method": "none", "compare": ["none", "temperature", "isotonic"]},
    "policy": {"trials": 30, "sampler": "nsga2", "seed": 1},
    "search_space": {"training.lr": {"type": "float", "low": 0.0005, "high": 0.02, "log": True},
                     "training.label_smoothing": {"type": "float", "low": 0.0, "high": 0.3}},
    "study": {"name": "proxies", "trials": 5, "sampler": "random", "seed": 0, "plots": False,
              "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2}},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    assert main(["study", "run", str(path)]) == 0
    return folder, path


def test_study_analyze_is_scipy_on_the_mlflow_metrics(finished, capsys):
    import mlflow

    folder, path = finished
    capsys.readouterr()
    assert main(["study", "analyze", str(path), "--json", "--log", "--output-dir", str(folder / "report")]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "Downloading artifacts" not in captured.err  # no MLflow progress bar per exit-outputs file
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("proxies").experiment_id
    trials = [r for r in client.search_runs([experiment]) if r.data.tags.get("eeopt.role") == "trial"]
    assert len(trials) == 5 and len(out["points"]) == 15
    assert {p["run_id"] for p in out["points"]} == {r.info.run_id for r in trials}
    # the same points, read straight from MLflow: test/calib/{name}/{key} of every trial run
    rows = [(r.data.metrics, name) for r in trials for name in ("none", "temperature", "isotonic")]
    for proxy, sign in (("mean/ece", -1), ("mean/auroc", 1)):
        x = [sign * m[f"test/calib/{name}/{proxy}"] for m, name in rows]
        y = [m[f"test/calib/{name}/acc_cost_auc"] for m, name in rows]
        row = next(r for r in out["correlations"] if r["proxy"] == proxy and r["target"] == "acc_cost_auc")
        assert row["spearman"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
        assert row["kendall"] == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
        assert row["n_trials"] == 5 and row["n_points"] == 15
    assert "score/learned/mean/auroc" in {r["proxy"] for r in out["correlations"]}  # the failure heads' score
    report = folder / "report"
    assert (report / "report.md").is_file() and list(report.glob("scatter_*.png"))
    assert (report / "accuracy_vs_cost.png").is_file()  # the best model before and after calibration
    parents = [r for r in client.search_runs([experiment]) if r.data.tags.get("eeopt.role") == "study"]
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "analysis")}
    assert {"analysis/report.md", "analysis/analysis_test.json"} <= logged
    # the parent's description: the study's summary, then the proxy table's top rows
    note = client.get_run(parents[0].info.run_id).data.tags["mlflow.note.content"]
    assert note.index("Best: [trial") < note.index("Which proxy predicts acc_cost_auc?") and "| mean/auroc |" in note


def test_exits_analyze_on_the_same_models_gives_the_same_numbers(finished, capsys):
    folder, path = finished
    capsys.readouterr()
    assert main(["study", "analyze", str(path), "--json"]) == 0
    from_study = json.loads(capsys.readouterr().out)
    trial_dirs = [str(folder / "runs" / "proxies" / f"trial-{n}") for n in range(5)]
    assert main(["exits", "analyze", *trial_dirs, "--compare", "none,temperature,isotonic", "--trials", "30",
                 "--sampler", "nsga2", "--seed", "1", "--json"]) == 0
    from_disk = json.loads(capsys.readouterr().out)
    assert len(from_disk["correlations"]) == len(from_study["correlations"])
    for a, b in zip(from_study["correlations"], from_disk["correlations"]):
        assert (a["proxy"], a["target"]) == (b["proxy"], b["target"])
        for key in ("spearman", "kendall", "partial_spearman", "spearman_ci", "kendall_ci", "n_trials", "n_points"):
            assert a[key] == pytest.approx(b[key], abs=1e-12), (a["proxy"], a["target"], key)


def _test_metrics(tracking_uri: str, experiment: str) -> dict[int, dict[str, float]]:
    """Each trial run's metrics, by trial number, read straight from MLflow."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {int(r.data.tags["optuna.trial_number"]): r.data.metrics for r in runs
            if r.data.tags.get("eeopt.role") == "trial"}


def test_study_analyze_replicate_end_to_end(finished, monkeypatch, capsys):
    """The finished study's file run again with `--set seed=1` (another training seed): the trials' sampled
    values agree by number, and `study analyze --replicate` gives scipy's numbers on the two studies' MLflow
    metrics, a table that fits 80 columns, a report section, and one-line errors for a missing replicate or one
    without a paired trial. (Last in this file: it adds a study to the stores the tests above read.)"""
    import re

    import numpy as np
    import optuna

    tmp_path, path = finished
    assert main(["study", "run", str(path), "--set", "seed=1", "--set", "study.name=proxies-seed1"]) == 0
    storage = f"sqlite:///{tmp_path / 'eeopt.db'}"
    studies = [optuna.load_study(study_name=name, storage=storage) for name in ("proxies", "proxies-seed1")]
    complete = (optuna.trial.TrialState.COMPLETE,)
    params = [{t.number: t.params for t in s.get_trials(states=complete)} for s in studies]
    assert params[0] == params[1] and len(params[0]) == 5

    capsys.readouterr()
    assert main(["study", "analyze", str(path), "--replicate", "proxies-seed1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["replicate"]
    assert out["pairs"] == [[n, n] for n in range(5)] and out["unpaired"] == {"first": [], "replicate": []}
    assert out["seeds"] == {"first": ["0"], "replicate": ["1"]} and out["other_params"] == []
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = [_test_metrics(uri, name) for name in ("proxies", "proxies-seed1")]
    keys = [(n, c) for n in range(5) for c in ("none", "temperature", "isotonic")]
    target = [[m[n][f"test/calib/{c}/acc_cost_auc"] for n, c in keys] for m in metrics]
    rows = {r["proxy"]: r for r in out["proxies"]}
    for proxy, sign in (("mean/ece", -1), ("mean/nll", -1), ("mean/auroc", 1)):
        rho = [_spearman([sign * m[n][f"test/calib/{c}/{proxy}"] for n, c in keys], y)
               for m, y in zip(metrics, target)]
        assert rows[proxy]["spearman"] == pytest.approx(rho[0], abs=1e-12)
        assert rows[proxy]["replicate_spearman"] == pytest.approx(rho[1], abs=1e-12)
    finite = [r for r in out["proxies"] if r["spearman"] is not None and r["replicate_spearman"] is not None]
    assert out["order"]["spearman"] == pytest.approx(
        _spearman([r["spearman"] for r in finite], [r["replicate_spearman"] for r in finite]), abs=1e-12)
    (none,) = [r for r in out["target_change"] if r["calibrator"] == "none"]
    a, b = ([m[n]["test/calib/none/acc_cost_auc"] for n in range(5)] for m in metrics)
    assert none["spearman"] == pytest.approx(_spearman(a, b), abs=1e-12) and none["n_models"] == 5
    assert none["median_abs_change"] == pytest.approx(np.median(np.abs(np.subtract(b, a))), abs=1e-12)

    monkeypatch.setenv("COLUMNS", "80")
    report = tmp_path / "report"
    assert main(["study", "analyze", str(path), "--replicate", "proxies-seed1", "--output-dir",
                 str(report)]) == 0
    text = capsys.readouterr().out
    assert "Retraining spread: proxies vs proxies-seed1 (seed 0 vs 1)" in text and "first-ranked:" in text
    ece = rows["mean/ece"]  # its row: Spearman (rank) in each study, and the change
    cells = [f"{ece['spearman']:.3f} \\({ece['rank']}\\)",
             f"{ece['replicate_spearman']:.3f} \\({ece['replicate_rank']}\\)", f"{ece['change']:.3f}"]
    assert re.search(r"│ mean/ece\s+│\s+" + r" │\s+".join(cells) + " │", text)
    lines = [line for line in text.splitlines() if not line.startswith("report: ")]  # a path, however long
    assert max(len(line.rstrip()) for line in lines) <= 80 and "…" not in text
    section = "## Retraining spread: `proxies` against its replicate `proxies-seed1`"
    assert section in (report / "report.md").read_text()

    assert main(["study", "analyze", str(path), "--replicate", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no study named 'nosuch'") and err.count("\n") == 1
    # a replicate whose trials sampled other values: the same runs, another learning rate
    shifted = optuna.create_study(study_name="shifted", storage=storage, direction="maximize")
    for t in studies[1].get_trials():
        shifted.add_trial(optuna.trial.create_trial(
            state=t.state, values=t.values,
            params={**t.params, "training.lr": (t.params["training.lr"] + 0.003) / 2},
            distributions=t.distributions, user_attrs=t.user_attrs))
    assert main(["study", "analyze", str(path), "--replicate", "shifted"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study 'shifted' has no trial paired with 'proxies': 5 trial numbers") and \
        err.count("\n") == 1


def _spearman(x, y) -> float:
    return float(spearmanr(x, y).statistic)
