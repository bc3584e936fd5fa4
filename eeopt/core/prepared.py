"""A split prepared once: exit outputs under one calibrator and one exit score, with what every report needs.

The evaluation report, the threshold search and the plots all take a `PreparedSplit`, so within a trial (or a CLI
command) the calibrator is fitted once on val, applied once per split, the scores and correctness are computed once,
each exit is sorted by its score once, and the exact global sweep runs once per split.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np

from eeopt.errors import ConfigError
from eeopt.core.metrics.efficiency import SweepCurve, global_sweep
from eeopt.core.metrics.failure import RankedScores, exit_target, rank_scores
from eeopt.core.outputs import ExitOutputs, check_compatible
from eeopt.core.scores import compute_score

if TYPE_CHECKING:
    from eeopt.core.calibration import Calibrator


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedSplit:
    """One split's exit outputs after calibration, with its exit scores and derived arrays (computed once, lazily).

    Attributes:
        name: the split ("val", "test", or a file name).
        raw: the outputs as loaded (before calibration).
        outputs: the calibrated outputs (`raw` itself without a calibrator).
        calibration: the calibrator's name, or "none".
        score: the exit score's name.
        scores: [K, N] float64 exit scores of the calibrated outputs.
    """

    name: str
    raw: ExitOutputs
    outputs: ExitOutputs
    calibration: str
    score: str
    scores: np.ndarray

    @property
    def costs(self) -> np.ndarray:
        return self.outputs.costs

    @property
    def num_exits(self) -> int:
        return self.outputs.num_exits

    @functools.cached_property
    def correct(self) -> np.ndarray:
        """[K, N] bool: the calibrated prediction at exit k is right (vector scaling may change predictions)."""
        return self.outputs.correct

    @functools.cached_property
    def ranked(self) -> tuple[RankedScores, ...]:
        """Each exit's samples sorted by score (one stable sort per exit)."""
        return tuple(rank_scores(s) for s in self.scores)

    @functools.cached_property
    def score_is_confidence(self) -> bool:
        """Whether the score is the top-label confidence itself (msp), so one sort serves both metric families."""
        return self.scores is self.outputs.confidence or np.array_equal(self.scores, self.outputs.confidence)

    @functools.cached_property
    def exit_target(self) -> np.ndarray:
        """[K-1, N]: exiting at exit k loses nothing (the EEFP target)."""
        return exit_target(self.correct)

    @functools.cached_property
    def sweep(self) -> SweepCurve:
        """The exact global-threshold sweep of this split."""
        return global_sweep(self.scores, self.correct, self.costs)

    @functools.cached_property
    def raw_scores(self) -> np.ndarray:
        """[K, N] scores before calibration (the Kendall tau compares the two rankings)."""
        if self.outputs is self.raw:
            return self.scores
        return compute_score(self.score, self.raw)


def fit_calibrator(calibrate: "str | Calibrator | None", val: ExitOutputs | None) -> "Calibrator | None":
    """A calibrator fitted on `val`: from a registry name ("none" or None gives None) or one already fitted.

    Raises:
        ConfigError: calibration without validation outputs to fit on, or an unknown calibrator name.
    """
    if calibrate in (None, "none"):
        return None
    from eeopt.core.calibration import Calibrator, create_calibrator

    calibrator = calibrate if isinstance(calibrate, Calibrator) else create_calibrator(calibrate)
    if calibrator.is_fitted:
        return calibrator
    if val is None:
        raise ConfigError(f"calibration {calibrator.name!r} needs validation outputs to fit on (--fit-on VAL.npz)")
    return calibrator.fit(val)


def prepare(outputs: ExitOutputs, calibrator: "Calibrator | None", score: str, name: str) -> PreparedSplit:
    """Apply a fitted calibrator (or none) and compute the exit score.

    Raises:
        ExitOutputsError: the score needs arrays the outputs lack (``learned`` without ``scores``).
        UnknownNameError: an unknown score.
    """
    calibrated = calibrator.apply(outputs) if calibrator is not None else outputs
    return PreparedSplit(
        name=name,
        raw=outputs,
        outputs=calibrated,
        calibration=calibrator.name if calibrator is not None else "none",
        score=score,
        scores=compute_score(score, calibrated),
    )


def prepare_pair(
    fit: ExitOutputs | None,
    report: ExitOutputs,
    *,
    calibrate: "str | Calibrator | None" = "none",
    score: str = "msp",
    names: tuple[str, str] = ("val", "test"),
) -> tuple[PreparedSplit | None, PreparedSplit]:
    """The fit split (validation; may be None) and the report split, checked to come from one model, with the
    calibrator fitted once on the fit split and applied to both."""
    if fit is not None:
        check_compatible(fit, report)
    calibrator = fit_calibrator(calibrate, fit)
    fit_split = prepare(fit, calibrator, score, names[0]) if fit is not None else None
    return fit_split, prepare(report, calibrator, score, names[1])
