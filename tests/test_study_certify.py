"""`policy.risk_control` in a study trial, run in-process (`eeopt.pipeline.run_trial`, the function a study's
Ray worker calls; the worker then logs `result.metrics` and `result.policies` to MLflow unchanged): the certified
policy's test risk equals the risk recomputed from the trial's test.npz and policies/certified.json, and `eeopt
predict --split test` on the trial's folder realises it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eeopt.cli import main
from eeopt.config import TrainConfig
from eeopt.errors import ConfigError
from eeopt.core.outputs import ExitOutputs
from eeopt.core.policy_file import PolicyFile
from eeopt.risk_control import exit_losses
from eeopt.pipeline import check_objective_names, run_trial

CFG = {
    "data": {"name": "digits", "train_subset": 600},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3]},
    "training": {"epochs": 1, "batch_size": 64, "lr": 0.003},
    "calibration": {"method": "temperature"},
    "policy": {"trials": 30, "risk_control": {"risk": "performance-gap", "epsilon": 0.1, "delta": 0.1,
                                              "calibration_share": 0.5}},
}


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("trial")
    result, values = run_trial(TrainConfig.model_validate(CFG), output_dir=folder,
                               objectives=["val/certified/mean_cost", "val/acc_cost_auc"])
    return folder, result, values


def test_trial_logs_the_certified_policy_it_wrote(trial):
    folder, result, values = trial
    m = result.metrics
    assert values == [m["val/certified/mean_cost"], m["val/acc_cost_auc"]]
    assert json.loads((folder / "metrics.json").read_text())["test/certified/risk"] == m["test/certified/risk"]
    policy = PolicyFile.load(folder / "policies" / "certified.json")
    test = ExitOutputs.load(folder / "test.npz")
    _, exits, _ = policy.decide(test)
    calibrated = policy.build_calibrator().apply(test)
    risk = exit_losses("performance-gap", calibrated)[exits, np.arange(test.num_samples)].mean()
    assert m["test/certified/risk"] == pytest.approx(risk, abs=1e-15)
    assert m["test/certified/mean_cost"] == pytest.approx(policy.evaluate(test)["mean_cost"])
    assert m["test/certified/certified"] == float(policy.certification["certified"])
    # the held-out half of val certifies; the trial's search and val metrics saw the other half only
    n_val = ExitOutputs.load(folder / "val.npz").num_samples
    assert policy.certification["n"] == n_val // 2 == result.certified.certificate.n
    assert result.evaluation.primary.val.raw.num_samples == n_val - n_val // 2
    assert policy.calibrator == "temperature"
    assert policy.calibrator_state == result.evaluation.primary.calibrator.state_dict()


def test_predict_on_the_trial_folder_realises_the_logged_risk(trial, capsys):
    folder, result, _ = trial
    assert main(["predict", str(folder), "--policy", str(folder / "policies" / "certified.json"), "--split",
                 "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    n = out["samples"]  # float32 batches may move a sample that sits at a threshold
    assert out["certification"]["realised_risk"] == pytest.approx(result.metrics["test/certified/risk"],
                                                                  abs=1 / n + 1e-12)
    assert main(["predict", str(folder), "--policy", str(folder / "policies" / "certified.json"), "--split",
                 "test"]) == 0
    assert "realised performance-gap on the test split" in " ".join(capsys.readouterr().out.split())


def test_certified_objective_and_config_checks():
    check_objective_names(["val/certified/mean_cost", "val/certified/risk"])
    with pytest.raises(ConfigError, match="unknown metric 'val/certified/cost'"):
        check_objective_names(["val/certified/cost"])
    with pytest.raises(ValueError, match="risk"):
        TrainConfig.model_validate({**CFG, "policy": {"risk_control": {"epsilon": 0.1, "risk": "gap"}}})
    with pytest.raises(ValueError, match="calibration_share"):
        TrainConfig.model_validate({**CFG, "policy": {"risk_control": {"epsilon": 0.1, "calibration_share": 1}}})
