"""Global sweep, frontier, budgets and acc_cost_auc against brute force and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eeopt.core.policies import evaluate_thresholds
from eeopt.core.metrics.efficiency import (
    Efficiency,
    Frontier,
    SweepCurve,
    efficiency,
    frontier,
    global_sweep,
    select_by_budget,
    sweep_at,
)


# ------------------------------------------------------------------------------------------------ brute force
def brute_shared_threshold(scores, correct, costs, t):
    """(accuracy, mean cost) of one threshold shared by the non-final exits, sample by sample."""
    k, n = scores.shape
    n_correct, total = 0, 0.0
    for j in range(n):
        e = next((i for i in range(k - 1) if scores[i, j] >= t), k - 1)
        n_correct += bool(correct[e, j])
        total += costs[e]
    return n_correct / n, total / n


def brute_select(cost, acc, budget):
    best = -1
    for i in range(len(cost)):
        if math.isnan(acc[i]) or not cost[i] <= budget * (1 + 1e-9):
            continue
        if best < 0 or acc[i] > acc[best] or (acc[i] == acc[best] and cost[i] < cost[best]):
            best = i
    return best


def sweep_case(seed: int, k: int, n: int, decimals: int):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((k, n)), decimals)  # heavy ties with 1 decimal
    scores[:, 0] = np.linspace(0.95, 0.05, k)  # a sample whose score decreases along the exits
    scores[:, 1] = np.linspace(0.05, 0.95, k)  # one whose score increases: a record at every exit
    correct = rng.random((k, n)) < 0.6
    costs = np.cumsum(rng.random(k) + 0.1)
    return scores, correct, costs


# ------------------------------------------------------------------------------------------------ global sweep
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("seed,decimals", [(0, 1), (1, 1), (2, 2), (3, 6)])
def test_global_sweep_matches_brute_force_at_every_score(k, seed, decimals):
    scores, correct, costs = sweep_case(seed, k, 60, decimals)
    curve = global_sweep(scores, correct, costs)
    assert isinstance(curve, SweepCurve)
    assert curve.threshold[0] == np.inf
    assert np.all(np.diff(curve.threshold) < 0)
    if k > 1:
        assert curve.threshold[-1] == scores[0].min()  # every sample's first score is a record
    for t, acc, cost in zip(curve.threshold, curve.accuracy, curve.mean_cost):
        exp_acc, exp_cost = brute_shared_threshold(scores, correct, costs, t)
        assert acc == pytest.approx(exp_acc, abs=1e-12)
        assert cost == pytest.approx(exp_cost, rel=1e-12)
    # every distinct score (and values between and beyond them) through sweep_at
    distinct = np.unique(scores)
    probes = np.concatenate([[np.inf, -np.inf, 2.0, -1.0], distinct, distinct + 1e-9, distinct - 1e-9])
    accs, costs_at = sweep_at(curve, probes)
    for t, acc, cost in zip(probes, accs, costs_at):
        exp_acc, exp_cost = brute_shared_threshold(scores, correct, costs, t)
        assert acc == pytest.approx(exp_acc, abs=1e-12)
        assert cost == pytest.approx(exp_cost, rel=1e-12)
    np.testing.assert_array_equal(curve.at(probes)[0], accs)


def test_global_sweep_random_thresholds_and_nan_scores():
    rng = np.random.default_rng(11)
    scores, correct, costs = sweep_case(11, 4, 300, 3)
    scores[rng.random(scores.shape) < 0.1] = np.nan  # NaN never lets a sample out
    curve = global_sweep(scores, correct, costs)
    probes = rng.uniform(-0.1, 1.1, size=50)
    accs, mean_costs = sweep_at(curve, probes)
    for t, acc, cost in zip(probes, accs, mean_costs):
        exp_acc, exp_cost = brute_shared_threshold(scores, correct, costs, t)
        assert acc == pytest.approx(exp_acc, abs=1e-12)
        assert cost == pytest.approx(exp_cost, rel=1e-12)


def test_global_sweep_points_are_distinct_record_values():
    # two samples, 3 exits: sample 0 scores (0.2, 0.5, x): records 0.2 then 0.5; sample 1 (0.6, 0.4, x): record 0.6
    scores = np.array([[0.2, 0.6], [0.5, 0.4], [0.0, 0.0]])
    correct = np.array([[True, False], [False, True], [True, True]])
    curve = global_sweep(scores, correct, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(curve.threshold, [np.inf, 0.6, 0.5, 0.2])
    # t > 0.6: both at exit 2 (correct); t = 0.6: sample 1 at exit 0 (wrong); 0.5: sample 0 at exit 1 (wrong);
    # 0.2: sample 0 at exit 0 (correct)
    np.testing.assert_allclose(curve.accuracy, [1.0, 0.5, 0.0, 0.5])
    np.testing.assert_allclose(curve.mean_cost, [3.0, 2.0, 1.5, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        sweep_at(curve, [np.nan])


# ------------------------------------------------------------------------------------------------ frontier & budgets
def test_frontier_is_the_upper_staircase():
    rng = np.random.default_rng(5)
    cost = np.round(rng.random(200), 2)
    acc = np.round(rng.random(200), 2)
    front = frontier(cost, acc)
    assert isinstance(front, Frontier)
    assert np.all(np.diff(front.cost) > 0) and np.all(np.diff(front.accuracy) > 0)
    for c in np.linspace(-0.1, 1.1, 500):
        under = acc[cost <= c]
        on_front = front.accuracy[front.cost <= c]
        assert (under.max() if under.size else -1) == (on_front.max() if on_front.size else -1)
    # every frontier point is an input point
    assert set(zip(front.cost, front.accuracy)) <= set(zip(cost, acc))
    assert frontier([np.nan, 1.0], [0.5, np.nan]).cost.size == 0


def test_select_by_budget_matches_brute_force():
    rng = np.random.default_rng(6)
    cost = np.round(rng.random(80), 1)
    acc = np.round(rng.random(80), 1)
    acc[3] = np.nan
    for budget in np.linspace(-0.1, 1.1, 121):
        assert select_by_budget(cost, acc, budget) == brute_select(cost, acc, budget)
    assert select_by_budget([1.0 + 5e-10], [0.5], 1.0, slack=1e-9) == 0  # within the slack
    assert select_by_budget([1.0 + 1e-8], [0.5], 1.0, slack=1e-9) == -1
    assert select_by_budget([1.0 + 5e-10], [0.5], 1.0) == -1  # no slack by default


def test_efficiency_hand_worked_three_points():
    # Exit costs 1, 2, 4. Candidates (cost, acc): A (1, 0.5), B (2, 0.7), C (3, 0.8), D (2.5, 0.6) dominated by B.
    # Budgets: 25 % of 4 = 1 -> A; 50 % = 2 -> B; 75 % = 3 -> C; 100 % = 4 -> C.
    # AUC over [1, 4]: A on [1, 2), B on [2, 3), C on [3, 4] -> (0.5 + 0.7 + 0.8) / 3 = 2 / 3.
    eff = efficiency([1.0, 2.0, 4.0], [1.0, 2.0, 3.0, 2.5], [0.5, 0.7, 0.8, 0.6])
    assert isinstance(eff, Efficiency)
    assert eff.acc_at == {25: 0.5, 50: 0.7, 75: 0.8, 100: 0.8}
    assert eff.cost_at == {25: 1.0, 50: 2.0, 75: 3.0, 100: 3.0}
    assert eff.acc_cost_auc == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_array_equal(eff.frontier.cost, [1.0, 2.0, 3.0])
    assert eff.to_dict() == pytest.approx(
        {"acc_at_25": 0.5, "acc_at_50": 0.7, "acc_at_75": 0.8, "acc_at_100": 0.8, "acc_cost_auc": 2 / 3,
         "mean_cost_at_25": 1.0, "mean_cost_at_50": 2.0, "mean_cost_at_75": 3.0, "mean_cost_at_100": 3.0,
         "mean_cost": 3.0}
    )
    assert set(eff.to_dict("sweep")) == {f"sweep/{k}" for k in eff.to_dict()}


def test_efficiency_transfer_uses_report_accuracy_of_fit_choice():
    # Same fit numbers as the hand-worked case; on the report split A, B, C, D score 0.4, 0.9, 0.6, 0.99.
    # The choice is made on fit, so D (best on report, dominated on fit) is never used.
    # AUC = (0.4 * 1 + 0.9 * 1 + 0.6 * 1) / 3.
    eff = efficiency(
        [1.0, 2.0, 4.0],
        [1.0, 2.0, 3.0, 2.5],
        [0.5, 0.7, 0.8, 0.6],
        report_cost=[1.1, 2.2, 3.3, 2.4],
        report_acc=[0.4, 0.9, 0.6, 0.99],
    )
    assert eff.acc_at == {25: 0.4, 50: 0.9, 75: 0.6, 100: 0.6}
    assert eff.cost_at == {25: 1.1, 50: 2.2, 75: 3.3, 100: 3.3}
    assert eff.acc_cost_auc == pytest.approx((0.4 + 0.9 + 0.6) / 3, abs=1e-12)
    np.testing.assert_allclose(eff.frontier.accuracy, [0.5, 0.7, 0.8])  # the fit frontier


def test_efficiency_nan_when_budget_below_cheapest():
    eff = efficiency([1.0, 2.0, 4.0], [1.5, 3.0], [0.6, 0.9])
    assert math.isnan(eff.acc_at[25]) and math.isnan(eff.cost_at[25])  # budget 1 < cheapest 1.5
    assert eff.acc_at[50] == 0.6 and eff.acc_at[100] == 0.9
    assert math.isnan(eff.acc_cost_auc)  # budgets in [1, 1.5) have no candidate
    assert math.isnan(eff.to_dict()["acc_at_25"])
    # within the relative slack the cheapest counts as available from costs[0]
    eff = efficiency([1.0, 2.0], [1.0 + 5e-10, 2.0], [0.6, 0.9])
    assert eff.acc_cost_auc == pytest.approx(0.6, abs=1e-6)


def test_efficiency_degenerate_cost_range_and_ties():
    # costs[0] == costs[-1]: the AUC is the accuracy at that one budget (2.0 -> the 0.8 candidate)
    eff = efficiency([2.0, 2.0], [2.0, 2.0, 1.0], [0.7, 0.8, 0.6])
    assert eff.acc_cost_auc == 0.8 and eff.acc_at[100] == 0.8 and eff.acc_at[50] == 0.6
    assert math.isnan(eff.acc_at[25])  # budget 0.5 < cheapest 1.0
    # candidates 0 and 1 tie on fit (same cost and accuracy): both acc_at and the AUC take the lower index
    eff = efficiency([1.0, 2.0], [1.0, 1.0], [0.5, 0.5], report_cost=[1.0, 1.0], report_acc=[0.3, 0.9])
    assert eff.acc_at[100] == 0.3 and eff.acc_cost_auc == pytest.approx(0.3)
    with pytest.raises(ValueError, match="both"):
        efficiency([1.0, 2.0], [1.0], [0.5], report_acc=[0.5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_acc_cost_auc_matches_dense_budget_grid(seed):
    rng = np.random.default_rng(seed)
    costs = np.array([1.0, 2.5, 4.0])
    fit_cost = np.concatenate([[1.0], rng.uniform(1.0, 4.5, size=40)])  # a candidate at costs[0]: AUC defined
    fit_acc = rng.uniform(0.3, 0.9, size=41)
    report_acc = np.clip(fit_acc + rng.normal(scale=0.1, size=41), 0, 1)
    report_cost = fit_cost * 1.05
    grid = 20_001
    budgets = np.linspace(costs[0], costs[-1], grid)
    values = np.array([report_acc[brute_select(fit_cost, fit_acc, b)] for b in budgets])
    dense = np.trapezoid(values, budgets) / (costs[-1] - costs[0])
    eff = efficiency(costs, fit_cost, fit_acc, report_cost, report_acc)
    front_points = eff.frontier.cost.size
    # each jump of the step function costs at most one grid cell of error
    assert eff.acc_cost_auc == pytest.approx(dense, abs=front_points * 1.0 / (grid - 1) + 1e-12)
    for share in (25, 50, 75, 100):
        i = brute_select(fit_cost, fit_acc, share / 100 * costs[-1])
        assert eff.acc_at[share] == report_acc[i] and eff.cost_at[share] == report_cost[i]
    # in-sample: the AUC is the area under the fit frontier
    in_sample = efficiency(costs, fit_cost, fit_acc)
    values = np.array([fit_acc[brute_select(fit_cost, fit_acc, b)] for b in budgets])
    assert in_sample.acc_cost_auc == pytest.approx(
        np.trapezoid(values, budgets) / 3.0, abs=front_points / (grid - 1) + 1e-12
    )


def test_sweep_feeds_efficiency(outputs_pair):
    """End to end: sweep on val, thresholds reported on test through sweep_at."""
    val, test = outputs_pair
    fit = global_sweep(val.confidence, val.correct, val.costs)
    report = global_sweep(test.confidence, test.correct, test.costs)
    report_acc, report_cost = sweep_at(report, fit.threshold)
    eff = efficiency(val.costs, fit.mean_cost, fit.accuracy, report_cost, report_acc)
    chosen = select_by_budget(fit.mean_cost, fit.accuracy, val.costs[-1])
    assert eff.acc_at[100] == pytest.approx(report_acc[chosen])
    assert 0.0 < eff.acc_cost_auc <= 1.0
    assert fit.mean_cost[0] == pytest.approx(val.costs[-1]) and fit.mean_cost[-1] == pytest.approx(val.costs[0])


@pytest.mark.parametrize("seed", range(4))
def test_acc_cost_auc_is_defined_for_every_valid_cost_vector(seed):
    """A free first exit (costs[0] = 0) and a cost range of 1e5..1e7 once made the AUC NaN: the sweep's cheapest
    point drifted a few ulps above costs[0]. Every sweep holds 'everything leaves at exit 1', so the AUC exists,
    and it equals the AUC of the brute-force curve from `evaluate_thresholds` at every distinct score."""
    rng = np.random.default_rng(seed)
    k, n = 4, 300
    for trial in range(40):
        scores = rng.random((k, n))
        correct = rng.random((k, n)) < 0.7
        if trial % 2:
            costs = np.sort(np.r_[1.0, rng.random(k - 1) * 10 ** rng.uniform(5, 7)])
        else:
            costs = np.r_[0.0, np.sort(rng.random(k - 1))]
        curve = global_sweep(scores, correct, costs)
        auc = efficiency(costs, curve.mean_cost, curve.accuracy).acc_cost_auc
        assert not math.isnan(auc)
        thresholds = np.r_[np.inf, np.unique(scores[:-1])[::-1]]
        brute = evaluate_thresholds(scores, correct, costs, np.repeat(thresholds[:, None], k - 1, axis=1))
        expected = efficiency(costs, brute.mean_cost, brute.accuracy).acc_cost_auc
        assert auc == pytest.approx(expected, abs=1e-12)
        assert curve.mean_cost.min() >= costs[0] and curve.mean_cost.max() <= costs[-1]
