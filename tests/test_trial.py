"""One study trial without Ray: the function a Ray worker runs, called directly."""

import json
import math

import numpy as np
import pytest

from eeopt.config import TrainConfig
from eeopt.errors import ConfigError
from eeopt.core.evaluation import evaluate_exits
from eeopt.pipeline import check_objective_names, evaluate_trial, objective_values, run_trial
from eeopt.core.synthetic import synthetic_exit_outputs

CFG = TrainConfig.model_validate({
    "data": {"name": "digits", "train_subset": 600},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3]},
    "training": {"epochs": 1, "batch_size": 64, "lr": 0.003},
    "calibration": {"method": "temperature"},
    "policy": {"trials": 40},
})


def test_evaluate_trial_keys_and_protocol():
    val = synthetic_exit_outputs(3, 800, 10, seed=1)
    test = synthetic_exit_outputs(3, 700, 10, seed=2)
    evaluation = evaluate_trial(val, test, CFG)
    metrics = evaluation.metrics
    search = evaluation.primary.search
    for split in ("val", "test"):
        for key in ("acc_at_25", "acc_at_50", "acc_at_75", "acc_at_100", "acc_cost_auc", "mean_cost",
                    "sweep/acc_cost_auc", "sweep/mean_cost", "mean/ece", "mean/eefp", "exit1/auroc",
                    "exit3/accuracy", "exit2/kendall_tau"):
            assert f"{split}/{key}" in metrics, f"{split}/{key}"
    # every key is in the one scheme
    from eeopt.names import parse_key

    for key in metrics:
        assert parse_key(key).split in ("val", "test")
    # test metrics are those of the val-fitted calibrator and val-chosen thresholds, recomputed independently
    report = evaluate_exits(test, fit_on=val, calibrate="temperature")
    assert metrics["test/sweep/acc_cost_auc"] == report.metrics["sweep/acc_cost_auc"]
    assert metrics["test/exit2/ece"] == report.metrics["exit2/ece"]
    assert metrics["test/acc_cost_auc"] == search.result.efficiency.acc_cost_auc
    assert metrics["val/mean_cost"] == search.result.fit_efficiency.cost_at[100]


@pytest.mark.slow  # over 1.5 s on an idle core
def test_run_trial_with_named_and_custom_objectives(tmp_path):
    result, values = run_trial(CFG, output_dir=tmp_path, objectives=["val/acc_cost_auc", "val/mean_cost"])
    assert values == [result.metrics["val/acc_cost_auc"], result.metrics["val/mean_cost"]]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["val/acc_cost_auc"] == pytest.approx(values[0])
    assert (tmp_path / "pareto.json").is_file() and (tmp_path / "test.npz").is_file()
    from eeopt.plots import TRIAL_PLOTS

    assert list(result.plots) == list(TRIAL_PLOTS) and all(p.parent == tmp_path / "plots" and p.stat().st_size
                                                           for p in result.plots.values())

    from custom_objective import accuracy_per_cost

    expected = accuracy_per_cost(result)
    assert objective_values(result, ["val/custom"], "custom_objective:accuracy_per_cost") == [expected]
    assert objective_values(result, ["val/custom"], accuracy_per_cost) == [expected]
    with pytest.raises(ConfigError, match="returned 1 values but study.objectives names 2"):
        objective_values(result, ["val/a", "val/b"], accuracy_per_cost)
    with pytest.raises(ConfigError, match="undefined"):
        objective_values(result, ["val/x"], lambda r: math.nan)


@pytest.mark.parametrize("name", ["val/acc_cost_auc", "val/acc_at_25", "val/mean_cost", "val/mean_cost_at_50",
                                  "val/mean/auroc", "val/exit3/eefp", "val/sweep/acc_at_75"])
def test_known_objective_names(name):
    check_objective_names([name])


@pytest.mark.parametrize("name", ["val/acc", "val/exit0/ece", "val/mean/acc_at_50", "val/sweep/ece"])
def test_unknown_objective_names(name):
    with pytest.raises(ConfigError, match="unknown metric"):
        check_objective_names([name])


@pytest.mark.parametrize("name", ["test/acc_at_50", "acc_at_50"])
def test_objectives_are_val_metrics(name):
    with pytest.raises(ConfigError, match="must be a val/ metric"):
        check_objective_names([name])


def test_search_summary_is_json_safe():
    from eeopt.core.evaluation import jsonable

    val, test = synthetic_exit_outputs(3, 300, 5, seed=1), synthetic_exit_outputs(3, 300, 5, seed=2)
    summary = evaluate_trial(val, test, CFG).primary.search.to_dict()
    text = json.dumps(jsonable(summary), allow_nan=False)
    assert "Infinity" not in text and np.isfinite(json.loads(text)["metrics"]["acc_cost_auc"])
