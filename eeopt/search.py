"""Per-exit threshold search: Optuna picks t_1..t_{K-1} on validation; the Pareto front is then reported on test.

Thresholds are searched in score-quantile space: for exit k the parameter ``q_exit{k}`` in [0, 1] picks a position
in the sorted validation scores of that exit (0 = every sample passes, 1 = none does), so every exit gets a useful
range whatever its score's scale. Trials are asked in batches and evaluated with the vectorised policy evaluator, so
a few hundred trials cost about a second. Nothing is fitted on the report (test) split.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from eeopt.calibration import Calibrator

from eeopt.metrics.efficiency import (
    Efficiency,
    efficiency,
    frontier,
    global_sweep,
    select_by_budget,
    sweep_at,
)
from eeopt.policies import PolicyEvaluation, ThresholdPolicy, evaluate_thresholds


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The val Pareto front of the searched policies (and of the global sweep's), with val and test numbers.

    Attributes:
        thresholds: [P, K-1] threshold vectors, sorted by val mean cost.
        fit: val accuracy / mean cost of each candidate.
        report: test accuracy / mean cost of the same candidates (None without a report split).
        efficiency: acc_at_25..100 and acc_cost_auc, policies chosen on val, accuracy reported on test.
        trials: number of Optuna trials evaluated.
    """

    score: str
    thresholds: np.ndarray
    fit: PolicyEvaluation
    report: PolicyEvaluation | None
    efficiency: Efficiency
    trials: int
    costs: np.ndarray


