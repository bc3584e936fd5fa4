"""One call from exit outputs to the numbers eeopt reports: per-exit metrics, their mean, and efficiency.

`evaluate_exits` is what `eeopt exits evaluate` prints and what every study trial logs. Protocol: calibrators and
thresholds are fitted on the `fit_on` (validation) split; the evaluated split only reports.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from eeopt.calibration import Calibrator

from eeopt.errors import ConfigError
from eeopt.metrics import calibration as cal_metrics
from eeopt.metrics import failure as fail_metrics
from eeopt.outputs import ExitOutputs, check_compatible
from eeopt.policies import evaluate_patience
from eeopt.scores import compute_score

#: Per-exit metric names, in report order. Calibration metrics use the top-label probability; failure-prediction
#: metrics use the chosen exit score.
EXIT_METRICS = (
    "accuracy", "ece", "mce", "adaptive_ece", "brier", "nll",
    "auroc", "aupr_error", "fpr95", "aurc", "eaurc", "eefp",
)
EFFICIENCY_METRICS = ("acc_at_25", "acc_at_50", "acc_at_75", "acc_at_100", "acc_cost_auc")


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """Per-exit metrics (exits numbered from 1), their mean over exits, and the global-sweep efficiency.

    `patience` lists, for P = 1..K, the accuracy and mean cost of exiting once P consecutive exits agree (PABEE);
    it fits nothing, so it is reported on the evaluated split directly. `efficiency` holds acc_at_25..100 and acc_cost_auc (thresholds chosen on the fit split when there is one, else
    in-sample on the evaluated split), mean_cost_at_25..100 the evaluated split's mean cost of each budget's choice,
    and
    `curve` the evaluated split's accuracy-vs-mean-cost frontier.
    """

    exits: list[dict[str, float]]
    mean: dict[str, float]
    efficiency: dict[str, Any]
    score: str
    calibration: str
    kendall_tau: list[float] | None
    thresholds_from: str
    patience: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN becomes None (null)."""
        out = {
            "exits": self.exits,
            "mean": self.mean,
            "efficiency": self.efficiency,
            "score": self.score,
            "calibration": self.calibration,
            "thresholds_from": self.thresholds_from,
            "patience": self.patience,
        }
        if self.kendall_tau is not None:
            out["kendall_tau"] = self.kendall_tau
        return jsonable(out)

    def flat_metrics(self, split: str) -> dict[str, float]:
        """MLflow-style keys: `{split}/exit{k}/{metric}`, `{split}/mean/{metric}`, `{split}/{efficiency metric}`."""
        flat: dict[str, float] = {}
        for row in self.exits:
            for name, value in row.items():
                if name != "exit":
                    flat[f"{split}/exit{row['exit']}/{name}"] = value
        for name, value in self.mean.items():
            flat[f"{split}/mean/{name}"] = value
        for name in EFFICIENCY_METRICS:
            flat[f"{split}/{name}"] = self.efficiency[name]
        return flat


