"""Post-hoc calibrators: fitted per exit on validation outputs, applied to any split of the same model.

A calibrator maps `ExitOutputs` to new `ExitOutputs` whose softmax gives the calibrated probabilities; labels, costs
and scores are kept. Built-ins (each fitted independently per exit k):

- ``temperature``: softmax(z / T_k), one scalar T_k > 0 minimising validation NLL (Guo et al., 2017). Never changes
  the prediction, but it DOES change the order of max-softmax confidences between samples (see `kendall_tau`);
- ``vector``: softmax(z * w_k + b_k) with per-class w_k, b_k [C] (Guo et al., 2017); may change predictions;
- ``histogram``: histogram binning of the top-label confidence (Zadrozny & Elkan, 2001);
- ``isotonic``: isotonic regression of correctness on the top-label confidence (Zadrozny & Elkan, 2002).

The top-label calibrators (``histogram``, ``isotonic``) only give a calibrated confidence c' of the predicted class;
`top_label_probs` turns it into a full distribution that keeps the prediction, set exactly (`ExitOutputs.with_probs`),
so samples given the same c' keep exactly the same confidence and their ties stay ties.

The paper behind eeopt argues that calibration is the wrong proxy for early-exit efficiency because calibrators
re-rank samples within an exit; `kendall_tau` measures exactly that.

Calibrated outputs are float64. Add a calibrator with `register_calibrator`; build one with `create_calibrator`.
"""

from __future__ import annotations

import abc
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

from eeopt.errors import ConfigError, EeoptError, ExitOutputsError
from eeopt.outputs import ExitOutputs
from eeopt.registry import Registry

# Top-label confidences are clipped to [1/C + TOP_LABEL_MARGIN, 1 - TOP_LABEL_CEIL_GAP] (see `top_label_probs`).
TOP_LABEL_MARGIN = 1e-6
TOP_LABEL_CEIL_GAP = 1e-9
LOG_TEMPERATURE_BOUNDS = (-5.0, 5.0)