def quantile_thresholds(sorted_scores: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Map quantile parameters q [M, K-1] in [0, 1] to thresholds, per exit, from sorted val scores [K-1, N].

    Position i = min(floor(q * (N + 2)), N + 1), so every position has the same share of [0, 1]: i = 0 gives -inf
    (every sample passes), i = N + 1 gives +inf (none passes), otherwise the i-th smallest score (samples with that
    score or higher pass).
    """
    k1, n = sorted_scores.shape
    idx = np.clip(np.floor(np.asarray(q) * (n + 2)).astype(np.int64), 0, n + 1)
    padded = np.concatenate(
        [np.full((k1, 1), -np.inf), sorted_scores, np.full((k1, 1), np.inf)], axis=1
    )  # [K-1, N+2]
    return padded[np.arange(k1)[None, :], idx]


def search_thresholds(
    fit_scores: np.ndarray,
    fit_correct: np.ndarray,
    costs: np.ndarray,
    *,
    report_scores: np.ndarray | None = None,
    report_correct: np.ndarray | None = None,
    trials: int = 300,
    sampler: str = "nsga2",
    seed: int = 0,
    batch_size: int = 50,
    score: str = "msp",
) -> SearchResult:
    """Multi-objective search (max val accuracy, min val mean cost) over per-exit thresholds.

    Args:
        fit_scores, fit_correct: validation scores and correctness [K, N].
        costs: cumulative cost per exit [K].
        report_scores, report_correct: the same for the test split [K, N'], only evaluated, never searched on.
        trials: Optuna trials (evaluated `batch_size` at a time).
        sampler: "nsga2" (default) or "tpe".
    """
    import optuna

    fit_scores = np.asarray(fit_scores, dtype=np.float64)
    fit_correct = np.asarray(fit_correct, dtype=bool)
    costs = np.asarray(costs, dtype=np.float64)
    k = fit_scores.shape[0]
    if k < 2:  # a single exit has nothing to search
        thresholds = np.zeros((1, 0))
        return _result(score, thresholds, fit_scores, fit_correct, costs, report_scores, report_correct, 0)

    sorted_scores = np.sort(fit_scores[:-1], axis=1)
    names = [f"q_exit{i + 1}" for i in range(k - 1)]
    optuna.logging.set_verbosity(logging.WARNING)
    if sampler == "nsga2":
        opt_sampler = optuna.samplers.NSGAIISampler(population_size=batch_size, seed=seed)
    elif sampler == "tpe":
        opt_sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(batch_size, trials))
    else:
        raise ValueError(f"unknown sampler {sampler!r} (nsga2 or tpe)")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=opt_sampler)
    # Seed with shared-threshold policies over the val score range: the search starts where the global sweep is.
    for level in np.linspace(0.0, 1.0, min(11, trials)):
        tvalue = np.quantile(fit_scores[:-1], level)
        # position of the first score >= tvalue in each exit's padded sorted scores (see quantile_thresholds)
        qs = [(np.searchsorted(row, tvalue) + 1.5) / (row.size + 2) for row in sorted_scores]
        study.enqueue_trial({name: float(min(max(v, 0.0), 1.0)) for name, v in zip(names, qs)})

    distributions = {name: optuna.distributions.FloatDistribution(0.0, 1.0) for name in names}
    done = 0
    while done < trials:
        batch = [study.ask(distributions) for _ in range(min(batch_size, trials - done))]
        q = np.array([[t.params[name] for name in names] for t in batch])
        result = evaluate_thresholds(fit_scores, fit_correct, costs, quantile_thresholds(sorted_scores, q))
        for t, acc, cost in zip(batch, result.accuracy, result.mean_cost):
            study.tell(t, [float(acc), float(cost)])
        done += len(batch)

    pareto = study.best_trials
    q = np.array([[t.params[name] for name in names] for t in pareto]).reshape(-1, k - 1)
    # Shared thresholds are per-exit policies too: the exact global-sweep frontier joins the candidates, so the
    # search is never worse on val than the sweep and only adds what per-exit thresholds find beyond it.
    sweep = global_sweep(fit_scores, fit_correct, costs)
    shared = sweep.threshold[_frontier_index(sweep.mean_cost, sweep.accuracy)]
    thresholds = np.concatenate([
        quantile_thresholds(sorted_scores, q),
        np.repeat(shared[:, None], k - 1, axis=1),
        np.full((1, k - 1), -np.inf),
        np.full((1, k - 1), np.inf),
    ])
    thresholds = np.unique(thresholds, axis=0)
    return _result(score, thresholds, fit_scores, fit_correct, costs, report_scores, report_correct, trials)


def _frontier_index(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the Pareto-optimal points (no other point is cheaper-or-equal and more accurate)."""
    order = np.lexsort((-acc, cost))
    best = np.maximum.accumulate(acc[order])
    keep = np.r_[True, best[1:] > best[:-1]]
    return order[keep]


def _result(score, thresholds, fit_scores, fit_correct, costs, report_scores, report_correct, trials) -> SearchResult:
    fit = evaluate_thresholds(fit_scores, fit_correct, costs, thresholds)
    order = _frontier_index(fit.mean_cost, fit.accuracy)  # the val Pareto front, by increasing cost
    thresholds = thresholds[order]
    fit = PolicyEvaluation(*(np.asarray(a)[order] for a in fit))
    report = None
    if report_scores is not None:
        report = evaluate_thresholds(report_scores, np.asarray(report_correct, dtype=bool), costs, thresholds)
    eff = efficiency(
        costs,
        fit.mean_cost,
        fit.accuracy,
        None if report is None else report.mean_cost,
        None if report is None else report.accuracy,
    )
    return SearchResult(score, thresholds, fit, report, eff, trials, costs)


def sweep_efficiency(
    fit_scores: np.ndarray,
    fit_correct: np.ndarray,
    costs: np.ndarray,
    report_scores: np.ndarray | None = None,
    report_correct: np.ndarray | None = None,
):
    """Global-threshold sweep on the fit split; with a report split, the val-chosen thresholds reported there.

    Returns (efficiency, report_frontier): `report_frontier` is the upper frontier of the report split's own sweep
    (the descriptive accuracy-vs-cost curve; in-sample by nature).
    """
    fit_curve = global_sweep(fit_scores, fit_correct, costs)
    if report_scores is None:
        eff = efficiency(costs, fit_curve.mean_cost, fit_curve.accuracy)
        return eff, frontier(fit_curve.mean_cost, fit_curve.accuracy)
    report_curve = global_sweep(report_scores, report_correct, costs)
    report_acc, report_cost = sweep_at(report_curve, fit_curve.threshold)
    eff = efficiency(costs, fit_curve.mean_cost, fit_curve.accuracy, report_cost, report_acc)
    return eff, frontier(report_curve.mean_cost, report_curve.accuracy)


def search_policies(
    val,
    test,
    *,
    trials: int = 300,
    score: str = "msp",
    calibrate: "str | Calibrator" = "none",
    sampler: str = "nsga2",
    seed: int = 0,
) -> dict:
    """Per-exit search on `val`, reported on `test`, beside the global sweep chosen the same way.

    Every threshold is chosen on `val`: the "val" numbers are in-sample, the "test" numbers held out. Returns a
    summary dict (NaN kept as float; `evaluation.jsonable` makes it strict JSON) with, for each method, "val" and
    "test" efficiency (acc_at_25..100, acc_cost_auc, mean_cost_at_25..100), per-budget choices (thresholds, val and
    test accuracy and mean cost), and a `policies` list suitable for a policy file.
    """
    from eeopt.evaluation import calibration_name, prepare
    from eeopt.scores import compute_score

    test_c, val_c, _ = prepare(test, val, calibrate)
    calibrate = calibration_name(calibrate)
    fit_scores, report_scores = compute_score(score, val_c), compute_score(score, test_c)
    costs = val.costs
    result = search_thresholds(
        fit_scores, val_c.correct, costs, report_scores=report_scores, report_correct=test_c.correct,
        trials=trials, sampler=sampler, seed=seed, score=score,
    )
    fit_curve = global_sweep(fit_scores, val_c.correct, costs)
    report_curve = global_sweep(report_scores, test_c.correct, costs)
    sweep_test_acc, sweep_test_cost = sweep_at(report_curve, fit_curve.threshold)

    per_exit = _method_summary(costs, result.fit.mean_cost, result.fit.accuracy,
                               result.report.mean_cost, result.report.accuracy,
                               [ThresholdPolicy(score, row).to_dict()["thresholds"] for row in result.thresholds],
                               "thresholds")
    per_exit["pareto"] = [
        [float(a), float(b), float(c), float(d)]
        for a, b, c, d in zip(result.fit.mean_cost, result.fit.accuracy, result.report.mean_cost, result.report.accuracy)
    ]
    sweep = _method_summary(costs, fit_curve.mean_cost, fit_curve.accuracy, sweep_test_cost, sweep_test_acc,
                            [ThresholdPolicy(score, [t]).to_dict()["thresholds"][0] for t in fit_curve.threshold],
                            "threshold")
    policies = [
        {"budget": b["budget"], "score": score, "calibration": calibrate, "thresholds": b["thresholds"]}
        for b in per_exit["budgets"] if b["thresholds"] is not None
    ]
    return {
        "score": score,
        "calibration": calibrate,
        "trials": trials,
        "sampler": sampler,
        "costs": [float(c) for c in costs],
        "per_exit_search": per_exit,
        "global_sweep": sweep,
        "policies": policies,
    }


def _method_summary(costs, fit_cost, fit_acc, report_cost, report_acc, policies, policy_key: str) -> dict:
    """val (in-sample) and test (val-chosen) efficiency plus the per-budget choices of one threshold method.

    `policies[i]` is candidate i's JSON-safe threshold(s) (infinities as "inf"/"-inf", as in policy files).
    """
    val_eff = efficiency(costs, fit_cost, fit_acc)
    test_eff = efficiency(costs, fit_cost, fit_acc, report_cost, report_acc)
    budgets = []
    for share in BUDGETS:
        i = select_by_budget(fit_cost, fit_acc, share / 100.0 * float(costs[-1]))
        pick = (lambda a: float(a[i])) if i >= 0 else (lambda a: float("nan"))
        budgets.append({
            "budget": share,
            policy_key: policies[i] if i >= 0 else None,
            "val_accuracy": pick(fit_acc),
            "val_mean_cost": pick(fit_cost),
            "test_accuracy": pick(report_acc),
            "test_mean_cost": pick(report_cost),
        })
    return {"val": efficiency_metrics(val_eff), "test": efficiency_metrics(test_eff), "budgets": budgets}


def efficiency_metrics(eff: Efficiency) -> dict:
    """acc_at_25..100, acc_cost_auc and mean_cost_at_25..100 of an `Efficiency`, as a flat dict."""
    out = eff.to_dict()
    for share in BUDGETS:
        out[f"mean_cost_at_{share}"] = float(eff.cost_at[share])
    return out


BUDGETS = (25, 50, 75, 100)
