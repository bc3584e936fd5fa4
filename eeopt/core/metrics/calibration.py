"""Calibration metrics: does confidence match accuracy on average?

All functions take one exit's arrays: ``confidence`` float [N] in [0, 1] (top-label probability), ``correct`` bool [N]
(0/1 numbers are accepted), or ``probs`` float [N, C] with integer ``labels`` [N]. Arrays are validated once at the
entry; bad shapes, empty input or out-of-range values raise `ValueError`. Every metric is defined for N >= 1.

Equal-width binning follows Guo et al. (2017): ``n_bins`` bins on [0, 1], right-closed ``(b/n, (b+1)/n]``, with a
confidence of exactly 0 put in the first bin. `ece`, `mce` and `reliability_bins` share one binning helper, and
`calibration_metrics` computes ECE, MCE and adaptive ECE of an exit from one binning and one sort.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from eeopt.core.metrics.checks import check_paired
from eeopt.core.outputs import log_softmax_parts


class ReliabilityBins(NamedTuple):
    """Equal-width binning of confidence for reliability diagrams.

    Attributes:
        edges: float [n_bins + 1], ``arange(n_bins + 1) / n_bins``; bin b is ``(edges[b], edges[b + 1]]``.
        count: int [n_bins], samples per bin.
        mean_confidence: float [n_bins], mean confidence per bin, NaN in empty bins.
        accuracy: float [n_bins], share of correct samples per bin, NaN in empty bins.
    """

    edges: np.ndarray
    count: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> ReliabilityBins:
    """Per-bin count, mean confidence and accuracy over ``n_bins`` equal-width right-closed bins on [0, 1].

    ``confidence`` float [N] in [0, 1], ``correct`` bool [N]. Empty bins have count 0 and NaN mean/accuracy.

    Raises:
        ValueError: mismatched lengths, empty or non-1-D input, confidence outside [0, 1], non-binary ``correct``,
            or ``n_bins`` < 1.
    """
    conf, corr = _check_confidence_correct(confidence, correct)
    return _bin(conf, corr, _check_n_bins(n_bins))


def ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Top-label expected calibration error: sum over bins of (share of samples in bin) * |mean confidence - accuracy|.

    ``confidence`` float [N] in [0, 1], ``correct`` bool [N]; equal-width right-closed bins (see module doc).
    Returns a float in [0, 1]; always defined for N >= 1.
    """
    conf, corr = _check_confidence_correct(confidence, correct)
    return calibration_metrics(conf, corr.astype(bool), _check_n_bins(n_bins), order=np.arange(conf.size))["ece"]