def exit_metrics(outputs: ExitOutputs, scores: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Every metric in `EXIT_METRICS` for each exit; `scores` [K, N] drive the failure-prediction metrics."""
    correct = outputs.correct
    eefp = fail_metrics.eefp(scores, correct)
    rows = []
    for k in range(outputs.num_exits):
        conf, ok, s = outputs.confidence[k], correct[k], scores[k]
        rows.append({
            "exit": k + 1,
            "accuracy": float(ok.mean()),
            "ece": cal_metrics.ece(conf, ok, n_bins),
            "mce": cal_metrics.mce(conf, ok, n_bins),
            "adaptive_ece": cal_metrics.adaptive_ece(conf, ok, n_bins),
            "brier": cal_metrics.brier(outputs.probs[k], outputs.labels),
            "nll": cal_metrics.nll(outputs.probs[k], outputs.labels),
            "auroc": fail_metrics.auroc(s, ok),
            "aupr_error": fail_metrics.aupr_error(s, ok),
            "fpr95": fail_metrics.fpr95(s, ok),
            "aurc": fail_metrics.aurc(s, ok),
            "eaurc": fail_metrics.eaurc(s, ok),
            "eefp": float(eefp[k]),
        })
    return rows


def mean_over_exits(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over exits, ignoring undefined (NaN) values; NaN when no exit defines it."""
    mean = {}
    for name in EXIT_METRICS:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        mean[name] = float(values.mean()) if values.size else math.nan
    return mean


def prepare(
    outputs: ExitOutputs,
    fit_on: ExitOutputs | None = None,
    calibrate: Any = "none",
) -> tuple[ExitOutputs, ExitOutputs | None, Any]:
    """Check the splits match and apply the calibrator fitted on `fit_on`; returns (outputs, fit_on, calibrator).

    `calibrate` is a calibrator name, or a `Calibrator` already fitted on `fit_on` (so several reports share one fit).
    """
    if fit_on is not None:
        check_compatible(fit_on, outputs)
    if calibrate in (None, "none"):
        return outputs, fit_on, None
    if fit_on is None:
        raise ConfigError(f"calibration {calibration_name(calibrate)!r} needs validation outputs to fit on (--fit-on VAL.npz)")
    from eeopt.calibration import Calibrator, create_calibrator

    calibrator = calibrate if isinstance(calibrate, Calibrator) else create_calibrator(calibrate)
    if not calibrator.is_fitted:
        calibrator.fit(fit_on)
    return calibrator.apply(outputs), calibrator.apply(fit_on), calibrator


def calibration_name(calibrate: Any) -> str:
    """'none', a calibrator's registry name, or the name given."""
    if calibrate in (None, "none"):
        return "none"
    return calibrate if isinstance(calibrate, str) else calibrate.name


def evaluate_exits(
    outputs: ExitOutputs,
    *,
    fit_on: ExitOutputs | None = None,
    calibrate: "str | Calibrator" = "none",
    score: str = "msp",
    n_bins: int = 15,
) -> EvaluationReport:
    """Metrics and efficiency of `outputs`, with calibrator and thresholds fitted on `fit_on` when given.

    Raises:
        ExitOutputsError: the splits do not come from the same model, or the score needs arrays they lack.
        ConfigError: unknown calibrator, or calibration without `fit_on`.
    """
    from eeopt.search import efficiency_metrics, sweep_efficiency

    raw_scores = compute_score(score, outputs)
    calibrated, fit_cal, calibrator = prepare(outputs, fit_on, calibrate)
    scores = compute_score(score, calibrated) if calibrator is not None else raw_scores
    tau = None
    if calibrator is not None:
        from eeopt.calibration import kendall_tau

        tau = [float(v) for v in kendall_tau(raw_scores, scores)]
    rows = exit_metrics(calibrated, scores, n_bins)
    if tau is not None:
        for row, value in zip(rows, tau):
            row["kendall_tau"] = value

    if fit_cal is not None:
        fit_scores = compute_score(score, fit_cal)
        eff, curve = sweep_efficiency(fit_scores, fit_cal.correct, outputs.costs, scores, calibrated.correct)
        source = fit_on.source
    else:
        eff, curve = sweep_efficiency(scores, calibrated.correct, outputs.costs)
        source = "evaluated split (in-sample)"
    efficiency = efficiency_metrics(eff)
    efficiency["curve"] = [[float(c), float(a)] for c, a in zip(curve.cost, curve.accuracy)]
    patiences = np.arange(1, outputs.num_exits + 1)
    pat = evaluate_patience(calibrated.predictions, calibrated.correct, outputs.costs, patiences)
    return EvaluationReport(
        exits=rows,
        mean=mean_over_exits(rows),
        efficiency=efficiency,
        score=score,
        calibration=calibration_name(calibrate),
        kendall_tau=tau,
        thresholds_from=source,
        patience=[
            {"patience": int(p), "accuracy": float(a), "mean_cost": float(c)}
            for p, a, c in zip(patiences, pat.accuracy, pat.mean_cost)
        ],
    )


def jsonable(value: Any) -> Any:
    """Recursively convert NumPy scalars/arrays to Python and NaN/inf floats to None, for strict JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
