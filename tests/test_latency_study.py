"""`policy.cost: latency`: a study whose objectives are accuracy-latency, measured inside each trial.

A tiny real study (digits, Ray, Optuna on SQLite, a local MLflow store) runs end to end; every trial's MLflow run
carries both cost vectors, and its objectives and efficiency metrics are recomputed here from the exit outputs the
trial saved, with the measured latency as the cost (a brute-force sweep over thresholds, and the trial's policy
files applied by hand), so the test fails if FLOPs drove them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from eeopt.cli import main
from eeopt.config import TrainConfig
from eeopt.names import COST_UNITS, cost_key, parse_key
from eeopt.core.outputs import ExitOutputs
from eeopt.study import Study

STUDY = {
    "seed": 0,
    "data": {"name": "digits", "train_subset": 600},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3]},
    "training": {"epochs": 2, "batch_size": 64, "lr": 0.005},
    "policy": {"trials": 30, "cost": "latency", "latency_batch_size": 32, "latency_repeats": 5},
    "study": {"name": "lat", "trials": 1, "sampler": "random", "plots": False,
              "objectives": {"val/sweep/acc_cost_auc": "maximize", "val/sweep/mean_cost_at_50": "minimize"},
              "resources": {"cpus_per_trial": 1, "max_concurrent": 1}, "ray": {"num_cpus": 1}},
}
SLACK = 1e-9  # eeopt.core.metrics.efficiency.BUDGET_RTOL: a budget is met within this share of the last exit's cost


def _write(folder, data):
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------------------------- reference
def _exits(scores: np.ndarray, thresholds) -> np.ndarray:
    """[N] exit taken (0-based): the first non-final exit whose score is >= its threshold, else the last."""
    k = scores.shape[0]
    passes = scores[:-1] >= np.asarray(thresholds, dtype=float)[:, None]  # [K-1, N]
    first = np.where(passes.any(axis=0), passes.argmax(axis=0), k - 1)
    return first


def _policy_numbers(out: ExitOutputs, costs: np.ndarray, thresholds) -> tuple[float, float]:
    """(accuracy, mean cost) of a threshold policy, from the exit outputs' msp scores and the given costs."""
    exits = _exits(out.confidence, thresholds)
    samples = np.arange(out.num_samples)
    return float(np.mean(out.predictions[exits, samples] == out.labels)), float(np.mean(costs[exits]))


