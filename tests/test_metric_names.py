"""One metric-name scheme: every key the CLI prints equals the number MLflow holds under `{split}/` + that key."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from eeopt.cli import main
from eeopt.names import (
    EFFICIENCY_METRIC_NAMES,
    EXIT_METRIC_NAMES,
    check_objective,
    efficiency_key,
    exit_key,
    parse_key,
    variant_key,
)


def test_every_key_round_trips_through_the_parser():
    keys = [exit_key(3, m) for m in EXIT_METRIC_NAMES] + [f"mean/{m}" for m in EXIT_METRIC_NAMES]
    keys += [efficiency_key(m, method) for m in EFFICIENCY_METRIC_NAMES for method in ("search", "sweep")]
    for key in keys:
        for full in (key, f"val/{key}", f"test/{variant_key(key, 'calib', 'temperature')}"):
            parsed = parse_key(full)
            assert parsed.base == key
    assert parse_key("test/calib/isotonic/exit2/ece").variant == ("calib", "isotonic")
    assert parse_key("sweep/acc_at_50").method == "sweep" and parse_key("acc_at_50").method == "search"
    assert parse_key("exit2/auroc").metric.higher_is_better and not parse_key("mean/ece").metric.higher_is_better
    for bad in ("exit0/ece", "mean/acc_at_50", "sweep/ece", "exit1/nope", "nope", "val/exit1"):
        with pytest.raises(ValueError):
            parse_key(bad)


def test_objective_rule():
    assert check_objective("val/sweep/acc_cost_auc").method == "sweep"
    assert check_objective("val/anything", custom=True) is None
    for bad, why in (("test/acc_cost_auc", "must be a val/"), ("val/calib/temperature/acc_at_50", "drop the calib"),
                     ("val/nope", "unknown metric")):
        with pytest.raises(ValueError, match=why):
            check_objective(bad)


@pytest.mark.slow
def test_cli_json_metrics_equal_the_trials_mlflow_metrics(tmp_path, capsys):
    """A real study trial (Ray, MLflow, Optuna on SQLite), then `exits evaluate` / `exits search --json` on the
    exit outputs it wrote, with the trial's calibrator, score, seed and search settings."""
    import mlflow

    study = {
        "data": {"name": "digits", "train_subset": 500},
        "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3, 5]},
        "training": {"epochs": 1, "batch_size": 64},
        "calibration": {"method": "temperature"},
        "policy": {"score": "entropy", "trials": 60, "sampler": "tpe", "seed": 7},
        "study": {"name": "names", "trials": 1, "seed": 3, "plots": False,
                  "resources": {"cpus_per_trial": 1, "max_concurrent": 1}, "ray": {"num_cpus": 1}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["study", "run", str(path)]) == 0
    capsys.readouterr()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [r for r in client.search_runs(client.get_experiment_by_name("names").experiment_id)
            if r.data.tags.get("eeopt.role") == "trial"]
    assert len(runs) == 1
    logged = runs[0].data.metrics
    trial_dir = tmp_path / "runs" / "names" / "trial-0"
    val, test = str(trial_dir / "val.npz"), str(trial_dir / "test.npz")
    same = ["--calibrate", "temperature", "--score", "entropy", "--json"]

    def cli(argv):
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)

    search = cli(["exits", "search", "--fit-on", val, "--evaluate-on", test, "--trials", "60", "--sampler", "tpe",
                  "--seed", "7", *same])
    outputs = {  # exits search also prints the val (in-sample) numbers of its policies, as "fit_metrics"
        "test": [cli(["exits", "evaluate", test, "--fit-on", val, *same])["metrics"], search["metrics"]],
        "val": [cli(["exits", "evaluate", val, "--fit-on", val, *same])["metrics"], search["fit_metrics"]],
    }
    compared = 0
    for split, printed in outputs.items():
        for metrics in printed:
            assert metrics
            for key, value in metrics.items():
                mlflow_value = logged[f"{split}/{key}"]
                if value is None:
                    assert math.isnan(mlflow_value), key
                else:
                    assert mlflow_value == value, (split, key, mlflow_value, value)
                compared += 1
    assert compared > 80
    assert {"test/exit1/kendall_tau", "test/acc_cost_auc", "test/sweep/acc_cost_auc", "val/mean/eefp"} <= set(logged)
