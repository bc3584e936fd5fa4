"""From a prepared split to the numbers eeopt reports: per-exit metrics, their mean, the global sweep's efficiency
and the patience baseline, under the keys of `eeopt.names`.

`evaluate` is what `eeopt exits evaluate` prints and what every study trial logs. Protocol: calibrators and
thresholds are fitted on the fit (validation) split; the evaluated split only reports.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from eeopt.files import jsonable
from eeopt.core.metrics.calibration import calibration_metrics
from eeopt.core.metrics.efficiency import BudgetChoice, Frontier, SweepCurve, frontier, sweep_efficiency, thin_frontier
from eeopt.core.metrics.failure import failure_metrics
from eeopt.names import EXIT_METRIC_NAMES, exit_key, mean_key, with_variant
from eeopt.core.policies import evaluate_patience, float_to_json
from eeopt.core.prepared import PreparedSplit, prepare_pair

if TYPE_CHECKING:
    from eeopt.core.calibration import Calibrator
    from eeopt.core.outputs import ExitOutputs

IN_SAMPLE = "evaluated split (in-sample)"


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """What `evaluate` found for one split.

    Attributes:
        metrics: flat keys of `eeopt.names` without a split: `exit{k}/{metric}`, `mean/{metric}` and the global
            sweep's `sweep/{efficiency}` (thresholds chosen on `thresholds_from`, reported on this split).
        budgets: the sweep's choice for each budget share (val numbers, and this split's).
        frontier: this split's own accuracy-vs-mean-cost frontier (descriptive, in-sample by nature); `to_dict`
            writes at most 500 of its points (`thin_frontier`), the whole curve only on request.
        curve: this split's full sweep (every threshold where the policy changes).
        patience: for P = 1..K, accuracy and mean cost of exiting once P consecutive exits agree (PABEE); it fits
            nothing, so it is reported on this split directly.
    """

    source: str
    score: str
    calibration: str
    thresholds_from: str
    num_exits: int
    metrics: dict[str, float]
    budgets: tuple[BudgetChoice, ...]
    frontier: Frontier
    curve: SweepCurve
    patience: list[dict[str, float]]

    def exit_rows(self) -> dict[str, list[float]]:
        """{metric: [value at exit 1..K]} for every per-exit metric this report holds, in `names` order."""
        rows = {}
        for name in EXIT_METRIC_NAMES:
            values = [self.metrics.get(exit_key(k, name)) for k in range(1, self.num_exits + 1)]
            if any(v is not None for v in values):
                rows[name] = [math.nan if v is None else v for v in values]
        return rows

    def to_dict(self, curve: bool = False) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None): the metrics, the frontier (at most 500 of its points), patience; the
        full sweep with `curve`."""
        front = thin_frontier(self.frontier)
        out = {
            "source": self.source,
            "score": self.score,
            "calibration": self.calibration,
            "thresholds_from": self.thresholds_from,
            "metrics": self.metrics,
            "budgets": [c._asdict() for c in self.budgets],
            "frontier": np.stack([front.cost, front.accuracy], axis=1),
            "patience": self.patience,
        }
        if curve:
            out["curve"] = {"threshold": [float_to_json(t) for t in self.curve.threshold],
                            "mean_cost": self.curve.mean_cost, "accuracy": self.curve.accuracy}
        return jsonable(out)


def exit_metrics(split: PreparedSplit, n_bins: int = 15) -> dict[str, float]:
    """Every per-exit metric of `eeopt.names` (kendall_tau only when calibrated) and their means over exits.

    Calibration metrics use the top-label probability; failure-prediction metrics use the split's exit score. Each
    exit is sorted once (twice when the score is not the confidence); NLL comes from the log-softmax.
    """
    out = split.outputs
    k_exits, n = out.num_exits, out.num_samples
    rows = np.arange(n)
    probs = out.probs
    p_label = probs[:, rows, out.labels]  # [K, N]
    brier = np.mean(np.sum(probs * probs, axis=-1) - 2.0 * p_label + 1.0, axis=1)
    nll = np.mean(out.log_normalizer - out.logits[:, rows, out.labels], axis=1)
    tau = _kendall_tau(split)
    metrics: dict[str, float] = {}
    for k in range(k_exits):
        ranked, correct = split.ranked[k], split.correct[k]
        order = ranked.order if split.score_is_confidence else None
        row = {"accuracy": float(correct.mean()),
               **calibration_metrics(out.confidence[k], correct, n_bins, order),
               "brier": float(brier[k]), "nll": float(nll[k]),
               **failure_metrics(ranked, correct, split.exit_target[k] if k < k_exits - 1 else None)}
        if tau is not None:
            row["kendall_tau"] = float(tau[k])
        metrics.update({exit_key(k + 1, name): value for name, value in row.items()})
    return {**metrics, **mean_over_exits(metrics, k_exits)}


