"""Efficiency of exit policies: exact global-threshold sweep, accuracy-cost frontier, acc_at_X, acc_cost_auc.

A "budget" is a share of the last exit's cost. Policies are chosen on a *fit* split (validation) and, when given,
reported on a *report* split (test): acc_at_50 is the report accuracy of the policy with the best fit accuracy among
those whose fit mean cost is at most 50 % of the last exit's cost. acc_cost_auc averages that report accuracy over
every budget from the first exit's cost to the last exit's cost.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from eeopt.policies import check_exit_arrays

#: Budget shares (percent of the last exit's cost) reported as acc_at_{share}.
BUDGET_SHARES = (25, 50, 75, 100)
#: Relative slack on budgets, so that a policy costing exactly the budget is not lost to rounding.
BUDGET_RTOL = 1e-9


class SweepCurve(NamedTuple):
    """Accuracy and mean cost of the shared-threshold policy at every threshold where it changes.

    Point i is the state for threshold `threshold[i]` (every sample with a score >= it at a non-final exit leaves
    there); it holds for all thresholds in (threshold[i+1], threshold[i]]. Point 0 is +inf (all samples at the last
    exit, unless some score is +inf); the last point is the smallest score that lets a sample out early.

    Attributes:
        threshold: [P] descending.
        accuracy: [P].
        mean_cost: [P].
    """

    threshold: np.ndarray
    accuracy: np.ndarray
    mean_cost: np.ndarray

    def at(self, thresholds) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy [M], mean_cost [M]) at arbitrary thresholds; see `sweep_at`."""
        return sweep_at(self, thresholds)


class Frontier(NamedTuple):
    """Upper accuracy-vs-cost staircase: cost [F] increasing, accuracy [F] strictly increasing."""

    cost: np.ndarray
    accuracy: np.ndarray


class Efficiency(NamedTuple):
    """Budgeted accuracy of policies chosen on the fit split, as measured on the report split.

    Attributes:
        acc_at: {25, 50, 75, 100} -> report accuracy of the fit-chosen policy at that budget share (NaN: none fits).
        cost_at: the same policies' report mean cost.
        acc_cost_auc: mean of that report accuracy over budgets in [costs[0], costs[-1]] (NaN if some budget there
            has no candidate).
        frontier: the fit split's frontier.
    """

    acc_at: dict[int, float]
    cost_at: dict[int, float]
    acc_cost_auc: float
    frontier: Frontier

    def to_dict(self) -> dict[str, float]:
        """{"acc_at_25", "acc_at_50", "acc_at_75", "acc_at_100", "acc_cost_auc"} -> float; NaN is kept."""
        out = {f"acc_at_{share}": float(self.acc_at[share]) for share in BUDGET_SHARES}
        out["acc_cost_auc"] = float(self.acc_cost_auc)
        return out


