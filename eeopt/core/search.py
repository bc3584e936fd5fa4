"""Per-exit threshold search: Optuna picks t_1..t_{K-1} on validation; the Pareto front is then reported on test.

Thresholds are searched in score-quantile space: for exit k the parameter ``q_exit{k}`` in [0, 1] picks a position
in the sorted validation scores of that exit (0 = every sample passes, 1 = none does), so every exit gets a useful
range whatever its score's scale. Trials are asked in batches and evaluated with the vectorised policy evaluator, so
a few hundred trials cost about a second. Nothing is fitted on the report (test) split.

`search_policies` runs the search on prepared splits and reports it beside the exact global sweep, both under the
efficiency keys of `eeopt.names` (`acc_cost_auc` for the search, `sweep/acc_cost_auc` for the sweep).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from eeopt.core.metrics.efficiency import (
    BudgetChoice,
    Efficiency,
    SweepCurve,
    efficiency,
    frontier_indices,
    global_sweep,
    sweep_efficiency,
)
from eeopt.core.policies import PolicyEvaluation, ThresholdPolicy, evaluate_thresholds, float_to_json
from eeopt.core.prepared import PreparedSplit


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The val Pareto front of the searched policies (and of the global sweep's), with val and test numbers.

    Attributes:
        thresholds: [P, K-1] threshold vectors, sorted by val mean cost.
        fit: val accuracy / mean cost of each candidate.
        report: test accuracy / mean cost of the same candidates (None without a report split).
        fit_efficiency: budget choices and acc_cost_auc on val (in-sample).
        efficiency: the same policies (chosen on val) measured on test; the val numbers without a report split.
        trials: number of Optuna trials evaluated.
    """

    score: str
    thresholds: np.ndarray
    fit: PolicyEvaluation
    report: PolicyEvaluation | None
    fit_efficiency: Efficiency
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
    fit_sweep: SweepCurve | None = None,
) -> SearchResult:
    """Multi-objective search (max val accuracy, min val mean cost) over per-exit thresholds.

    Args:
        fit_scores, fit_correct: validation scores and correctness [K, N].
        costs: cumulative cost per exit [K].
        report_scores, report_correct: the same for the test split [K, N'], only evaluated, never searched on.
        trials: Optuna trials (evaluated `batch_size` at a time).
        sampler: "nsga2" (default) or "tpe".
        fit_sweep: the validation split's global sweep, when already computed.
    """
    fit_scores = np.asarray(fit_scores, dtype=np.float64)
    fit_correct = np.asarray(fit_correct, dtype=bool)
    costs = np.asarray(costs, dtype=np.float64)
    k = fit_scores.shape[0]
    if k < 2:  # a single exit has nothing to search
        return _result(score, np.zeros((1, 0)), fit_scores, fit_correct, costs, report_scores, report_correct, 0)
    sorted_scores = np.sort(fit_scores[:-1], axis=1)
    q = _optuna_front(fit_scores, fit_correct, costs, sorted_scores, trials, sampler, seed, batch_size)
    # Shared thresholds are per-exit policies too: the exact global-sweep frontier joins the candidates, so the
    # search is never worse on val than the sweep and only adds what per-exit thresholds find beyond it.
    sweep = fit_sweep if fit_sweep is not None else global_sweep(fit_scores, fit_correct, costs)
    shared = sweep.threshold[frontier_indices(sweep.mean_cost, sweep.accuracy)]
    thresholds = np.unique(np.concatenate([
        quantile_thresholds(sorted_scores, q),
        np.repeat(shared[:, None], k - 1, axis=1),
        np.full((1, k - 1), -np.inf),
        np.full((1, k - 1), np.inf),
    ]), axis=0)
    return _result(score, thresholds, fit_scores, fit_correct, costs, report_scores, report_correct, trials)


