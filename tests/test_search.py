import numpy as np
import pytest

from eeopt.core.metrics.efficiency import efficiency, global_sweep
from eeopt.core.policies import evaluate_thresholds
from eeopt.core.scores import compute_score
from eeopt.core.search import quantile_thresholds, search_thresholds
from eeopt.core.synthetic import synthetic_exit_outputs


def test_quantile_thresholds_map_positions_by_hand():
    sorted_scores = np.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])  # N=3: position floor(q * 5), capped at 4
    q = np.array([[0.0, 0.99], [0.25, 0.45], [0.79, 0.81]])
    # row 0: positions 0 (-inf) and 4 (+inf); row 1: 1 (1st smallest) and 2 (2nd); row 2: 3 (3rd) and 4 (+inf)
    expected = np.array([[-np.inf, np.inf], [0.1, 2.0], [0.3, np.inf]])
    np.testing.assert_array_equal(quantile_thresholds(sorted_scores, q), expected)


def _data(seed_val=1, seed_test=2, k=4):
    val = synthetic_exit_outputs(k, 1500, 10, seed=seed_val)
    test = synthetic_exit_outputs(k, 1000, 10, seed=seed_test)
    return (compute_score("msp", val), val.correct, compute_score("msp", test), test.correct, val.costs)


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_search_front_is_the_val_pareto_front_and_test_is_only_reported(sampler):
    fs, fc, rs, rc, costs = _data()
    res = search_thresholds(fs, fc, costs, report_scores=rs, report_correct=rc, trials=120, sampler=sampler)
    # val numbers recomputed independently; the front is strictly increasing in both cost and accuracy
    again = evaluate_thresholds(fs, fc, costs, res.thresholds)
    np.testing.assert_allclose(again.accuracy, res.fit.accuracy)
    np.testing.assert_allclose(again.mean_cost, res.fit.mean_cost)
    assert np.all(np.diff(res.fit.mean_cost) > 0) and np.all(np.diff(res.fit.accuracy) > 0)
    # test numbers are the same thresholds applied to test
    rep = evaluate_thresholds(rs, rc, costs, res.thresholds)
    np.testing.assert_allclose(rep.accuracy, res.report.accuracy)
    # the extremes are candidates: everything at exit 1 / everything at the last exit are reachable costs
    assert res.fit.mean_cost[0] == pytest.approx(costs[0])
    # never worse on val than the global sweep at any budget
    sweep = global_sweep(fs, fc, costs)
    ours, theirs = efficiency(costs, res.fit.mean_cost, res.fit.accuracy), efficiency(costs, sweep.mean_cost, sweep.accuracy)
    for share in (25, 50, 75, 100):
        if not np.isnan(theirs.acc_at[share]):
            assert ours.acc_at[share] >= theirs.acc_at[share] - 1e-12
    assert ours.acc_cost_auc >= theirs.acc_cost_auc - 1e-12


def test_thresholds_do_not_depend_on_the_test_split():
    fs, fc, rs, rc, costs = _data()
    a = search_thresholds(fs, fc, costs, report_scores=rs, report_correct=rc, trials=60, seed=3)
    b = search_thresholds(fs, fc, costs, report_scores=rs[:, ::-1] * 0.5, report_correct=~rc, trials=60, seed=3)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)


def test_search_finds_per_exit_thresholds_the_sweep_cannot():
    """Exit 1 is confident but wrong more often than its confidence says; a shared threshold cannot tell."""
    rng = np.random.default_rng(0)
    n = 4000
    scores = np.vstack([rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.5, n), np.ones(n)])
    correct = np.vstack([rng.random(n) < 0.6, rng.random(n) < scores[1] + 0.5, np.ones(n, bool)])
    costs = np.array([1.0, 2.0, 3.0])
    res = search_thresholds(scores, correct, costs, trials=300, seed=0)
    sweep = global_sweep(scores, correct, costs)
    ours = efficiency(costs, res.fit.mean_cost, res.fit.accuracy)
    theirs = efficiency(costs, sweep.mean_cost, sweep.accuracy)
    assert ours.acc_cost_auc > theirs.acc_cost_auc + 0.01


def test_single_exit_has_nothing_to_search():
    out = synthetic_exit_outputs(1, 100, 3, seed=0)
    res = search_thresholds(compute_score("msp", out), out.correct, out.costs, trials=10)
    assert res.thresholds.shape == (1, 0) and res.fit.accuracy[0] == pytest.approx(out.accuracy[0])
