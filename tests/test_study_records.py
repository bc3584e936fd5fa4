"""The records the searcher and a Ray worker exchange survive the trip through Tune's dicts."""

import json
import math

from eeopt.study.worker import EPOCH_METRIC, EpochReport, TrialReport, TrialSpec


def _flatten(d, prefix=""):
    """What Tune does to nested result dicts (`a/b` keys)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_trial_spec_round_trip():
    spec = TrialSpec(
        trial_number=3, train_config={"model": {"exits": [2, 4]}, "training": {"lr": 0.003}},
        sampled={"model.exits": [2, 4], "training.lr": 0.003}, output_dir="/runs/tiny/trial-3",
        mlflow_run_id="abc", objectives=("val/acc_cost_auc", "val/mean_cost"),
        objective_ref=None,
    )
    config = spec.to_config()
    assert list(config) == ["eeopt_trial"] and isinstance(config["eeopt_trial"], str)
    assert TrialSpec.from_config(json.loads(json.dumps(config))) == spec


def test_reports_round_trip_through_flattened_results():
    done = TrialReport.complete([0.81, 1.5], {"test/acc_at_50": 0.7, "test/exit3/accuracy": math.nan}, 0.9)
    result = _flatten({**done.to_result(), "training_iteration": 3, "config": {"eeopt_trial": "{}"}})
    assert result[EPOCH_METRIC] == 0.9  # the scheduler's metric stays top-level
    back = TrialReport.from_result(result)
    assert back == TrialReport("COMPLETE", (0.81, 1.5), {"test/acc_at_50": 0.7, "test/exit3/accuracy": None}, None, 0.9)
    assert EpochReport.from_result(result) is None

    failed = TrialReport.from_result(TrialReport.fail("TrainingDiverged: loss is nan").to_result())
    assert failed.status == "FAIL" and failed.error == "TrainingDiverged: loss is nan" and failed.values == ()

    epoch = EpochReport(2, 0.75).to_result()
    assert epoch == {"epoch": 2, EPOCH_METRIC: 0.75}
    assert EpochReport.from_result(epoch) == EpochReport(2, 0.75) and TrialReport.from_result(epoch) is None
    assert TrialReport.from_result(None) is None and TrialReport.from_result({}) is None