# --------------------------------------------------------------------------------------------- global sweep
def global_sweep(scores: np.ndarray, correct: np.ndarray, costs: np.ndarray) -> SweepCurve:
    """Exact accuracy and mean cost of one threshold shared by all non-final exits, at every threshold.

    A sample's exit changes only at its *record* scores (score[k, n] above every earlier score of n, k < K-1): as
    the threshold falls to a record value, the sample moves from its next later record exit (or K-1) to k. These
    at most N(K-1) events are sorted once and accumulated; one point is kept per distinct event value.

    Args:
        scores: [K, N] exit scores; NaN never exits early.
        correct: [K, N] bool.
        costs: [K] cumulative cost per exit.

    Raises:
        ValueError: shapes disagree or N = 0.
    """
    scores, correct, costs = check_exit_arrays(scores, correct, costs)
    k, n = scores.shape
    scores = scores.astype(np.float64, copy=False)  # thresholds are compared in float64
    base_correct = int(np.count_nonzero(correct[-1]))
    top = np.array([np.inf])
    if k == 1:
        return SweepCurve(top, np.array([base_correct / n]), np.array([costs[0]]))

    # Events per non-final exit, built from the last towards the first so the "next" exit is known.
    next_exit = np.full(n, k - 1, dtype=np.int8 if k <= 127 else np.int32)
    next_correct = correct[-1].copy()
    running_max = np.fmax.accumulate(scores[:-1], axis=0)  # ignores NaN
    values, codes = [], []
    code_dtype = np.int16 if 3 * k * (k - 1) < (1 << 15) else np.int32
    for e in range(k - 2, -1, -1):
        s = scores[e]
        if e == 0:
            record = ~np.isnan(s)
        else:
            record = ~(s <= running_max[e - 1])  # also True when every earlier score is NaN
            record &= ~np.isnan(s)
        where = np.flatnonzero(record)
        values.append(s[where])
        # code = (next * 3 + change in correctness + 1) * (K-1) + e indexes the tables below
        dacc = correct[e, where].astype(np.int8) - next_correct[where].astype(np.int8)
        codes.append(((next_exit[where].astype(np.int32) * 3 + dacc + 1) * (k - 1) + e).astype(code_dtype))
        next_exit[where] = e
        next_correct[where] = correct[e, where]
    values = np.concatenate(values)
    codes = np.concatenate(codes)
    del running_max, next_exit, next_correct
    first = SweepCurve(top, np.array([base_correct / n]), np.array([costs[-1]]))
    if values.size == 0:  # every non-final score is NaN
        return first

    order = np.argsort(values)[::-1]  # descending value; ties in any order (only group ends are kept)
    values = values[order]
    codes = codes[order]
    del order
    ends = np.flatnonzero(values[1:] != values[:-1])  # last event of each group of equal values
    ends = np.append(ends, values.size - 1)
    # Tables indexed by code: change in #correct and in summed cost when that event happens.
    nxt = np.arange(k)[:, None, None]
    dacc_table = np.broadcast_to(np.arange(3)[None, :, None] - 1, (k, 3, k - 1)).reshape(-1).astype(np.int8)
    dcost_table = (costs[None, None, : k - 1] - costs[nxt]).repeat(3, axis=1).reshape(-1)
    acc = (base_correct + np.cumsum(dacc_table[codes], dtype=np.int64)[ends]) / n
    mean_cost = costs[-1] + np.cumsum(dcost_table[codes])[ends] / n
    curve = SweepCurve(values[ends], acc, mean_cost)
    if curve.threshold[0] == np.inf:  # events at +inf belong to the +inf point
        return curve
    return SweepCurve(*(np.concatenate([a, b]) for a, b in zip(first, curve)))


