"""From a study to deployment: `eeopt study export --best --policy p.json`, then `eeopt predict MODEL_DIR --policy
p.json --split test --json` on the trial's model reproduces the test accuracy and mean cost the trial logged to
MLflow for that budget (`test/acc_at_{b}`, `test/mean_cost_at_{b}`).

One tiny real study (digits, Ray, Optuna on SQLite, a local MLflow store; a temperature calibrator, so its fitted
state travels through the policy file) serves the module; the best trial is chosen here independently, from the
Optuna storage.
"""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import optuna
import pytest
import yaml

from eeopt.cli import main
from eeopt.core.policy_file import PolicyFile

pytestmark = pytest.mark.slow

STUDY = {
    "seed": 0,
    "data": {"name": "digits", "train_subset": 600},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3]},
    "training": {"epochs": 2, "batch_size": 64},
    "calibration": {"method": "temperature"},
    "policy": {"trials": 40, "score": "entropy"},
    "search_space": {"training.lr": {"type": "float", "low": 0.002, "high": 0.01, "log": True}},
    "study": {"name": "deploy", "trials": 2, "sampler": "random", "seed": 1, "plots": False,
              "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2}},
}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    assert main(["study", "run", str(path)]) == 0
    return path


def _best_trial(path):
    """The trial with the highest val/acc_cost_auc (the lowest number among equals), read from Optuna."""
    storage = f"sqlite:///{path.parent / 'eeopt.db'}"
    trials = [t for t in optuna.load_study(study_name="deploy", storage=storage).get_trials()
              if t.state.name == "COMPLETE"]
    assert len(trials) == 2
    return max(sorted(trials, key=lambda t: t.number), key=lambda t: t.values[0])


def _logged(path, run_id):
    client = mlflow.MlflowClient(f"sqlite:///{path.parent / 'mlflow.db'}")
    return client.get_run(run_id).data.metrics


def _cli_json(capsys, argv):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("budget", [None, "0.75"])
def test_exported_best_policy_predicts_what_the_trial_logged(finished_study, tmp_path, capsys, budget):
    best = _best_trial(finished_study)
    percent = 50 if budget is None else 75
    out = tmp_path / "p.json"
    argv = ["study", "export", str(finished_study), "--best", "--policy", str(out)]
    assert main(argv + ([] if budget is None else ["--budget", budget])) == 0
    err = capsys.readouterr().err
    assert f"wrote trial {best.number}'s policy for budget {percent / 100:g}" in err, err

    policy = PolicyFile.load(out)
    run_id = best.user_attrs["mlflow_run_id"]
    model_dir = finished_study.parent / "runs" / "deploy" / f"trial-{best.number}"
    assert policy.source == {"model_dir": str(model_dir.resolve()), "trial": best.number, "run_id": run_id}
    assert policy.budget == percent / 100 and policy.calibrator == "temperature" and policy.score == "entropy"
    assert policy.cost_unit == "flops"
    logged = _logged(finished_study, run_id)
    np.testing.assert_allclose(policy.costs, [logged[f"cost/flops/exit{k}"] for k in (1, 2, 3)], rtol=1e-12)

    predicted = _cli_json(capsys, ["predict", str(model_dir), "--policy", str(out), "--split", "test", "--json"])
    assert predicted["samples"] == 359  # digits' test split
    assert predicted["accuracy"] == pytest.approx(logged[f"test/acc_at_{percent}"], abs=1e-12)
    assert predicted["mean_cost"] == pytest.approx(logged[f"test/mean_cost_at_{percent}"], rel=1e-9)
    assert predicted["exit_shares"] == pytest.approx(policy.report["exit_shares"], abs=1e-12)


def test_export_of_another_trial_and_from_mlflow_alone(finished_study, tmp_path, capsys):
    """`--trial N` exports that trial's policy; with the trial's folder gone it comes from MLflow's artifacts."""
    other = 1 - _best_trial(finished_study).number
    folder = finished_study.parent / "runs" / "deploy" / f"trial-{other}"
    original = json.loads((folder / "policies" / "budget_50.json").read_text())
    moved = tmp_path / "moved"
    shutil.move(folder / "policies", moved)
    try:
        out = tmp_path / "other.json"
        assert main(["study", "export", str(finished_study), "--trial", str(other), "--policy", str(out)]) == 0
    finally:
        shutil.move(moved, folder / "policies")
    assert json.loads(out.read_text()) == original
    assert PolicyFile.load(out).source["trial"] == other


@pytest.mark.parametrize("extra, expected", [
    (["--best", "--policy", "{out}", "--budget", "0.6"], "budget: expected one of 0.25, 0.5, 0.75"),
    (["--best", "--trial", "0", "--policy", "{out}"], "--best or --trial N"),
    (["--best"], "--policy FILE"),
    (["--budget", "0.5"], "--budget: only with --policy"),
    (["--trial", "9", "--policy", "{out}"], "no trial 9"),
    (["--best", "--policy", "{tmp}"], "is a directory"),
    (["--best", "--policy", "{out}", "--format", "json"], "--output and --format are for the trial rows"),
])
def test_bad_export_requests_are_one_line(finished_study, tmp_path, capsys, extra, expected):
    out = tmp_path / "p.json"
    argv = [a.format(out=out, tmp=tmp_path) for a in extra]
    assert main(["study", "export", str(finished_study), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not out.exists()


def test_export_without_finished_trials_writes_nothing(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    out = tmp_path / "p.json"
    assert main(["study", "export", str(path), "--best", "--policy", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no study named 'deploy'" in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "eeopt.db").exists() and not (tmp_path / "mlflow.db").exists()
    # a study whose only trial failed has no best trial
    storage = f"sqlite:///{tmp_path / 'eeopt.db'}"
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL)
    optuna.create_study(study_name="deploy", storage=storage, direction="maximize").add_trial(failed)
    assert main(["study", "export", str(path), "--best", "--policy", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has no finished trial yet" in err and err.count("\n") == 1, err
    assert not out.exists()