# =================================================================================================== base class
class Calibrator(abc.ABC):
    """A post-hoc calibrator: ``fit(val)`` once, then ``apply(outputs)`` to any split of the same model.

    Subclasses set their parameters in `_fit` and `_set_state`, report them in `_get_state` (JSON-safe) and map
    outputs to calibrated logits [K, N, C] in `_logits` (or override `_calibrated`; see `TopLabelCalibrator`).
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._num_exits: int | None = None
        self._num_classes: int | None = None

    # ----------------------------------------------------------------------------------------------- public
    @property
    def is_fitted(self) -> bool:
        return self._num_exits is not None

    def fit(self, val: ExitOutputs) -> Calibrator:
        """Fit one set of parameters per exit on validation outputs; returns self (refitting replaces them)."""
        if not isinstance(val, ExitOutputs):
            raise TypeError(f"fit expects ExitOutputs, got {type(val).__name__}")
        self._fit(val)
        self._num_exits, self._num_classes = val.num_exits, val.num_classes
        return self

    def apply(self, outputs: ExitOutputs) -> ExitOutputs:
        """New `ExitOutputs` with calibrated float64 probabilities [K, N, C]; labels, costs and scores unchanged.

        Raises:
            EeoptError: the calibrator is not fitted.
            ExitOutputsError: ``outputs`` has a different number of exits or classes than the fitted data.
        """
        self._check_fitted()
        if outputs.num_exits != self._num_exits:
            raise ExitOutputsError(
                f"{outputs.source}: has {outputs.num_exits} exits but calibrator {self.name!r} was fitted on "
                f"{self._num_exits} exits"
            )
        if outputs.num_classes != self._num_classes:
            raise ExitOutputsError(
                f"{outputs.source}: has {outputs.num_classes} classes but calibrator {self.name!r} was fitted on "
                f"{self._num_classes} classes"
            )
        return self._calibrated(outputs)

    def state_dict(self) -> dict[str, Any]:
        """The fitted parameters as a JSON-safe dict (plain lists, floats and ints); `load_state_dict` reads it back.

        Raises:
            EeoptError: the calibrator is not fitted.
        """
        self._check_fitted()
        return {"name": self.name, "num_exits": self._num_exits, "num_classes": self._num_classes, **self._get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> Calibrator:
        """Restore parameters saved by `state_dict` (possibly after a JSON round trip); returns self.

        Raises:
            EeoptError: the state is for another calibrator, or a parameter is missing or has the wrong shape.
        """
        if not isinstance(state, dict):
            raise EeoptError(f"calibrator {self.name!r}: state must be a dict, got {type(state).__name__}")
        if state.get("name") != self.name:
            raise EeoptError(f"calibrator {self.name!r}: state is for calibrator {state.get('name')!r}")
        k, c = state.get("num_exits"), state.get("num_classes")
        if not (_is_int(k) and k >= 1 and _is_int(c) and c >= 2):
            raise EeoptError(f"calibrator {self.name!r}: state needs num_exits >= 1 and num_classes >= 2, got {k}, {c}")
        try:
            self._set_state(state, int(k), int(c))
        except (KeyError, TypeError, ValueError) as exc:
            raise EeoptError(f"calibrator {self.name!r}: invalid state ({type(exc).__name__}: {exc})") from exc
        self._num_exits, self._num_classes = int(k), int(c)
        return self

    def __repr__(self) -> str:
        fitted = f"fitted on K={self._num_exits}, C={self._num_classes}" if self.is_fitted else "not fitted"
        return f"{type(self).__name__}(name={self.name!r}, {fitted})"

    # ----------------------------------------------------------------------------------------------- subclass API
    @abc.abstractmethod
    def _fit(self, val: ExitOutputs) -> None: ...

    def _logits(self, outputs: ExitOutputs) -> np.ndarray:
        """Calibrated logits [K, N, C]; subclasses implement this or override `_calibrated`."""
        raise NotImplementedError(f"calibrator {self.name!r} must implement _logits or _calibrated")

    def _calibrated(self, outputs: ExitOutputs) -> ExitOutputs:
        """Checked outputs -> calibrated outputs; by default, through `_logits`."""
        logits = np.asarray(self._logits(outputs), dtype=np.float64)
        assert logits.shape == outputs.logits.shape, (logits.shape, outputs.logits.shape)
        return outputs.with_logits(logits)

    @abc.abstractmethod
    def _get_state(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _set_state(self, state: dict[str, Any], num_exits: int, num_classes: int) -> None:
        """Read parameters from ``state``; raise KeyError/TypeError/ValueError on anything malformed."""

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise EeoptError(f"calibrator {self.name!r} is not fitted: call fit(val) first")


# =================================================================================================== registry
CALIBRATORS: Registry[type[Calibrator]] = Registry("calibrator")
_CalibratorT = TypeVar("_CalibratorT", bound=type[Calibrator])


def register_calibrator(name: str) -> Callable[[_CalibratorT], _CalibratorT]:
    """Class decorator: register a `Calibrator` subclass under ``name`` (the name used in YAML, CLI and MLflow)."""

    def deco(cls: _CalibratorT) -> _CalibratorT:
        if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
            raise TypeError(f"register_calibrator({name!r}) expects a Calibrator subclass, got {cls!r}")
        CALIBRATORS.register(name)(cls)
        cls.name = name
        return cls

    return deco


def list_calibrators() -> list[str]:
    return CALIBRATORS.names()


def create_calibrator(name: str, **kwargs: Any) -> Calibrator:
    """A new, unfitted calibrator ``name`` built with ``kwargs`` (e.g. ``n_bins=10`` for ``histogram``).

    Raises:
        UnknownNameError: unknown name (the message lists the known ones).
        ConfigError: an option the calibrator does not take.
    """
    cls = CALIBRATORS.get(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        options = [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
        raise ConfigError(
            f"calibrator {name!r}: {exc} (options: {', '.join(options) if options else 'none'})"
        ) from None
    return cls(**kwargs)


# =================================================================================================== pure functions
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


# =================================================================================================== calibrators
class TopLabelCalibrator(Calibrator):
    """A calibrator of the top-label confidence only: subclasses implement `_confidence(outputs) -> [K, N]`.

    Predictions never change; the calibrated distribution is `top_label_probs`, set exactly.
    """

    @abc.abstractmethod
    def _confidence(self, outputs: ExitOutputs) -> np.ndarray: ...

    def _calibrated(self, outputs: ExitOutputs) -> ExitOutputs:
        conf = self._confidence(outputs)
        return outputs.with_probs(top_label_probs(outputs.predictions, conf, outputs.num_classes))


@register_calibrator("temperature")
class TemperatureScaling(Calibrator):
    """softmax(z / T_k) per exit, T_k > 0 minimising validation NLL (see `fit_temperature`)."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature: np.ndarray | None = None  # [K]

    def _fit(self, val: ExitOutputs) -> None:
        self.temperature = np.array([fit_temperature(val.logits[k], val.labels) for k in range(val.num_exits)])

    def _logits(self, outputs: ExitOutputs) -> np.ndarray:
        return outputs.logits.astype(np.float64) / self.temperature[:, None, None]

    def _get_state(self) -> dict[str, Any]:
        return {"temperature": self.temperature.tolist()}

    def _set_state(self, state: dict[str, Any], num_exits: int, num_classes: int) -> None:
        t = _param(state, "temperature", (num_exits,))
        if np.any(t <= 0):
            raise ValueError(f"temperatures must be > 0, got {t.tolist()}")
        self.temperature = t


