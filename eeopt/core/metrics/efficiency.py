"""Efficiency of exit policies, in one place: the exact global-threshold sweep, the accuracy-cost frontier, the budget
shares, and the budget metrics (acc_at_{b}, acc_cost_auc, mean_cost_at_{b}, mean_cost).

A "budget" is a share of the last exit's cost (`eeopt.names.BUDGETS`). Policies are chosen on a *fit* split
(validation) and, when given, reported on a *report* split (test): acc_at_50 is the report accuracy of the policy
with the best fit accuracy among those whose fit mean cost is at most 50 % of the last exit's cost. acc_cost_auc
averages that report accuracy over every budget from the first exit's cost to the last exit's cost. Budgets get a
slack of `BUDGET_RTOL` times the last exit's cost, so that a policy costing exactly a budget is not lost to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from eeopt.core.metrics.checks import check_exit_arrays
from eeopt.names import BUDGETS, efficiency_key

#: Slack on budgets, as a share of the last exit's cost.
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


class BudgetChoice(NamedTuple):
    """The candidate chosen on the fit split for one budget share, and its numbers on both splits (NaN: none fits;
    `index` is then -1)."""

    budget: int
    index: int
    fit_accuracy: float
    fit_mean_cost: float
    report_accuracy: float
    report_mean_cost: float


class Efficiency(NamedTuple):
    """Budgeted accuracy of policies chosen on the fit split, as measured on the report split.

    Attributes:
        choices: one `BudgetChoice` per budget share in `BUDGETS`.
        acc_cost_auc: mean report accuracy over budgets in [costs[0], costs[-1]] (NaN if some budget there has no
            candidate, which cannot happen when the candidates include "everything leaves at exit 1").
        frontier: the fit split's frontier.
    """

    choices: tuple[BudgetChoice, ...]
    acc_cost_auc: float
    frontier: Frontier

    @property
    def acc_at(self) -> dict[int, float]:
        """{budget share: report accuracy of its choice}."""
        return {c.budget: c.report_accuracy for c in self.choices}

    @property
    def cost_at(self) -> dict[int, float]:
        """{budget share: report mean cost of its choice}."""
        return {c.budget: c.report_mean_cost for c in self.choices}

    def to_dict(self, method: str = "search") -> dict[str, float]:
        """The efficiency metrics under their names for `method` (`acc_at_50` or `sweep/acc_at_50`...); NaN kept."""
        out = {}
        for c in self.choices:
            out[efficiency_key(f"acc_at_{c.budget}", method)] = float(c.report_accuracy)
        out[efficiency_key("acc_cost_auc", method)] = float(self.acc_cost_auc)
        for c in self.choices:
            out[efficiency_key(f"mean_cost_at_{c.budget}", method)] = float(c.report_mean_cost)
        out[efficiency_key("mean_cost", method)] = float(self.choices[-1].report_mean_cost)
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
    if not costs[-1] > 0:
        raise ValueError(f"costs[-1] must be > 0 (budgets are shares of it), got {costs.tolist()}")
    k, n = scores.shape
    base_correct = int(np.count_nonzero(correct[-1]))
    first = SweepCurve(np.array([np.inf]), np.array([base_correct / n]), np.array([costs[-1]]))
    if k == 1:
        return first
    values, codes = _record_events(scores.astype(np.float64, copy=False), correct)
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
    # A running float sum drifts by a few ulps of costs[-1]; clipping keeps every point inside the exits' range, so
    # the cheapest point is never below costs[0] (the AUC's budget slack absorbs a drift above it).
    mean_cost = np.clip(costs[-1] + np.cumsum(dcost_table[codes])[ends] / n, costs[0], costs[-1])
    curve = SweepCurve(values[ends], acc, mean_cost)
    if curve.threshold[0] == np.inf:  # events at +inf belong to the +inf point
        return curve
    return SweepCurve(*(np.concatenate([a, b]) for a, b in zip(first, curve)))


def record_samples(scores: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(e, samples [M_e]) for e = K-2 .. 0: the samples whose score at exit e is a record (above every earlier
    score of theirs, NaN ignored), i.e. those that move to exit e when a shared threshold falls to that score. From
    the last exit towards the first: the order in which a sample visits its exits as the threshold falls."""
    running_max = np.fmax.accumulate(scores[:-1], axis=0)  # ignores NaN
    for e in range(scores.shape[0] - 2, -1, -1):
        s = scores[e]
        record = ~np.isnan(s)
        if e > 0:
            record &= ~(s <= running_max[e - 1])  # also True when every earlier score is NaN
        yield e, np.flatnonzero(record)


