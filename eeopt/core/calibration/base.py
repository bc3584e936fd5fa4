"""The `Calibrator` contract, the top-label variant, and the calibrator registry."""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np

from eeopt.core.calibration.functional import top_label_probs
from eeopt.errors import ConfigError, EeoptError, ExitOutputsError
from eeopt.core.outputs import ExitOutputs
from eeopt.registry import Registry


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
        if not (is_int(k) and k >= 1 and is_int(c) and c >= 2):
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


class TopLabelCalibrator(Calibrator):
    """A calibrator of the top-label confidence only: subclasses implement `_confidence(outputs) -> [K, N]`.

    Predictions never change; the calibrated distribution is `top_label_probs`, set exactly.
    """

    @abc.abstractmethod
    def _confidence(self, outputs: ExitOutputs) -> np.ndarray: ...

    def _calibrated(self, outputs: ExitOutputs) -> ExitOutputs:
        conf = self._confidence(outputs)
        return outputs.with_probs(top_label_probs(outputs.predictions, conf, outputs.num_classes))


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


def param_array(state: dict[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(state[key], dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{key} must have shape {list(shape)}, got {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{key} contains NaN or inf")
    return arr


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