@register_calibrator("vector")
class VectorScaling(Calibrator):
    """softmax(z * w_k + b_k) per exit with per-class w_k, b_k [C] (see `fit_vector_scaling` for the ``l2`` term)."""

    def __init__(self, l2: float = 1e-4) -> None:
        super().__init__()
        if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 >= 0):
            raise ConfigError(f"calibrator 'vector': l2 must be a finite number >= 0, got {l2!r}")
        self.l2 = float(l2)
        self.weight: np.ndarray | None = None  # [K, C]
        self.bias: np.ndarray | None = None  # [K, C]

    def _fit(self, val: ExitOutputs) -> None:
        fitted = [fit_vector_scaling(val.logits[k], val.labels, l2=self.l2) for k in range(val.num_exits)]
        self.weight = np.stack([w for w, _ in fitted])
        self.bias = np.stack([b for _, b in fitted])

    def _logits(self, outputs: ExitOutputs) -> np.ndarray:
        return outputs.logits.astype(np.float64) * self.weight[:, None, :] + self.bias[:, None, :]

    def _get_state(self) -> dict[str, Any]:
        return {"l2": self.l2, "weight": self.weight.tolist(), "bias": self.bias.tolist()}

    def _set_state(self, state: dict[str, Any], num_exits: int, num_classes: int) -> None:
        self.weight = _param(state, "weight", (num_exits, num_classes))
        self.bias = _param(state, "bias", (num_exits, num_classes))
        self.l2 = float(state.get("l2", self.l2))


@register_calibrator("histogram")
class HistogramBinning(TopLabelCalibrator):
    """Histogram binning of the top-label confidence (Zadrozny & Elkan, 2001), per exit.

    ``n_bins`` equal-width bins on [0, 1], right-closed ``(b/n, (b+1)/n]`` with a confidence of 0 in the first bin
    (as eeopt's ECE bins them). A sample's calibrated confidence is the validation accuracy of its bin; a bin with no
    validation sample gets its midpoint (the uninformed guess for a confidence in that bin). The result goes through
    `top_label_probs`, so predictions never change and confidences are clipped to [1/C + 1e-6, 1 - 1e-9].
    """

    def __init__(self, n_bins: int = 15) -> None:
        super().__init__()
        if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
            raise ConfigError(f"calibrator 'histogram': n_bins must be an integer >= 1, got {n_bins!r}")
        self.n_bins = int(n_bins)
        self.bin_confidence: np.ndarray | None = None  # [K, n_bins]

    def _fit(self, val: ExitOutputs) -> None:
        idx = _bin_index(val.confidence, self.n_bins)  # [K, N]
        k = val.num_exits
        flat = (idx + self.n_bins * np.arange(k)[:, None]).ravel()
        count = np.bincount(flat, minlength=k * self.n_bins).reshape(k, self.n_bins)
        hits = np.bincount(flat, weights=val.correct.ravel(), minlength=k * self.n_bins).reshape(k, self.n_bins)
        midpoint = (np.arange(self.n_bins) + 0.5) / self.n_bins
        with np.errstate(invalid="ignore", divide="ignore"):
            self.bin_confidence = np.where(count > 0, hits / count, midpoint[None, :])

    def _confidence(self, outputs: ExitOutputs) -> np.ndarray:
        idx = _bin_index(outputs.confidence, self.n_bins)
        return np.take_along_axis(self.bin_confidence, idx, axis=1)

    def _get_state(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "bin_confidence": self.bin_confidence.tolist()}

    def _set_state(self, state: dict[str, Any], num_exits: int, num_classes: int) -> None:
        n_bins = state["n_bins"]
        if not (_is_int(n_bins) and n_bins >= 1):
            raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
        self.bin_confidence = _param(state, "bin_confidence", (num_exits, int(n_bins)))
        self.n_bins = int(n_bins)