def mean_over_exits(metrics: dict[str, float], num_exits: int) -> dict[str, float]:
    """`mean/{metric}` for each per-exit metric present: the mean over exits that define it (NaN when none does)."""
    means = {}
    for name in EXIT_METRIC_NAMES:
        values = [metrics[key] for key in (exit_key(k, name) for k in range(1, num_exits + 1)) if key in metrics]
        if not values:
            continue
        finite = [v for v in values if not math.isnan(v)]
        means[mean_key(name)] = float(np.mean(finite)) if finite else math.nan
    return means


def evaluate(split: PreparedSplit, fit: PreparedSplit | None = None, n_bins: int = 15) -> EvaluationReport:
    """Metrics and global-sweep efficiency of `split`, thresholds chosen on `fit` (in-sample when None)."""
    if fit is not None and (fit.score, fit.calibration) != (split.score, split.calibration):
        raise ValueError(f"fit and evaluated splits differ in score or calibrator: ({fit.score}, {fit.calibration}) "
                         f"vs ({split.score}, {split.calibration})")
    eff = sweep_efficiency(split.costs, split.sweep if fit is None else fit.sweep,
                           None if fit is None else split.sweep)
    out = split.outputs
    patiences = np.arange(1, out.num_exits + 1)
    pat = evaluate_patience(out.predictions, split.correct, out.costs, patiences)
    return EvaluationReport(
        source=split.raw.source,
        score=split.score,
        calibration=split.calibration,
        thresholds_from=IN_SAMPLE if fit is None else fit.raw.source,
        num_exits=out.num_exits,
        metrics={**exit_metrics(split, n_bins), **eff.to_dict("sweep")},
        budgets=eff.choices,
        frontier=frontier(split.sweep.mean_cost, split.sweep.accuracy),
        curve=split.sweep,
        patience=[{"patience": int(p), "accuracy": float(a), "mean_cost": float(c)}
                  for p, a, c in zip(patiences, pat.accuracy, pat.mean_cost)],
    )


def evaluate_exits(
    outputs: "ExitOutputs",
    *,
    fit_on: "ExitOutputs | None" = None,
    calibrate: "str | Calibrator" = "none",
    score: str = "msp",
    compare: Sequence[str] = (),
    n_bins: int = 15,
) -> EvaluationReport:
    """`evaluate` from exit outputs: calibrator and thresholds fitted on `fit_on` when given.

    Each calibrator in `compare` ("none" included) is fitted on `fit_on` too and its metrics join the report's under
    `calib/{name}/...`.

    Raises:
        ExitOutputsError: the splits do not come from the same model, or the score needs arrays they lack.
        ConfigError: unknown calibrator or score, or calibration without `fit_on`.
    """
    fit, split = prepare_pair(fit_on, outputs, calibrate=calibrate, score=score, names=("fit", "evaluated"))
    report = evaluate(split, fit, n_bins)
    for name in compare:
        other_fit, other = prepare_pair(fit_on, outputs, calibrate=name, score=score, names=("fit", "evaluated"))
        report.metrics.update(with_variant("calib", name, evaluate(other, other_fit, n_bins).metrics))
    return report


def _kendall_tau(split: PreparedSplit) -> np.ndarray | None:
    if split.outputs is split.raw:
        return None
    from eeopt.core.calibration import kendall_tau

    return kendall_tau(split.raw_scores, split.scores)