def _brute_sweep(out: ExitOutputs, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy [P], mean cost [P]) of one shared threshold at every distinct non-final score (and +inf)."""
    candidates = np.append(np.unique(out.confidence[:-1]), np.inf)
    numbers = np.array([_policy_numbers(out, costs, [t] * (out.num_exits - 1)) for t in candidates])
    return numbers[:, 0], numbers[:, 1]


def _best_within(acc, cost, budget, last_cost):
    """Index of the most accurate candidate costing at most `budget` (ties: the cheaper)."""
    ok = np.flatnonzero(cost <= budget + SLACK * last_cost)
    best = ok[acc[ok] == acc[ok].max()]
    return best[np.argmin(cost[best])]


def _acc_cost_auc(acc, cost, costs, points=20001):
    """Mean over a fine grid of budgets from exit 1's to exit K's cost of the best accuracy within the budget."""
    return float(np.mean([acc[_best_within(acc, cost, b, costs[-1])]
                          for b in np.linspace(costs[0], costs[-1], points)]))


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_latency_study_optimises_measured_latency(tmp_path):
    import mlflow

    path = _write(tmp_path, STUDY)
    study = Study.from_yaml(path)
    summary = study.run(progress=False)
    assert summary.completed == 1 and summary.failed == 0

    client = mlflow.MlflowClient(study.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("lat").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("eeopt.role") == "study")
    trials = [r for r in runs if r.data.tags.get("eeopt.role") == "trial"]
    assert len(trials) == 1 and parent.data.tags["eeopt.cost"] == "latency_ms"
    run = trials[0]
    metrics = run.data.metrics
    assert run.data.tags["eeopt.cost"] == "latency_ms" and run.data.params["policy.cost"] == "latency"

    folder = tmp_path / "runs" / "lat" / f"trial-{run.data.tags['optuna.trial_number']}"
    val, test = ExitOutputs.load(folder / "val.npz"), ExitOutputs.load(folder / "test.npz")
    k = val.num_exits
    # both cost vectors in MLflow, equal to the saved exit outputs' (FLOPs as costs, the latency beside them)
    flops = np.array([metrics[cost_key("flops", e)] for e in range(1, k + 1)])
    latency = np.array([metrics[cost_key("latency_ms", e)] for e in range(1, k + 1)])
    np.testing.assert_allclose(flops, val.costs, rtol=1e-12)
    np.testing.assert_allclose(latency, val.latency_ms, rtol=1e-12)
    np.testing.assert_allclose(test.latency_ms, val.latency_ms, rtol=0)
    assert np.all(np.diff(latency) > 0) and latency[-1] < 1e3 < flops[0]  # milliseconds per sample, not FLOPs
    profile = json.loads((folder / "latency.json").read_text())
    assert profile["batch_size"] == 32 and profile["repeats"] == 5 and profile["device"] == "cpu"
    np.testing.assert_allclose(np.array(profile["median_ms"]) / 32, latency, rtol=1e-12)

    # the objectives: the exact global sweep on val, recomputed by brute force with the latency as the cost
    optuna_trial = study.trial_store(create=False).trials()[0]
    acc, cost = _brute_sweep(val, latency)
    at_50 = _best_within(acc, cost, 0.5 * latency[-1], latency[-1])
    expected = [_acc_cost_auc(acc, cost, latency), cost[at_50]]
    assert optuna_trial.values[0] == pytest.approx(expected[0], abs=2e-3)
    assert optuna_trial.values[1] == pytest.approx(expected[1], rel=1e-9)
    assert metrics["val/sweep/mean_cost_at_50"] == pytest.approx(expected[1], rel=1e-9)
    assert metrics["val/sweep/acc_at_50"] == pytest.approx(acc[at_50], abs=1e-12)
    # with FLOPs as the cost the budgeted mean cost would be in FLOPs: a different number altogether
    flops_acc, flops_cost = _brute_sweep(val, flops)
    assert flops_cost[_best_within(flops_acc, flops_cost, 0.5 * flops[-1], flops[-1])] > 1e3 > expected[1]

    # the per-exit search's policies (written as policy files) measured by hand on val and test, in milliseconds
    written = sorted((folder / "policies").glob("budget_*.json"))
    assert written, "the trial wrote no policy file"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "policies")}
    assert artifacts == {f"policies/{p.name}" for p in written}
    for path in written:
        b = int(path.stem.removeprefix("budget_"))
        policy = json.loads(path.read_text())
        assert policy["cost_unit"] == "latency_ms" and policy["budget"] == b / 100
        np.testing.assert_allclose(policy["costs"], latency, rtol=1e-12)
        thresholds = [float(t) for t in policy["thresholds"]]
        val_acc, val_cost = _policy_numbers(val, latency, thresholds)
        test_acc, test_cost = _policy_numbers(test, latency, thresholds)
        assert val_cost <= b / 100 * latency[-1] * (1 + SLACK)
        assert metrics[f"val/acc_at_{b}"] == pytest.approx(val_acc, abs=1e-12)
        assert metrics[f"val/mean_cost_at_{b}"] == pytest.approx(val_cost, rel=1e-9)
        assert metrics[f"test/acc_at_{b}"] == pytest.approx(test_acc, abs=1e-12)
        assert metrics[f"test/mean_cost_at_{b}"] == pytest.approx(test_cost, rel=1e-9)
        assert policy["report"]["accuracy"] == pytest.approx(test_acc, abs=1e-12)
        assert policy["source"] == {"model_dir": str(folder.resolve()), "trial": 0, "run_id": run.info.run_id}


def test_flops_trial_measures_no_latency_unless_asked(tmp_path):
    """Without Ray: `cost: flops` keeps the FLOPs everywhere and measures nothing; `measure_latency` adds the
    latency to the logged costs while the efficiency metrics stay in FLOPs."""
    from eeopt.pipeline import run_trial

    base = {key: STUDY[key] for key in ("seed", "data", "model")}
    cfg = TrainConfig.model_validate({**base, "training": {"epochs": 1, "batch_size": 64, "threads": 1},
                                      "policy": {"trials": 20}})
    result, _ = run_trial(cfg, output_dir=tmp_path / "flops", plots=False)
    assert result.cost_unit == "flops" and result.latency is None and set(result.costs) == {"flops"}
    assert sorted(k for k in result.metrics if k.startswith("cost/")) == [cost_key("flops", e) for e in (1, 2, 3)]
    assert ExitOutputs.load(tmp_path / "flops" / "test.npz").latency_ms is None
    assert not (tmp_path / "flops" / "latency.json").exists()
    assert result.metrics["val/mean_cost"] > 1e3  # FLOPs

    measured = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={
        "measure_latency": True, "latency_repeats": 2})})
    both, _ = run_trial(measured, output_dir=tmp_path / "both", plots=False)
    assert set(both.costs) == set(COST_UNITS) and both.cost_unit == "flops"
    assert both.metrics["val/mean_cost"] == result.metrics["val/mean_cost"]  # same training, same FLOPs metrics
    saved = ExitOutputs.load(tmp_path / "both" / "val.npz")
    np.testing.assert_array_equal(saved.latency_ms, both.costs["latency_ms"])
    np.testing.assert_array_equal(saved.costs, result.costs["flops"])
    policy = json.loads((tmp_path / "both" / "policies" / "budget_50.json").read_text())
    assert policy["cost_unit"] == "flops"


def test_cost_keys_are_in_the_one_scheme():
    parsed = parse_key("cost/latency_ms/exit3")
    assert (parsed.scope, parsed.exit, parsed.metric.name, parsed.split) == ("cost", 3, "latency_ms", None)
    assert parsed.base == "cost/latency_ms/exit3" and not parsed.metric.higher_is_better
    assert parse_key(cost_key("flops", 1)).metric.group == "cost"
    for bad in ("cost/seconds/exit1", "val/cost/flops/exit1", "cost/flops/exit0", "cost/flops"):
        with pytest.raises(ValueError):
            parse_key(bad)
    from eeopt.study.tracking import section_of

    assert section_of("cost/flops/exit1")[1] == section_of("cost/latency_ms/exit2")[1]


@pytest.mark.parametrize("change, expected", [
    ({"policy": {"cost": "seconds"}}, "policy.cost"),
    ({"policy": {"cost": "latency", "latency_batch_size": 0}}, "policy.latency_batch_size"),
    ({"search_space": {"policy.cost": {"type": "categorical", "choices": ["flops", "latency"]}}},
     "search_space.policy.cost"),
])
def test_bad_cost_settings_fail_before_anything_is_written(tmp_path, capsys, change, expected):
    cfg = {**STUDY, **change}
    path = _write(tmp_path, cfg)
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "eeopt.db").exists() and not (tmp_path / "mlflow.db").exists()