def threshold_sampler(name: str, seed: int, trials: int, batch_size: int):
    """The Optuna sampler of a per-exit threshold search by name (`policy.sampler`): "nsga2" or "tpe" (the one home
    of that choice; a study's own sampler is `eeopt.study.trials.create_sampler`). Quiets Optuna's logging."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=batch_size, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(batch_size, trials))
    raise ValueError(f"unknown sampler {name!r} (nsga2 or tpe)")


def _optuna_front(fit_scores, fit_correct, costs, sorted_scores, trials, sampler, seed, batch_size) -> np.ndarray:
    """Quantile parameters [P, K-1] of the Pareto-optimal Optuna trials (an in-memory study, asked in batches)."""
    import optuna

    k = fit_scores.shape[0]
    names = [f"q_exit{i + 1}" for i in range(k - 1)]
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=threshold_sampler(sampler, seed, trials, batch_size))
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
    return np.array([[t.params[name] for name in names] for t in study.best_trials]).reshape(-1, k - 1)


def _result(score, thresholds, fit_scores, fit_correct, costs, report_scores, report_correct, trials) -> SearchResult:
    fit = evaluate_thresholds(fit_scores, fit_correct, costs, thresholds)
    order = frontier_indices(fit.mean_cost, fit.accuracy)  # the val Pareto front, by increasing cost
    thresholds = thresholds[order]
    fit = PolicyEvaluation(*(np.asarray(a)[order] for a in fit))
    report = None
    if report_scores is not None:
        report = evaluate_thresholds(report_scores, np.asarray(report_correct, dtype=bool), costs, thresholds)
    fit_eff = efficiency(costs, fit.mean_cost, fit.accuracy)
    eff = fit_eff if report is None else efficiency(costs, fit.mean_cost, fit.accuracy, report.mean_cost,
                                                    report.accuracy)
    return SearchResult(score, thresholds, fit, report, fit_eff, eff, trials, costs)


# --------------------------------------------------------------------------------------------------- on splits
@dataclasses.dataclass(frozen=True)
class PolicySearch:
    """The per-exit search and the global sweep on one (val, test) pair of prepared splits.

    Every threshold is chosen on val: the "fit" numbers are in-sample, the "report" numbers held out.
    """

    score: str
    calibration: str
    sampler: str
    costs: np.ndarray
    result: SearchResult
    sweep_fit: Efficiency
    sweep_report: Efficiency
    sweep_thresholds: np.ndarray  # [P] the fit sweep's thresholds, descending (candidate i of the sweep)

    def metrics(self, split: str = "report") -> dict[str, float]:
        """Efficiency keys of both methods on the `fit` (val, in-sample) or `report` (test) split."""
        search = self.result.fit_efficiency if split == "fit" else self.result.efficiency
        sweep = self.sweep_fit if split == "fit" else self.sweep_report
        return {**search.to_dict("search"), **sweep.to_dict("sweep")}

    def policies(self) -> list[dict[str, Any]]:
        """The val-chosen per-exit policy for each budget share (JSON-safe; infinities as "inf"/"-inf")."""
        return [
            {"budget": c.budget, "score": self.score, "calibration": self.calibration,
             "thresholds": ThresholdPolicy(self.score, self.result.thresholds[c.index]).to_dict()["thresholds"]}
            for c in self.result.efficiency.choices if c.index >= 0
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (NaN kept as float: `evaluation.jsonable` makes it strict JSON)."""
        res = self.result
        search_budgets = [_choice_dict(c, "thresholds", None if c.index < 0 else [
            float_to_json(t) for t in res.thresholds[c.index]]) for c in res.efficiency.choices]
        sweep_budgets = [_choice_dict(c, "threshold", None if c.index < 0 else float_to_json(
            self.sweep_thresholds[c.index])) for c in self.sweep_report.choices]
        return {
            "score": self.score,
            "calibration": self.calibration,
            "trials": res.trials,
            "sampler": self.sampler,
            "costs": [float(c) for c in self.costs],
            "metrics": self.metrics("report"),
            "fit_metrics": self.metrics("fit"),
            "budgets": {"search": search_budgets, "sweep": sweep_budgets},
            "pareto": [[float(a), float(b), float(c), float(d)] for a, b, c, d in zip(
                res.fit.mean_cost, res.fit.accuracy, res.report.mean_cost, res.report.accuracy)],
            "policies": self.policies(),
        }


def search_policies(
    fit: PreparedSplit, report: PreparedSplit, *, trials: int = 300, sampler: str = "nsga2", seed: int = 0
) -> PolicySearch:
    """Per-exit search on `fit` (val), reported on `report` (test), beside the global sweep chosen the same way."""
    result = search_thresholds(
        fit.scores, fit.correct, fit.costs, report_scores=report.scores, report_correct=report.correct,
        trials=trials, sampler=sampler, seed=seed, score=fit.score, fit_sweep=fit.sweep,
    )
    return PolicySearch(
        score=fit.score, calibration=fit.calibration, sampler=sampler, costs=fit.costs, result=result,
        sweep_fit=sweep_efficiency(fit.costs, fit.sweep),
        sweep_report=sweep_efficiency(fit.costs, fit.sweep, report.sweep),
        sweep_thresholds=fit.sweep.threshold,
    )


def _choice_dict(choice: BudgetChoice, key: str, thresholds) -> dict[str, Any]:
    return {
        "budget": choice.budget,
        key: thresholds,
        "val_accuracy": choice.fit_accuracy,
        "val_mean_cost": choice.fit_mean_cost,
        "test_accuracy": choice.report_accuracy,
        "test_mean_cost": choice.report_mean_cost,
    }