def sweep_at(curve: SweepCurve, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy [M], mean_cost [M]) of the shared-threshold policy at thresholds [M]: the state after every event
    with a value >= t.

    Raises:
        ValueError: a threshold is NaN.
    """
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if np.isnan(t).any():
        raise ValueError("thresholds must not be NaN")
    ascending = curve.threshold[::-1]
    # number of points with threshold >= t, minus one: point 0 (+inf) always counts
    i = ascending.size - np.searchsorted(ascending, t, side="left") - 1
    i = np.maximum(i, 0)
    return np.asarray(curve.accuracy)[i], np.asarray(curve.mean_cost)[i]


# --------------------------------------------------------------------------------------------- frontier, budgets
def frontier(mean_cost, accuracy) -> Frontier:
    """Upper staircase of (cost, accuracy) points: the best accuracy at cost <= c, keeping only the points that
    strictly improve accuracy. NaN points are ignored."""
    idx = _frontier_indices(np.asarray(mean_cost, dtype=np.float64), np.asarray(accuracy, dtype=np.float64))
    return Frontier(np.asarray(mean_cost, dtype=np.float64)[idx], np.asarray(accuracy, dtype=np.float64)[idx])


def select_by_budget(fit_cost, fit_acc, budget: float) -> int:
    """Index of the best fit accuracy with fit cost <= budget (relative slack 1e-9); ties go to the lower cost,
    then the lower index; -1 if no candidate fits. NaN candidates are ignored."""
    cost = np.asarray(fit_cost, dtype=np.float64)
    acc = np.asarray(fit_acc, dtype=np.float64)
    ok = np.flatnonzero((cost <= budget * (1 + BUDGET_RTOL)) & ~np.isnan(acc))
    if ok.size == 0:
        return -1
    best = ok[acc[ok] == acc[ok].max()]
    return int(best[np.argmin(cost[best])])  # argmin returns the first (lowest index) minimum


def efficiency(
    costs,
    fit_cost,
    fit_acc,
    report_cost=None,
    report_acc=None,
) -> Efficiency:
    """acc_at_{25,50,75,100} and acc_cost_auc of candidate policies chosen on the fit split.

    Args:
        costs: [K] cumulative cost per exit; budgets are shares of costs[-1], the AUC spans [costs[0], costs[-1]].
        fit_cost, fit_acc: [P] mean cost and accuracy of each candidate on the fit split.
        report_cost, report_acc: [P] the same candidates on the report split (default: the fit numbers).

    The AUC is exact for the step function "report accuracy of the policy chosen at budget b": the choice changes
    only at the fit frontier's costs. It is NaN when the cheapest candidate costs more than costs[0].

    Raises:
        ValueError: shapes disagree, or only one of report_cost / report_acc is given.
    """
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    fit_cost = np.asarray(fit_cost, dtype=np.float64).reshape(-1)
    fit_acc = np.asarray(fit_acc, dtype=np.float64).reshape(-1)
    if costs.size < 1:
        raise ValueError("costs must have at least one exit")
    if fit_acc.shape != fit_cost.shape:
        raise ValueError(f"fit_cost and fit_acc differ in shape: {fit_cost.shape} vs {fit_acc.shape}")
    if (report_cost is None) != (report_acc is None):
        raise ValueError("give both report_cost and report_acc, or neither")
    if report_cost is None:
        report_cost, report_acc = fit_cost, fit_acc
    report_cost = np.asarray(report_cost, dtype=np.float64).reshape(-1)
    report_acc = np.asarray(report_acc, dtype=np.float64).reshape(-1)
    if report_cost.shape != fit_cost.shape or report_acc.shape != fit_cost.shape:
        raise ValueError(
            f"report arrays must match the fit arrays' shape {fit_cost.shape}, "
            f"got {report_cost.shape} and {report_acc.shape}"
        )

    acc_at, cost_at = {}, {}
    for share in BUDGET_SHARES:
        i = select_by_budget(fit_cost, fit_acc, share / 100.0 * costs[-1])
        acc_at[share] = float(report_acc[i]) if i >= 0 else math.nan
        cost_at[share] = float(report_cost[i]) if i >= 0 else math.nan

    idx = _frontier_indices(fit_cost, fit_acc)
    auc = _auc(costs[0], costs[-1], fit_cost[idx], report_acc[idx])
    return Efficiency(acc_at, cost_at, auc, Frontier(fit_cost[idx], fit_acc[idx]))


def _frontier_indices(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the frontier points, cost ascending, each the first (by cost, -accuracy, index) to reach its
    accuracy, so that `select_by_budget` picks exactly these candidates."""
    if cost.shape != acc.shape or cost.ndim != 1:
        raise ValueError(f"cost and accuracy must be 1-D of one shape, got {cost.shape} and {acc.shape}")
    keep = np.flatnonzero(~(np.isnan(cost) | np.isnan(acc)))
    order = keep[np.lexsort((keep, -acc[keep], cost[keep]))]
    a = acc[order]
    if a.size == 0:
        return order
    prev_best = np.maximum.accumulate(np.concatenate([[-np.inf], a[:-1]]))
    return order[a > prev_best]


def _auc(lo: float, hi: float, front_cost: np.ndarray, front_report_acc: np.ndarray) -> float:
    """Mean over budgets b in [lo, hi] of the report accuracy of the frontier point chosen at b (the last one with
    cost <= b): exact for the step function."""
    if front_cost.size == 0 or front_cost[0] > lo * (1 + BUDGET_RTOL):
        return math.nan
    if hi <= lo:
        chosen = np.flatnonzero(front_cost <= lo * (1 + BUDGET_RTOL))[-1]
        return float(front_report_acc[chosen])
    start = np.clip(front_cost, lo, hi)
    start[0] = lo  # available from lo (within the slack)
    end = np.append(start[1:], hi)
    width = end - start
    used = width > 0
    return float(np.sum(front_report_acc[used] * width[used]) / (hi - lo))
