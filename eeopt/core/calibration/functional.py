"""Calibration as pure functions: fit a temperature or a vector scaling, build top-label distributions, measure
how much a calibrator re-ranks samples (`kendall_tau`). The calibrator classes call these.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

# Top-label confidences are clipped to [1/C + TOP_LABEL_MARGIN, 1 - TOP_LABEL_CEIL_GAP] (see `top_label_probs`).
TOP_LABEL_MARGIN = 1e-6
TOP_LABEL_CEIL_GAP = 1e-9
LOG_TEMPERATURE_BOUNDS = (-5.0, 5.0)


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) for one exit.

    ``logits`` float [N, C], ``labels`` int [N]. The NLL is convex in 1/T, hence unimodal in log T, so a bounded
    Brent search over log T in `LOG_TEMPERATURE_BOUNDS` ([-5, 5], T in [0.0067, 148]) finds the global minimum
    (to ~1e-9 in log T); if the data push T to a bound (e.g. a perfectly separated split), the bound is returned.
    """
    z, y = _logits_labels(logits, labels)
    z_label = z[np.arange(y.size), y]

    def nll(log_t: float) -> float:
        return _mean_nll(z * math.exp(-log_t), z_label * math.exp(-log_t))

    res = optimize.minimize_scalar(
        nll, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-9, "maxiter": 1000}
    )
    return float(math.exp(res.x))


def fit_vector_scaling(
    logits: ArrayLike, labels: ArrayLike, l2: float = 1e-4, temperature: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class scale w [C] and bias b [C] minimising the NLL of softmax(logits * w + b) for one exit.

    ``logits`` float [N, C], ``labels`` int [N]. The objective adds ``l2 / 2 * (|w - 1/T|^2 + |b|^2)``, where T is the
    fitted temperature (or ``temperature``): without it the bias is only defined up to a constant shift (softmax is
    shift-invariant) and a class absent from the split drives its bias to -inf. Centring the penalty on the
    temperature solution, where L-BFGS-B starts, keeps vector scaling a superset of temperature scaling: its
    validation NLL is never above temperature scaling's. Returns float64 (w, b).
    """
    z, y = _logits_labels(logits, labels)
    if not (l2 >= 0 and math.isfinite(l2)):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    c = z.shape[1]
    t = fit_temperature(z, y) if temperature is None else float(temperature)
    w0 = np.full(c, 1.0 / t)
    x0 = np.concatenate([w0, np.zeros(c)])
    res = optimize.minimize(
        _vector_objective,
        x0,
        args=(z, y, w0, l2),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9},
    )
    # L-BFGS-B only returns a point no worse than its start, but guard the superset property explicitly
    x = res.x if res.fun <= _vector_objective(x0, z, y, w0, l2)[0] else x0
    return x[:c].copy(), x[c:].copy()


def top_label_probs(predictions: ArrayLike, confidence: ArrayLike, num_classes: int) -> np.ndarray:
    """Probabilities [..., C] giving the predicted class ``confidence`` and the other classes equal shares.

    ``predictions`` int [...] (class per sample), ``confidence`` float [...] (calibrated top-label confidence c').
    Class ``predictions`` gets c' and each of the other C - 1 classes gets (1 - c') / (C - 1). No C-class
    distribution has a top probability below 1/C, and at c' <= 1/C another class would tie or win, changing the
    prediction; at c' = 1 the other classes get probability 0 (log 0 = -inf). So c' is clipped to
    [1/C + 1e-6, 1 - 1e-9]: the argmax stays the given prediction (strictly) and every probability is > 0.
    Equal c' give bit-identical rows up to the position of the predicted class.
    """
    pred = np.asarray(predictions)
    conf = np.asarray(confidence, dtype=np.float64)
    if pred.shape != conf.shape:
        raise ValueError(f"predictions and confidence must have the same shape, got {pred.shape} and {conf.shape}")
    c = int(num_classes)
    if c < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if pred.size and (pred.min() < 0 or pred.max() >= c):
        raise ValueError(f"predictions must lie in [0, {c})")
    conf = np.clip(conf, 1.0 / c + TOP_LABEL_MARGIN, 1.0 - TOP_LABEL_CEIL_GAP)
    out = np.repeat(((1.0 - conf) / (c - 1))[..., None], c, axis=-1)
    np.put_along_axis(out, pred[..., None].astype(np.int64), conf[..., None], axis=-1)
    return out


def top_label_logits(predictions: ArrayLike, confidence: ArrayLike, num_classes: int) -> np.ndarray:
    """log of `top_label_probs`: logits [..., C] whose softmax is that distribution (up to rounding), float64."""
    return np.log(top_label_probs(predictions, confidence, num_classes))


def kendall_tau(before: ArrayLike, after: ArrayLike) -> np.ndarray:
    """Kendall's tau-b per exit between two confidence rankings of the same samples, float [K].

    ``before``, ``after`` float [K, N] (e.g. max-softmax confidence before and after calibration). 1 means the
    calibrator kept the order of samples within the exit (so a threshold policy would exit the same samples at
    any budget); below 1 it re-ranked them. NaN where tau-b is undefined (N < 2, or a constant row).

    Raises:
        ValueError: the arrays are not 2-D with the same shape.
    """
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"before and after must both have shape [K, N], got {a.shape} and {b.shape}")
    taus = np.full(a.shape[0], np.nan)
    for k in range(a.shape[0]):
        if a.shape[1] < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN
            taus[k] = stats.kendalltau(a[k], b[k], variant="b").statistic
    return taus


def _logits_labels(logits: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits must be [N, C] with N >= 1, C >= 2 and labels [N], got {z.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be integers in [0, {z.shape[1]})")
    return z, y.astype(np.int64)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def _mean_nll(z: np.ndarray, z_label: np.ndarray) -> float:
    """Mean of logsumexp(z_n) - z_n[y_n] over samples; ``z`` [N, C], ``z_label`` [N]."""
    return float(np.mean(_logsumexp(z) - z_label))


def _vector_objective(
    params: np.ndarray, z: np.ndarray, y: np.ndarray, w0: np.ndarray, l2: float
) -> tuple[float, np.ndarray]:
    """Vector-scaling objective and its analytic gradient with respect to ``params`` = concat(w, b), [2C].

    f = mean_n [logsumexp(z_n * w + b) - (z_n * w + b)[y_n]] + l2 / 2 * (|w - w0|^2 + |b|^2).
    With G = (softmax(z * w + b) - onehot(y)) / N [N, C]: df/dw = sum_n G * z + l2 (w - w0), df/db = sum_n G + l2 b.
    """
    n, c = z.shape
    w, b = params[:c], params[c:]
    s = z * w + b
    lse = _logsumexp(s)
    rows = np.arange(n)
    f = float(np.mean(lse - s[rows, y])) + 0.5 * l2 * (float(np.sum((w - w0) ** 2)) + float(np.sum(b**2)))
    g = np.exp(s - lse[:, None])
    g[rows, y] -= 1.0
    g /= n
    grad = np.concatenate([(g * z).sum(axis=0) + l2 * (w - w0), g.sum(axis=0) + l2 * b])
    return f, grad
