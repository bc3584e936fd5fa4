"""Failure-prediction metrics: does the score rank correct predictions above wrong ones?

``score`` float [N] is any exit score (higher = more likely correct, e.g. max softmax probability); ``correct`` bool [N]
(0/1 numbers are accepted) is the positive class. Arrays are validated once at the entry: mismatched lengths, empty
or non-1-D input, non-finite scores or non-binary ``correct`` raise `ValueError`. A metric that is undefined for the
given labels (e.g. AUROC when every prediction is correct) returns ``float('nan')``.

Ties in the score never depend on input order: AUROC counts a tied pair as half, thresholds accept every sample with
``score >= threshold``, and AURC averages over a random order within each group of equal scores.

`eefp` (Early-Exit Failure Prediction) is eeopt's operationalisation of the metric described by Kubaty et al.
("Rethinking Calibration for Early-Exit Neural Networks"), whose exact formula is not public: see `eefp`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import xlogy
from sklearn.metrics import average_precision_score, roc_auc_score

from eeopt.metrics.calibration import _as_binary, _check_paired


class RiskCoverage(NamedTuple):
    """Risk-coverage curve, one point per sample accepted in order of decreasing score.

    Attributes:
        coverage: float [N], i / N for i = 1..N.
        risk: float [N], expected error rate among the i highest-scored samples (ties in expectation).
    """

    coverage: np.ndarray
    risk: np.ndarray


def auroc(score: ArrayLike, correct: ArrayLike) -> float:
    """Area under the ROC curve of ``score`` [N] for separating correct (positive) from wrong samples.

    Equals P(score of a random correct sample > score of a random wrong one), a tie counting half.
    Returns NaN when every sample is correct or every sample is wrong.
    """
    s, c = _check_score_correct(score, correct)
    return _auroc(s, c)


def aupr_error(score: ArrayLike, correct: ArrayLike) -> float:
    """Average precision for detecting errors: errors are the positives and ``-score`` [N] ranks them.

    Uses scikit-learn's `average_precision_score` (sum over distinct thresholds of recall increment times precision,
    no interpolation; tied scores form one threshold). Returns NaN when there are no errors (recall is undefined)
    and 1.0 when every sample is an error (precision is 1 at every threshold, as scikit-learn defines it).
    """
    s, c = _check_score_correct(score, correct)
    n_err = int(np.count_nonzero(~c))
    if n_err == 0:
        return float("nan")
    if n_err == c.size:
        return 1.0
    return float(average_precision_score(~c, -s))


def fpr95(score: ArrayLike, correct: ArrayLike) -> float:
    """False positive rate at 95 % true positive rate, correct samples being the positives.

    Scanning thresholds from the highest score down (a threshold accepts every sample with ``score >= threshold``),
    take the first where TPR = (correct accepted) / (correct) >= 0.95, compared exactly in integers, and return
    FPR = (wrong accepted) / (wrong) there. Returns NaN when there are no wrong or no correct samples.
    """
    s, c = _check_score_correct(score, correct)
    n_pos = int(np.count_nonzero(c))
    n_neg = c.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s_sorted, c_sorted = s[order], c[order]
    last_of_tie = np.append(s_sorted[1:] != s_sorted[:-1], True)  # a threshold ends where the score changes
    tp = np.cumsum(c_sorted)[last_of_tie]
    fp = np.cumsum(~c_sorted)[last_of_tie]
    first = int(np.argmax(100 * tp >= 95 * n_pos))  # exists: the lowest threshold accepts everything
    return float(fp[first] / n_neg)


def risk_coverage(score: ArrayLike, correct: ArrayLike) -> RiskCoverage:
    """Risk-coverage curve: accept samples by decreasing ``score`` [N]; risk at coverage i/N is errors / i.

    Within a group of g equal scores holding e errors, the first j accepted hold j * e / g errors in expectation
    over a random order, so the curve does not depend on input order. Returns `RiskCoverage` (coverage [N], risk [N]).
    """
    s, c = _check_score_correct(score, correct)
    return _risk_coverage(s, c)


def aurc(score: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve: mean over i = 1..N of (errors among the i highest scores) / i.

    Ties are taken in expectation over a random order within each group of equal scores (see `risk_coverage`);
    with no ties this is the plain sorted answer. Lower is better; always defined for N >= 1.
    """
    s, c = _check_score_correct(score, correct)
    return float(_risk_coverage(s, c).risk.mean())


def eaurc(score: ArrayLike, correct: ArrayLike) -> float:
    """Excess AURC: `aurc` minus the optimal AURC r + (1 - r) ln(1 - r) for the error rate r (Geifman et al., 2019).

    The optimum is the continuous-coverage limit, so a perfect ranking of N samples gives a small non-negative value
    that shrinks as N grows (the finite-N optimum is a right Riemann sum of the same increasing integrand).
    r = 0 and r = 1 give 0. Always defined for N >= 1.
    """
    s, c = _check_score_correct(score, correct)
    r = float(np.count_nonzero(~c)) / c.size
    optimal = r + float(xlogy(1.0 - r, 1.0 - r))
    return float(_risk_coverage(s, c).risk.mean()) - optimal


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
        out[k] = _auroc(s[k], target[k])
    return out


# --------------------------------------------------------------------------------------------------- helpers
def _auroc(s: np.ndarray, c: np.ndarray) -> float:
    n_pos = int(np.count_nonzero(c))
    if n_pos == 0 or n_pos == c.size:
        return float("nan")
    return float(roc_auc_score(c, s))


def _risk_coverage(s: np.ndarray, c: np.ndarray) -> RiskCoverage:
    n = c.size
    order = np.argsort(-s, kind="stable")
    s_sorted, err_sorted = s[order], ~c[order]
    new_group = np.append(True, s_sorted[1:] != s_sorted[:-1])
    start = np.flatnonzero(new_group)  # first position (0-based) of each tie group
    size = np.diff(np.append(start, n))
    errors = np.add.reduceat(err_sorted.astype(np.float64), start)
    errors_before = np.cumsum(errors) - errors
    group = np.cumsum(new_group) - 1
    accepted = np.arange(1, n + 1)
    # expected errors among the first i = errors of earlier groups + j * e / g, j = accepted from this group
    expected_errors = errors_before[group] + (accepted - start[group]) * errors[group] / size[group]
    return RiskCoverage(accepted / n, expected_errors / accepted)


def _check_score_correct(score: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s, c = _check_paired(score, correct, "score", "failure prediction")
    return _finite_float(s, "score"), c


def _check_exits(values: ArrayLike, name: str, numeric: bool = False) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [K, N], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} {arr.shape} is empty; needs at least one exit and one sample")
    return _finite_float(arr, name) if numeric else _as_binary(arr, name)


def _finite_float(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf ({int(np.count_nonzero(~np.isfinite(arr)))} values)")
    return arr
