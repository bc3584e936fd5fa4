"""Failure-prediction metrics: does the score rank correct predictions above wrong ones?

``score`` float [N] is any exit score (higher = more likely correct, e.g. max softmax probability); ``correct`` bool [N]
(0/1 numbers are accepted) is the positive class. Arrays are validated once at the entry: mismatched lengths, empty
or non-1-D input, non-finite scores or non-binary ``correct`` raise `ValueError`. A metric that is undefined for the
given labels (e.g. AUROC when every prediction is correct) returns ``float('nan')``.

Ties in the score never depend on input order: AUROC counts a tied pair as half, thresholds accept every sample with
``score >= threshold``, and AURC averages over a random order within each group of equal scores.

Every metric here is a function of the samples sorted by score, with equal scores grouped: `rank_scores` sorts an
exit once and `failure_metrics` computes them all from that one sort (the public one-metric functions call the same
private code). `eefp` (Early-Exit Failure Prediction) is eeopt's operationalisation of the metric described by
Kubaty et al. ("Rethinking Calibration for Early-Exit Neural Networks"), whose exact formula is not public: see `eefp`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from eeopt.core.metrics.checks import as_binary, check_paired


class RiskCoverage(NamedTuple):
    """Risk-coverage curve, one point per sample accepted in order of decreasing score.

    Attributes:
        coverage: float [N], i / N for i = 1..N.
        risk: float [N], expected error rate among the i highest-scored samples (ties in expectation).
    """

    coverage: np.ndarray
    risk: np.ndarray


class RankedScores(NamedTuple):
    """One exit's samples sorted by score ascending, with groups of equal scores.

    Attributes:
        order: int [N], the sort (stable) that puts the samples in ascending score order.
        start: int [G], first sorted position of each group of equal scores (ascending).
        size: int [G], samples per group.
    """

    order: np.ndarray
    start: np.ndarray
    size: np.ndarray

    def group_sums(self, flags: np.ndarray) -> np.ndarray:
        """How many samples of each group have `flags` (bool [N], in the original order): int [G]."""
        return np.add.reduceat(flags[self.order].astype(np.int64), self.start)


def rank_scores(score: np.ndarray, order: np.ndarray | None = None) -> RankedScores:
    """Sort `score` [N] (float64, finite) ascending and group equal values; `order` may pass a stable argsort
    computed elsewhere (it is trusted)."""
    if order is None:
        order = np.argsort(score, kind="stable")
    s = score[order]
    start = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    size = np.diff(np.r_[start, s.size])
    return RankedScores(order, start, size)


# --------------------------------------------------------------------------------------------------- public
def auroc(score: ArrayLike, correct: ArrayLike) -> float:
    """Area under the ROC curve of ``score`` [N] for separating correct (positive) from wrong samples.

    Equals P(score of a random correct sample > score of a random wrong one), a tie counting half.
    Returns NaN when every sample is correct or every sample is wrong.
    """
    s, c = _check_score_correct(score, correct)
    ranked = rank_scores(s)
    return _auroc(ranked.group_sums(c), ranked.size)


def aupr_error(score: ArrayLike, correct: ArrayLike) -> float:
    """Average precision for detecting errors: errors are the positives and ``-score`` [N] ranks them.

    As scikit-learn's `average_precision_score` defines it: the sum over distinct thresholds of the recall increment
    times the precision, no interpolation, tied scores forming one threshold. NaN when there are no errors (recall is
    undefined) and 1.0 when every sample is an error (precision is 1 at every threshold).
    """
    s, c = _check_score_correct(score, correct)
    ranked = rank_scores(s)
    return _aupr_error(ranked.group_sums(~c), ranked.size)


def fpr95(score: ArrayLike, correct: ArrayLike) -> float:
    """False positive rate at 95 % true positive rate, correct samples being the positives.

    Scanning thresholds from the highest score down (a threshold accepts every sample with ``score >= threshold``),
    take the first where TPR = (correct accepted) / (correct) >= 0.95, compared exactly in integers, and return
    FPR = (wrong accepted) / (wrong) there. Returns NaN when there are no wrong or no correct samples.
    """
    s, c = _check_score_correct(score, correct)
    ranked = rank_scores(s)
    return _fpr95(ranked.group_sums(c), ranked.size)


def risk_coverage(score: ArrayLike, correct: ArrayLike) -> RiskCoverage:
    """Risk-coverage curve: accept samples by decreasing ``score`` [N]; risk at coverage i/N is errors / i.

    Within a group of g equal scores holding e errors, the first j accepted hold j * e / g errors in expectation
    over a random order, so the curve does not depend on input order. Returns `RiskCoverage` (coverage [N], risk [N]).
    """
    s, c = _check_score_correct(score, correct)
    ranked = rank_scores(s)
    return _risk_coverage(ranked.group_sums(~c), ranked.size)


def aurc(score: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve: mean over i = 1..N of (errors among the i highest scores) / i.

    Ties are taken in expectation over a random order within each group of equal scores (see `risk_coverage`);
    with no ties this is the plain sorted answer. Lower is better; always defined for N >= 1.
    """
    return float(risk_coverage(score, correct).risk.mean())


def eaurc(score: ArrayLike, correct: ArrayLike) -> float:
    """Excess AURC: `aurc` minus the optimal AURC r + (1 - r) ln(1 - r) for the error rate r (Geifman et al., 2019).

    The optimum is the continuous-coverage limit, so a perfect ranking of N samples gives a small non-negative value
    that shrinks as N grows (the finite-N optimum is a right Riemann sum of the same increasing integrand).
    r = 0 and r = 1 give 0. Always defined for N >= 1.
    """
    s, c = _check_score_correct(score, correct)
    return aurc(s, c) - _optimal_aurc(float(np.count_nonzero(~c)) / c.size)


