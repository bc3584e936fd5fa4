"""The analysis input: one `Point` per (model, calibrator), and `PointTable`, the same points as columns.

A point's metrics are flat keys of `eeopt.names` without the split prefix (`mean/ece`, `exit2/auroc`,
`acc_cost_auc`, `sweep/acc_cost_auc`, `score/learned/mean/auroc`). NaN (or None, as JSON brings it back)
means undefined. Keys outside the scheme are carried along but never analysed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from eeopt.errors import AnalysisError
from eeopt.files import jsonable
from eeopt.names import EXIT_METRIC_NAMES, Key, exit_key, parse_key

#: Families of exit metrics that are proxies for efficiency.
PROXY_GROUPS = ("calibration", "failure")
#: What a Point's calibrator is called when no post-hoc calibration was applied.
UNCALIBRATED = "none"


@dataclasses.dataclass(frozen=True)
class Point:
    """One (model, calibrator) pair: a trained model evaluated under one post-hoc calibrator on one split."""

    trial: int | str
    calibrator: str
    run_id: str | None
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN metrics become None."""
        return {"trial": self.trial, "calibrator": self.calibrator, "run_id": self.run_id,
                "metrics": {key: json_float(value) for key, value in self.metrics.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Point:
        """The inverse of `to_dict` (None metrics become NaN)."""
        return cls(data["trial"], data["calibrator"], data.get("run_id"),
                   {key: as_float(value) for key, value in data["metrics"].items()})


def json_float(value: float | None) -> float | None:
    """`value` as a float, None where it is NaN, infinite or None (JSON has no NaN; `eeopt.files.jsonable`)."""
    return None if value is None else jsonable(float(value))


def as_float(value: Any) -> float:
    """A metric value as a float; None (JSON's NaN) becomes NaN."""
    return math.nan if value is None else float(value)


def _parsed(key: str) -> Key | None:
    """The parsed key, None for keys outside the scheme. A split prefix is a caller error."""
    try:
        parsed = parse_key(key)
    except ValueError:
        return None
    if parsed.split is not None:
        raise AnalysisError(f"metric key {key!r} carries a split prefix: give the points of one split, "
                            f"with keys such as {key.split('/', 1)[1]!r}")
    return parsed


def _key_order(parsed: Key) -> tuple:
    """Mean keys before per-exit keys, exits in order, metrics in the scheme's order, variants last."""
    return (parsed.variant or ("",), parsed.scope != "mean", parsed.exit or 0,
            EXIT_METRIC_NAMES.index(parsed.metric.name))


class PointTable:
    """The points as columns: `column(key)` is a float array [P] over the points, NaN where a point lacks it.

    Trials are numbered by first appearance in `trial_index` [P]. Raises `AnalysisError` for no points, a
    repeated (trial, calibrator) pair, or a key with a split prefix.
    """

    def __init__(self, points: list[Point] | tuple[Point, ...]):
        self.points = tuple(points)
        if not self.points:
            raise AnalysisError("no points to analyse: give at least one Point per (trial, calibrator)")
        seen: set[tuple[int | str, str]] = set()
        trials: dict[int | str, int] = {}
        for point in self.points:
            if not isinstance(point, Point):
                raise AnalysisError(f"expected eeopt.analysis.Point, got {type(point).__name__}")
            if (point.trial, point.calibrator) in seen:
                raise AnalysisError(f"trial {point.trial!r} has two points for calibrator "
                                    f"{point.calibrator!r}: give one point per (trial, calibrator) and split")
            seen.add((point.trial, point.calibrator))
            trials.setdefault(point.trial, len(trials))
        self.trials = tuple(trials)
        self.trial_index = np.array([trials[p.trial] for p in self.points], dtype=np.int64)
        keys = dict.fromkeys(key for p in self.points for key in p.metrics)
        #: every key of the scheme present in some point, parsed
        self.parsed = {key: parsed for key in keys if (parsed := _parsed(key))}
        self._columns: dict[str, np.ndarray] = {}

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def n_trials(self) -> int:
        return len(self.trials)

    def column(self, key: str) -> np.ndarray:
        """Raw values of `key` [P], NaN where undefined or absent."""
        if key not in self._columns:
            self._columns[key] = np.array([as_float(p.metrics.get(key)) for p in self.points], dtype=float)
        return self._columns[key]

    def oriented(self, key: str) -> np.ndarray:
        """Values of `key` [P] in higher-is-better form: lower-is-better metrics negated."""
        return self.column(key) if parse_key(key).metric.higher_is_better else -self.column(key)

    def proxy_keys(self) -> list[str]:
        """Every calibration or failure-prediction key present (mean, per exit, variants), in a stable order.
        Under another exit score (`score/learned/...`) only failure prediction: calibration is measured on the
        top-label probability whatever the score, so those keys repeat the point's own calibration keys."""
        keys = [key for key, parsed in self.parsed.items() if parsed.metric.group in PROXY_GROUPS
                and not (parsed.variant and parsed.variant[0] == "score" and parsed.metric.group == "calibration")]
        return sorted(keys, key=lambda key: _key_order(self.parsed[key]))

    def last_exit_accuracy(self) -> np.ndarray:
        """`exit{K}/accuracy` of each point [P], K the largest exit index among the point's own keys."""
        values = []
        for point in self.points:
            exits = [parsed.exit for key in point.metrics if (parsed := self.parsed.get(key)) and parsed.exit]
            last = exit_key(max(exits), "accuracy") if exits else None
            values.append(as_float(point.metrics.get(last)))
        return np.array(values, dtype=float)
