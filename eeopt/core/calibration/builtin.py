"""The built-in calibrators: temperature and vector scaling, histogram binning, isotonic regression."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eeopt.core.calibration.base import Calibrator, TopLabelCalibrator, is_int, param_array, register_calibrator
from eeopt.core.calibration.functional import fit_temperature, fit_vector_scaling
from eeopt.errors import ConfigError
from eeopt.core.metrics.calibration import bin_index
from eeopt.core.outputs import ExitOutputs


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
        t = param_array(state, "temperature", (num_exits,))
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
        self.weight = param_array(state, "weight", (num_exits, num_classes))
        self.bias = param_array(state, "bias", (num_exits, num_classes))
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
        idx = bin_index(val.confidence, self.n_bins)  # [K, N]
        k = val.num_exits
        flat = (idx + self.n_bins * np.arange(k)[:, None]).ravel()
        count = np.bincount(flat, minlength=k * self.n_bins).reshape(k, self.n_bins)
        hits = np.bincount(flat, weights=val.correct.ravel(), minlength=k * self.n_bins).reshape(k, self.n_bins)
        midpoint = (np.arange(self.n_bins) + 0.5) / self.n_bins
        with np.errstate(invalid="ignore", divide="ignore"):
            self.bin_confidence = np.where(count > 0, hits / count, midpoint[None, :])

    def _confidence(self, outputs: ExitOutputs) -> np.ndarray:
        idx = bin_index(outputs.confidence, self.n_bins)
        return np.take_along_axis(self.bin_confidence, idx, axis=1)

    def _get_state(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "bin_confidence": self.bin_confidence.tolist()}

    def _set_state(self, state: dict[str, Any], num_exits: int, num_classes: int) -> None:
        n_bins = state["n_bins"]
        if not (is_int(n_bins) and n_bins >= 1):
            raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
        self.bin_confidence = param_array(state, "bin_confidence", (num_exits, int(n_bins)))
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
