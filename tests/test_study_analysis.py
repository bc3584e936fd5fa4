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
    "study": {"name": "proxies", "trials": 5, "sampler": "random", "seed": 0,
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
