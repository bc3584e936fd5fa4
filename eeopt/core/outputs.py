"""`ExitOutputs`: what every exit of a multi-exit model produced on one split. The seam of eeopt.

Everything downstream of training (metrics, calibrators, policies, threshold search, analysis) works on these arrays,
so any model's exit logits can be brought in as an `.npz` file with these arrays:

- ``logits``     float [K, N, C]  exit k's logits for sample n, exits in forward order (the last is the final head);
- ``labels``     int   [N]        true class in [0, C);
- ``costs``      float [K]        cumulative cost of reaching exit k's prediction for one sample (FLOPs by default);
- ``scores``     float [K, N]     optional learned confidence (higher = more likely correct, exit now);
- ``latency_ms`` float [K]        optional measured cumulative latency per exit.

Exits are indexed from 0 in arrays and named ``exit1``..``exitK`` wherever a user reads them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zipfile
from pathlib import Path

import numpy as np

from eeopt.errors import ExitOutputsError

_ARRAYS = ("logits", "labels", "costs", "scores", "latency_ms")


#: Bits of fixed-point precision `row_sum` keeps below each row's largest entry (with headroom for C entries).
_ROW_SUM_BITS = 52


def row_sum(values: np.ndarray) -> np.ndarray:
    """Sum over the last axis that does not depend on the order of the entries, for rows of one sign.

    Floating-point addition is not associative, so a plain sum of a permuted row can differ in the last bit. Here
    each entry is cut to a fixed-point integer (a multiple of 2^-52 of a power of two just above its row's largest
    magnitude, fewer bits when C is large) and the integers are added, which is exact in any order. Rows holding the
    same values therefore give the same float, so scores and probabilities that are equal in exact arithmetic stay
    equal, and ties stay ties. The cut costs less than C * 2^-52 of the row's largest entry, about 1e-15 of the sum
    for same-sign rows.
    """
    x = np.asarray(values, dtype=np.float64)
    c = x.shape[-1]
    if c == 0:
        return np.zeros(x.shape[:-1])
    bits = min(_ROW_SUM_BITS, 62 - int(np.ceil(np.log2(c))))
    exponent = np.frexp(np.abs(x).max(axis=-1, keepdims=True))[1]  # row max < 2^exponent
    scale = np.exp2(bits - exponent)  # a power of two: x * scale is exact
    fixed = (x * scale).astype(np.int64)  # truncation, the same for equal entries wherever they stand
    return fixed.sum(axis=-1) / scale[..., 0]


def log_softmax_parts(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [..., C], log-normaliser [...]) of `logits`, in float64, numerically stable.

    probs = exp(z - m) / S and log-normaliser = m + log S (so log p_c = z_c - log-normaliser, the log-softmax),
    where m is the row maximum and S the order-free `row_sum` of exp(z - m): a row and any permutation of it give
    the same probabilities, permuted.
    """
    e = np.array(logits, dtype=np.float64)  # a copy, worked on in place
    m = e.max(axis=-1, keepdims=True)
    np.subtract(e, m, out=e)
    np.exp(e, out=e)
    total = row_sum(e)
    e /= total[..., None]
    return e, m[..., 0] + np.log(total)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable, order-free softmax over the last axis, in float64 (see `log_softmax_parts`)."""
    return log_softmax_parts(logits)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class ExitOutputs:
    """Exit logits, labels and per-exit costs of one split; validated on construction.

    Raises:
        ExitOutputsError: an array has the wrong shape or dtype, holds NaN/inf, or labels are out of range.
    """

    logits: np.ndarray
    labels: np.ndarray
    costs: np.ndarray
    scores: np.ndarray | None = None
    latency_ms: np.ndarray | None = None
    source: str = dataclasses.field(default="exit outputs", compare=False)

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        src = self.source
        logits = np.asarray(self.logits)
        if logits.ndim != 3:
            raise ExitOutputsError(f"{src}: logits must have shape [K, N, C], got {logits.ndim} dimensions {logits.shape}")
        if not np.issubdtype(logits.dtype, np.floating):
            raise ExitOutputsError(f"{src}: logits must be floating point, got {logits.dtype}")
        k, n, c = logits.shape
        if k < 1 or n < 1 or c < 2:
            raise ExitOutputsError(f"{src}: logits shape {logits.shape} needs K >= 1 exits, N >= 1 samples, C >= 2 classes")
        _check_finite(src, "logits", logits)
        set_("logits", logits)

        labels = np.asarray(self.labels)
        if labels.shape != (n,):
            raise ExitOutputsError(f"{src}: labels must have shape [N] = ({n},), got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            if np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
                labels = labels.astype(np.int64)
            else:
                raise ExitOutputsError(f"{src}: labels must be integers, got {labels.dtype}")
        bad = np.flatnonzero((labels < 0) | (labels >= c))
        if bad.size:
            raise ExitOutputsError(
                f"{src}: labels out of range [0, {c}) for {c} classes: label {labels[bad[0]]} at sample {bad[0]}"
                f" ({bad.size} such samples)"
            )
        set_("labels", labels.astype(np.int64, copy=False))

        costs = _float_vector(src, "costs", self.costs, k)
        if np.any(costs < 0):
            raise ExitOutputsError(f"{src}: costs must be non-negative, got {costs.tolist()}")
        if np.any(np.diff(costs) < 0):
            raise ExitOutputsError(f"{src}: costs must be cumulative (non-decreasing with the exit), got {costs.tolist()}")
        if not costs[-1] > 0:
            raise ExitOutputsError(f"{src}: costs: the last exit's cost must be > 0 (budgets are shares of it), "
                                   f"got {costs.tolist()}")
        set_("costs", costs)

        if self.scores is not None:
            scores = np.asarray(self.scores)
            if scores.shape != (k, n):
                raise ExitOutputsError(f"{src}: scores must have shape [K, N] = ({k}, {n}), got {scores.shape}")
            if not np.issubdtype(scores.dtype, np.floating):
                raise ExitOutputsError(f"{src}: scores must be floating point, got {scores.dtype}")
            _check_finite(src, "scores", scores)
            set_("scores", scores)
        if self.latency_ms is not None:
            latency = _float_vector(src, "latency_ms", self.latency_ms, k)
            if np.any(latency < 0):
                raise ExitOutputsError(f"{src}: latency_ms must be non-negative, got {latency.tolist()}")
            set_("latency_ms", latency)

    @classmethod
    def unchecked(cls, logits: np.ndarray, labels: np.ndarray, costs: np.ndarray, scores: np.ndarray | None = None,
                  source: str = "exit outputs", first_exit: int = 1) -> ExitOutputs:
        """Outputs from arrays eeopt shaped itself (a network's batch at one exit): only the finite check of the
        logits and scores, none of the shape, dtype, label and cost checks. The early-exit predictor decides each
        batch at each exit through this: at batch 1 the full validation costs as much as the decision.
        `first_exit` numbers the exits in error messages (a one-exit view of the network's exit 3 says exit 3)."""
        _check_finite(source, "logits", logits, first_exit)
        if scores is not None:
            _check_finite(source, "scores", scores, first_exit)
        out = object.__new__(cls)
        for name, value in (("logits", logits), ("labels", labels), ("costs", costs), ("scores", scores),
                            ("latency_ms", None), ("source", source)):
            object.__setattr__(out, name, value)
        return out

    # ----------------------------------------------------------------------------------------------- shape
    @property
    def num_exits(self) -> int:
        return self.logits.shape[0]

    @property
    def num_samples(self) -> int:
        return self.logits.shape[1]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[2]

    # ----------------------------------------------------------------------------------------------- derived, cached
    @functools.cached_property
    def _normalised(self) -> tuple[np.ndarray, np.ndarray]:
        return log_softmax_parts(self.logits)

    @functools.cached_property
    def probs(self) -> np.ndarray:
        """Softmax probabilities [K, N, C], float64, computed once (order-free: see `log_softmax_parts`)."""
        return self._normalised[0]

    @functools.cached_property
    def log_normalizer(self) -> np.ndarray:
        """logsumexp of each exit's logits [K, N]: log p_c = logits_c - log_normalizer, exactly."""
        return self._normalised[1]

    @functools.cached_property
    def predictions(self) -> np.ndarray:
        """Predicted class per exit [K, N] (argmax of the logits)."""
        return self.logits.argmax(axis=-1)

    @functools.cached_property
    def correct(self) -> np.ndarray:
        """Whether exit k predicts sample n correctly, bool [K, N]."""
        return self.predictions == self.labels[None, :]

    @functools.cached_property
    def confidence(self) -> np.ndarray:
        """Top-label (max softmax) probability [K, N]."""
        return self.probs.max(axis=-1)

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy of each exit [K]."""
        return self.correct.mean(axis=1)

    # ----------------------------------------------------------------------------------------------- views
    def select_exits(self, exits) -> ExitOutputs:
        """Keep only the given exits (0-based indices, in increasing order); costs keep their original values."""
        idx = np.asarray(exits, dtype=np.int64).reshape(-1)
        if idx.size == 0 or np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= self.num_exits:
            raise ExitOutputsError(f"{self.source}: exits must be increasing indices in [0, {self.num_exits}), got {idx.tolist()}")
        return dataclasses.replace(
            self,
            logits=self.logits[idx],
            costs=self.costs[idx],
            scores=None if self.scores is None else self.scores[idx],
            latency_ms=None if self.latency_ms is None else self.latency_ms[idx],
        )

    def subset(self, samples) -> ExitOutputs:
        """Keep only the given samples (indices or a boolean mask over N)."""
        idx = np.asarray(samples)
        return dataclasses.replace(
            self,
            logits=self.logits[:, idx],
            labels=self.labels[idx],
            scores=None if self.scores is None else self.scores[:, idx],
        )

    def with_logits(self, logits: np.ndarray) -> ExitOutputs:
        """Same labels, costs and scores with new logits (e.g. after calibration)."""
        return dataclasses.replace(self, logits=logits)

    def with_probs(self, probs: np.ndarray) -> ExitOutputs:
        """Same labels, costs and scores with these exact probabilities [K, N, C] (rows summing to 1, all > 0).

        The logits become log(probs); `probs` is kept as given rather than recomputed by a softmax of those logits,
        which would move equal probabilities apart by an ulp. Used by calibrators that set probabilities directly.
        """
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != self.logits.shape:
            raise ExitOutputsError(f"{self.source}: probs must have shape {self.logits.shape}, got {probs.shape}")
        if not np.all(probs > 0):
            raise ExitOutputsError(f"{self.source}: probs must be > 0 to have finite logits")
        new = dataclasses.replace(self, logits=np.log(probs))
        new.__dict__["_normalised"] = (probs, np.zeros(probs.shape[:-1]))  # the cached_property's slot
        return new

    # ----------------------------------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write an uncompressed `.npz` with the arrays above; returns the path written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"logits": self.logits, "labels": self.labels, "costs": self.costs}
        if self.scores is not None:
            arrays["scores"] = self.scores
        if self.latency_ms is not None:
            arrays["latency_ms"] = self.latency_ms
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExitOutputs:
        """Read and validate an exit-outputs `.npz` file.

        Raises:
            ExitOutputsError: the file is missing, is not an `.npz`, lacks a required array, has an unknown array,
                or fails validation. The message starts with the file name.
        """
        path = Path(path)
        if not path.is_file():
            raise ExitOutputsError(f"{path}: no such file")
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy array (or pickle) under another name
                raise ExitOutputsError(f"{path}: not an .npz archive of named arrays (a single {type(loaded).__name__}; "
                                       "save with numpy.savez(path, logits=..., labels=..., costs=...))")
            with loaded as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise ExitOutputsError(f"{path}: not a readable NumPy .npz file ({exc})") from exc
        unknown = sorted(set(arrays) - set(_ARRAYS))
        if unknown:
            raise ExitOutputsError(f"{path}: unknown array {unknown[0]!r} (expected {', '.join(_ARRAYS)})")
        for name in ("logits", "labels", "costs"):
            if name not in arrays:
                raise ExitOutputsError(f"{path}: missing array {name!r}")
        return cls(**arrays, source=str(path))

    def __repr__(self) -> str:
        k, n, c = self.logits.shape
        extra = " +scores" if self.scores is not None else ""
        return f"ExitOutputs(K={k}, N={n}, C={c}{extra}, source={self.source!r})"


def check_compatible(fit: ExitOutputs, evaluate: ExitOutputs) -> None:
    """Raise `ExitOutputsError` unless two splits come from the same model (same exits, classes and costs)."""
    if fit.num_exits != evaluate.num_exits:
        raise ExitOutputsError(
            f"{evaluate.source}: has {evaluate.num_exits} exits but {fit.source} has {fit.num_exits}"
        )
    if fit.num_classes != evaluate.num_classes:
        raise ExitOutputsError(
            f"{evaluate.source}: has {evaluate.num_classes} classes but {fit.source} has {fit.num_classes}"
        )
    if not np.allclose(fit.costs, evaluate.costs, rtol=1e-6, atol=0):
        raise ExitOutputsError(
            f"{evaluate.source}: costs {evaluate.costs.tolist()} differ from {fit.source}'s {fit.costs.tolist()}"
        )
    if (fit.scores is None) != (evaluate.scores is None):
        has, lacks = (fit, evaluate) if fit.scores is not None else (evaluate, fit)
        raise ExitOutputsError(f"{lacks.source}: has no 'scores' array but {has.source} has one")


def _float_vector(src: str, name: str, value, k: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (k,):
        raise ExitOutputsError(f"{src}: {name} must have shape [K] = ({k},), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ExitOutputsError(f"{src}: {name} must be numeric, got {arr.dtype}")
    arr = arr.astype(np.float64)
    _check_finite(src, name, arr)
    return arr


def _check_finite(src: str, name: str, arr: np.ndarray, first_exit: int = 1) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        where = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(arr[tuple(where)]) else "inf"
        exit_no = where[0] + first_exit
        pos = f"exit {exit_no}, sample {where[1]}" if arr.ndim >= 2 else f"exit {exit_no}"
        raise ExitOutputsError(f"{src}: {name} contains {kind} ({pos}; {int((~finite).sum())} non-finite values)")