def mce(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Maximum calibration error: max over non-empty equal-width bins of |mean confidence - accuracy|.

    ``confidence`` float [N] in [0, 1], ``correct`` bool [N]. Returns a float in [0, 1]; always defined for N >= 1.
    """
    conf, corr = _check_confidence_correct(confidence, correct)
    return calibration_metrics(conf, corr.astype(bool), _check_n_bins(n_bins), order=np.arange(conf.size))["mce"]


def adaptive_ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """ECE over equal-mass bins: sort by confidence, split into ``n_bins`` chunks as `np.array_split` does.

    ``confidence`` float [N] in [0, 1], ``correct`` bool [N]. Chunk sizes differ by at most one; when N < n_bins the
    empty chunks are skipped (they carry zero weight). The sort is stable, so samples with equal confidence keep
    their input order (which can matter when a tie straddles a chunk boundary). Always defined for N >= 1.
    """
    conf, corr = _check_confidence_correct(confidence, correct)
    order = np.argsort(conf, kind="stable")
    return _adaptive_ece(conf[order], corr[order], _check_n_bins(n_bins))


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score: mean over samples of sum over classes of (p_c - onehot_c)^2.

    ``probs`` float [N, C], ``labels`` int [N] in [0, C). Returns a float in [0, 2] for probability rows.

    Raises:
        ValueError: wrong shapes, empty input, non-finite probabilities, or labels that are not integers in [0, C).
    """
    p, y = _check_probs_labels(probs, labels)
    p_label = p[np.arange(y.size), y]
    # sum_c (p_c - 1[c = y])^2 = sum_c p_c^2 - 2 p_y + 1
    return float(np.mean(np.sum(p * p, axis=1) - 2.0 * p_label + 1.0))


def nll(logits: ArrayLike, labels: ArrayLike) -> float:
    """Negative log-likelihood: mean over samples of -log softmax(logits)[label], from the log-softmax itself.

    ``logits`` float [N, C] (any real numbers; log-probabilities work too), ``labels`` int [N] in [0, C). Exact for
    confidently wrong samples: logits [0, 40] with label 0 count 40, not a clipped -log(eps).

    Raises:
        ValueError: as `brier`.
    """
    z, y = _check_probs_labels(logits, labels, name="logits")
    return float(np.mean(_logsumexp(z) - z[np.arange(y.size), y]))


def calibration_metrics(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15, order: np.ndarray | None = None
) -> dict[str, float]:
    """ECE, MCE and adaptive ECE of one exit, binning once. Arrays are trusted (validate with the public functions).

    ``confidence`` float64 [N], ``correct`` bool [N]; ``order``, when given, is a stable ascending argsort of
    ``confidence`` (shared with the failure-prediction metrics when the exit score is the confidence).
    """
    corr = correct.astype(np.float64)
    bins = _bin(confidence, corr, n_bins)
    filled = bins.count > 0
    gaps = np.abs(bins.mean_confidence[filled] - bins.accuracy[filled])
    if order is None:
        order = np.argsort(confidence, kind="stable")
    return {
        "ece": float(np.sum(bins.count[filled] / confidence.size * gaps)),
        "mce": float(np.max(gaps)),
        "adaptive_ece": _adaptive_ece(confidence[order], corr[order], n_bins),
    }


# --------------------------------------------------------------------------------------------------- helpers
def _adaptive_ece(conf_sorted: np.ndarray, corr_sorted: np.ndarray, n_bins: int) -> float:
    """Adaptive ECE from confidence sorted ascending (stably) and correctness (0/1 floats) in the same order."""
    n = conf_sorted.size
    # np.array_split: the first n % n_bins chunks hold one extra sample
    sizes = np.full(n_bins, n // n_bins)
    sizes[: n % n_bins] += 1
    chunk = np.repeat(np.arange(n_bins), sizes)
    count = np.bincount(chunk, minlength=n_bins)
    conf_sum = np.bincount(chunk, weights=conf_sorted, minlength=n_bins)
    corr_sum = np.bincount(chunk, weights=corr_sorted, minlength=n_bins)
    filled = count > 0
    gaps = np.abs(conf_sum[filled] - corr_sum[filled]) / count[filled]
    return float(np.sum(count[filled] / n * gaps))


def _logsumexp(z: np.ndarray) -> np.ndarray:
    """logsumexp over the last axis, the same way `ExitOutputs.log_normalizer` computes it."""
    return log_softmax_parts(z)[1]


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Right-closed equal-width bin of each confidence: b with b/n < c <= (b+1)/n; c = 0 goes to bin 0.

    Edges are b / n_bins correctly rounded (linspace can be an ulp off), so a confidence equal to the float nearest
    b / n (e.g. 0.6 for 9/15) lands in the lower bin as the definition says. Shared with histogram binning.
    """
    edges = np.arange(n_bins + 1) / n_bins
    # side="left" gives i with edges[i-1] < c <= edges[i]: right-closed bins; c == 0 -> i = 0 -> first bin
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def _bin(conf: np.ndarray, corr: np.ndarray, n_bins: int) -> ReliabilityBins:
    edges = np.arange(n_bins + 1) / n_bins
    idx = bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    corr_sum = np.bincount(idx, weights=corr, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        acc = np.where(count > 0, corr_sum / count, np.nan)
    return ReliabilityBins(edges, count, mean_conf, acc)


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


def _check_confidence_correct(confidence: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    conf, corr = check_paired(confidence, correct, "confidence", "calibration")
    conf = conf.astype(np.float64, copy=False)
    if not np.all((conf >= 0.0) & (conf <= 1.0)):  # also rejects NaN
        bad = np.flatnonzero(~((conf >= 0.0) & (conf <= 1.0)))
        raise ValueError(f"confidence must lie in [0, 1]: {conf[bad[0]]} at sample {bad[0]} ({bad.size} such)")
    return conf, corr.astype(np.float64)


def _check_probs_labels(probs: ArrayLike, labels: ArrayLike, name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"{name} must have shape [N, C], got shape {p.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must have shape [N], got shape {y.shape}")
    n, c = p.shape
    if y.shape[0] != n:
        raise ValueError(f"{name} and labels must have the same N, got {name} {p.shape} and labels {y.shape}")
    if n == 0 or c == 0:
        raise ValueError(f"{name} {p.shape} is empty; needs at least one sample and one class")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains NaN or inf")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):  # NaN fails the test
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
        y = y.astype(np.int64)
    if np.any((y < 0) | (y >= c)):
        raise ValueError(f"labels must lie in [0, {c}) for {c} classes, got min {y.min()} and max {y.max()}")
    return p, y.astype(np.int64, copy=False)