def _record_events(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sweep's events: each record score of each sample at a non-final exit, with a code for what happens.

    A record score[e, n] is above every earlier score of sample n; when the threshold falls to it, the sample moves
    from its next later record exit (or K-1) to e. code = (next * 3 + change in correctness + 1) * (K-1) + e indexes
    the sweep's tables. Events are built from the last exit towards the first so the "next" exit is known.
    """
    k, n = scores.shape
    next_exit = np.full(n, k - 1, dtype=np.int8 if k <= 127 else np.int32)
    next_correct = correct[-1].copy()
    values, codes = [], []
    code_dtype = np.int16 if 3 * k * (k - 1) < (1 << 15) else np.int32
    for e, where in record_samples(scores):
        values.append(scores[e, where])
        dacc = correct[e, where].astype(np.int8) - next_correct[where].astype(np.int8)
        codes.append(((next_exit[where].astype(np.int32) * 3 + dacc + 1) * (k - 1) + e).astype(code_dtype))
        next_exit[where] = e
        next_correct[where] = correct[e, where]
    return np.concatenate(values), np.concatenate(codes)


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
def frontier_indices(cost, accuracy) -> np.ndarray:
    """Indices of the frontier points, cost ascending: each is the first (by cost, -accuracy, index) to reach an
    accuracy no cheaper point reaches, so that `select_by_budget` picks exactly these candidates. NaN points are
    ignored."""
    cost = np.asarray(cost, dtype=np.float64)
    acc = np.asarray(accuracy, dtype=np.float64)
    if cost.shape != acc.shape or cost.ndim != 1:
        raise ValueError(f"cost and accuracy must be 1-D of one shape, got {cost.shape} and {acc.shape}")
    keep = np.flatnonzero(~(np.isnan(cost) | np.isnan(acc)))
    order = keep[np.lexsort((keep, -acc[keep], cost[keep]))]
    a = acc[order]
    if a.size == 0:
        return order
    prev_best = np.maximum.accumulate(np.concatenate([[-np.inf], a[:-1]]))
    return order[a > prev_best]


def frontier(mean_cost, accuracy) -> Frontier:
    """Upper staircase of (cost, accuracy) points: the best accuracy at cost <= c, keeping only the points that
    strictly improve accuracy. NaN points are ignored."""
    idx = frontier_indices(mean_cost, accuracy)
    return Frontier(np.asarray(mean_cost, dtype=np.float64)[idx], np.asarray(accuracy, dtype=np.float64)[idx])


def thin_frontier(front: Frontier, max_points: int = 500) -> Frontier:
    """At most `max_points` points of `front`: the point chosen at each of `max_points` evenly spaced costs from the
    cheapest to the dearest point (so the first and the last are kept). Every point kept is a frontier point."""
    if front.cost.size <= max_points:
        return front
    grid = np.linspace(front.cost[0], front.cost[-1], max_points)
    idx = np.unique(np.searchsorted(front.cost, grid, side="right") - 1)
    return Frontier(front.cost[idx], front.accuracy[idx])


def select_by_budget(fit_cost, fit_acc, budget: float, slack: float = 0.0) -> int:
    """Index of the best fit accuracy with fit cost <= budget + slack; ties go to the lower cost, then the lower
    index; -1 if no candidate fits. NaN candidates are ignored."""
    cost = np.asarray(fit_cost, dtype=np.float64)
    acc = np.asarray(fit_acc, dtype=np.float64)
    ok = np.flatnonzero((cost <= budget + slack) & ~np.isnan(acc))
    if ok.size == 0:
        return -1
    best = ok[acc[ok] == acc[ok].max()]
    return int(best[np.argmin(cost[best])])  # argmin returns the first (lowest index) minimum


def efficiency(costs, fit_cost, fit_acc, report_cost=None, report_acc=None) -> Efficiency:
    """Budget choices and acc_cost_auc of candidate policies chosen on the fit split.

    Args:
        costs: [K] cumulative cost per exit; budgets are shares of costs[-1] (> 0), the AUC spans
            [costs[0], costs[-1]].
        fit_cost, fit_acc: [P] mean cost and accuracy of each candidate on the fit split.
        report_cost, report_acc: [P] the same candidates on the report split (default: the fit numbers).

    The AUC is exact for the step function "report accuracy of the policy chosen at budget b": the choice changes
    only at the fit frontier's costs.

    Raises:
        ValueError: shapes disagree, costs[-1] <= 0, or only one of report_cost / report_acc is given.
    """
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    fit_cost, fit_acc = _vector(fit_cost), _vector(fit_acc)
    if costs.size < 1 or not costs[-1] > 0:
        raise ValueError(f"costs must have at least one exit and costs[-1] > 0, got {costs.tolist()}")
    if fit_acc.shape != fit_cost.shape:
        raise ValueError(f"fit_cost and fit_acc differ in shape: {fit_cost.shape} vs {fit_acc.shape}")
    if (report_cost is None) != (report_acc is None):
        raise ValueError("give both report_cost and report_acc, or neither")
    if report_cost is None:
        report_cost, report_acc = fit_cost, fit_acc
    report_cost, report_acc = _vector(report_cost), _vector(report_acc)
    if report_cost.shape != fit_cost.shape or report_acc.shape != fit_cost.shape:
        raise ValueError(
            f"report arrays must match the fit arrays' shape {fit_cost.shape}, "
            f"got {report_cost.shape} and {report_acc.shape}"
        )
    slack = BUDGET_RTOL * costs[-1]
    choices = []
    for share in BUDGETS:
        i = select_by_budget(fit_cost, fit_acc, share / 100.0 * costs[-1], slack)
        pick = (lambda a: float(a[i])) if i >= 0 else (lambda a: math.nan)
        choices.append(BudgetChoice(share, i, pick(fit_acc), pick(fit_cost), pick(report_acc), pick(report_cost)))
    idx = frontier_indices(fit_cost, fit_acc)
    auc = _auc(costs[0], costs[-1], slack, fit_cost[idx], report_acc[idx])
    return Efficiency(tuple(choices), auc, Frontier(fit_cost[idx], fit_acc[idx]))


def sweep_efficiency(costs, fit: SweepCurve, report: SweepCurve | None = None) -> Efficiency:
    """The global sweep's efficiency: thresholds chosen on the `fit` curve, reported on the `report` curve (the
    same split when None)."""
    if report is None:
        return efficiency(costs, fit.mean_cost, fit.accuracy)
    report_acc, report_cost = sweep_at(report, fit.threshold)
    return efficiency(costs, fit.mean_cost, fit.accuracy, report_cost, report_acc)


def _vector(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _auc(lo: float, hi: float, slack: float, front_cost: np.ndarray, front_report_acc: np.ndarray) -> float:
    """Mean over budgets b in [lo, hi] of the report accuracy of the frontier point chosen at b (the last one with
    cost <= b + slack): exact for the step function."""
    if front_cost.size == 0 or front_cost[0] > lo + slack:
        return math.nan
    if hi <= lo:
        chosen = np.flatnonzero(front_cost <= lo + slack)[-1]
        return float(front_report_acc[chosen])
    start = np.clip(front_cost, lo, hi)
    start[0] = lo  # available from lo (within the slack)
    end = np.append(start[1:], hi)
    width = end - start
    used = width > 0
    return float(np.sum(front_report_acc[used] * width[used]) / (hi - lo))