@register_calibrator("isotonic")
class IsotonicCalibration(TopLabelCalibrator):
    """Isotonic regression of correctness on the top-label confidence (Zadrozny & Elkan, 2002), per exit.

    scikit-learn's ``IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)`` is fitted per exit; its
    thresholds are kept and applied with linear interpolation clipped at the ends, which is what its ``predict``
    does (so no scikit-learn object is stored and the state is JSON-safe). The result goes through
    `top_label_probs`: predictions never change and confidences are clipped to [1/C + 1e-6, 1 - 1e-9].
    """

    def __init__(self) -> None:
        super().__init__()
        self.x_thresholds: list[np.ndarray] | None = None  # K arrays, lengths may differ
        self.y_thresholds: list[np.ndarray] | None = None

    def _fit(self, val: ExitOutputs) -> None:
        from sklearn.isotonic import IsotonicRegression  # imported here: scikit-learn takes ~2 s to import

        xs, ys = [], []
        for k in range(val.num_exits):
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            iso.fit(val.confidence[k], val.correct[k].astype(np.float64))
            xs.append(np.asarray(iso.X_thresholds_, dtype=np.float64))
            ys.append(np.asarray(iso.y_thresholds_, dtype=np.float64))
        self.x_thresholds, self.y_thresholds = xs, ys

    def _confidence(self, outputs: ExitOutputs) -> np.ndarray:
        pairs = zip(self.x_thresholds, self.y_thresholds)
        return np.stack([np.interp(outputs.confidence[k], x, y) for k, (x, y) in enumerate(pairs)])

    def _get_state(self) -> dict[str, Any]:
        return {
            "x_thresholds": [x.tolist() for x in self.x_thresholds],
            "y_thresholds": [y.tolist() for y in self.y_thresholds],
        }

    def _set_state(self, state: dict[str, Any], num_exits: int, num_classes: int) -> None:
        xs, ys = state["x_thresholds"], state["y_thresholds"]
        if not (isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys) == num_exits):
            raise ValueError(f"x_thresholds and y_thresholds must be lists of {num_exits} lists")
        x_arr, y_arr = [], []
        for k, (x, y) in enumerate(zip(xs, ys)):
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            if x.ndim != 1 or x.shape != y.shape or x.size == 0 or not np.all(np.isfinite(x) & np.isfinite(y)):
                raise ValueError(f"exit{k + 1}: thresholds must be equal-length non-empty finite lists")
            if np.any(np.diff(x) < 0):
                raise ValueError(f"exit{k + 1}: x_thresholds must be non-decreasing")
            x_arr.append(x)
            y_arr.append(y)
        self.x_thresholds, self.y_thresholds = x_arr, y_arr


# =================================================================================================== helpers
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


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Right-closed equal-width bin of each confidence: i with i/n < c <= (i+1)/n; c = 0 goes to bin 0."""
    edges = np.arange(n_bins + 1) / n_bins  # b / n correctly rounded (linspace can be an ulp off)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def _param(state: dict[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(state[key], dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{key} must have shape {list(shape)}, got {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{key} contains NaN or inf")
    return arr


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