def exit_target(correct: ArrayLike) -> np.ndarray:
    """Whether exiting at exit k loses nothing, for k < K - 1: correct at k, or no later exit is correct.

    ``correct`` bool [K, N] (exits in forward order). Returns bool [K - 1, N] (shape [0, N] when K = 1).
    """
    corr = _check_exits(correct, "correct")
    # any_from[k] = any(correct[k:]), a reverse cumulative OR over exits
    any_from = np.logical_or.accumulate(corr[::-1], axis=0)[::-1]
    return corr[:-1] | ~any_from[1:]


def eefp(scores: ArrayLike, correct: ArrayLike) -> np.ndarray:
    """Early-Exit Failure Prediction per exit: AUROC of ``scores[k]`` against `exit_target` at exit k.

    eeopt's operationalisation of the paper's EEFP: AUROC against "exiting here loses nothing: correct here, or no
    later exit is correct", so a score is rewarded for letting out early exactly the samples whose prediction deeper
    computation would not fix. ``scores`` float [K, N], ``correct`` bool [K, N]. Returns float [K]: NaN at the last
    exit (there is no later computation to save) and NaN where the target is constant over the samples.
    """
    s = _check_exits(scores, "scores", numeric=True)
    corr = _check_exits(correct, "correct")
    if s.shape != corr.shape:
        raise ValueError(f"scores and correct must have the same shape [K, N], got {s.shape} and {corr.shape}")
    target = exit_target(corr)
    out = np.full(s.shape[0], np.nan)
    for k in range(s.shape[0] - 1):  # a loop over exits, not samples
        ranked = rank_scores(s[k])
        out[k] = _auroc(ranked.group_sums(target[k]), ranked.size)
    return out


def failure_metrics(ranked: RankedScores, correct: np.ndarray, target: np.ndarray | None = None) -> dict[str, float]:
    """auroc, aupr_error, fpr95, aurc, eaurc (and eefp when `target` is given, else NaN) of one exit, from one sort.

    ``ranked`` is `rank_scores` of the exit's score; ``correct`` bool [N] and ``target`` bool [N] (`exit_target` at
    this exit) are in the original sample order. Arrays are trusted: validate with the public functions.
    """
    ok = ranked.group_sums(correct)
    errors = ranked.size - ok
    aurc_value = float(_risk_coverage(errors, ranked.size).risk.mean())
    return {
        "auroc": _auroc(ok, ranked.size),
        "aupr_error": _aupr_error(errors, ranked.size),
        "fpr95": _fpr95(ok, ranked.size),
        "aurc": aurc_value,
        "eaurc": aurc_value - _optimal_aurc(float(errors.sum()) / correct.size),
        "eefp": np.nan if target is None else _auroc(ranked.group_sums(target), ranked.size),
    }


# --------------------------------------------------------------------------------------------------- from groups
# Each takes per-group counts in ascending score order: `pos` (or `err`) [G] and `size` [G].
def _auroc(pos: np.ndarray, size: np.ndarray) -> float:
    """Tie-aware AUROC: sum over groups of pos_g * (negatives in lower groups + half the group's negatives)."""
    n_pos = int(pos.sum())
    neg = size - pos
    n_neg = int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    twice = int(np.sum(pos * (2 * below + neg)))  # exact in int64 for N below ~3e9
    return twice / (2.0 * n_pos * n_neg)


def _aupr_error(err: np.ndarray, size: np.ndarray) -> float:
    """Average precision of errors ranked by -score: thresholds walk the groups from the lowest score up."""
    n_err = int(err.sum())
    if n_err == 0:
        return float("nan")
    if n_err == int(size.sum()):
        return 1.0
    cum_err = np.cumsum(err)
    precision = cum_err / np.cumsum(size)
    return float(np.sum(err / n_err * precision))


def _fpr95(pos: np.ndarray, size: np.ndarray) -> float:
    """FPR at the first threshold (highest score first) whose TPR reaches 95 %."""
    pos, neg = pos[::-1], (size - pos)[::-1]
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tp = np.cumsum(pos)
    first = int(np.argmax(100 * tp >= 95 * n_pos))  # exists: the lowest threshold accepts everything
    return float(np.cumsum(neg)[first] / n_neg)


def _risk_coverage(err: np.ndarray, size: np.ndarray) -> RiskCoverage:
    """Accept groups from the highest score down; within a group, errors in expectation over a random order."""
    err, size = err[::-1].astype(np.float64), size[::-1]
    n = int(size.sum())
    start = np.cumsum(size) - size  # first accepted position (0-based) of each group
    errors_before = np.cumsum(err) - err
    group = np.repeat(np.arange(size.size), size)
    accepted = np.arange(1, n + 1)
    expected_errors = errors_before[group] + (accepted - start[group]) * err[group] / size[group]
    return RiskCoverage(accepted / n, expected_errors / accepted)


def _optimal_aurc(r: float) -> float:
    """r + (1 - r) ln(1 - r), with 0 ln 0 = 0."""
    return r + ((1.0 - r) * math.log(1.0 - r) if r < 1.0 else 0.0)


# --------------------------------------------------------------------------------------------------- checks
def _check_score_correct(score: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s, c = check_paired(score, correct, "score", "failure prediction")
    return _finite_float(s, "score"), c


def _check_exits(values: ArrayLike, name: str, numeric: bool = False) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [K, N], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} {arr.shape} is empty; needs at least one exit and one sample")
    return _finite_float(arr, name) if numeric else as_binary(arr, name)


def _finite_float(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf ({int(np.count_nonzero(~np.isfinite(arr)))} values)")
    return arr
