"""Within-model view: each model before and after post-hoc calibration, so training differences drop out.

For each trial and each calibrator with a "none" point of the same trial: the change (calibrated minus none)
in mean ECE, mean AUROC, mean EEFP and each target, and the calibrated point's `mean/kendall_tau` (how much of
the exits' sample ranking the calibrator kept). The summary counts, per calibrator and over all pairs, the
models where calibration cut ECE and, among those, where each target rose, stayed within a tolerance, or fell.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eeopt.analysis.points import UNCALIBRATED, Point, as_float, json_float
from eeopt.names import mean_key

ECE = mean_key("ece")
#: Exit metrics whose change is reported beside the targets.
CHANGED_PROXIES = (ECE, mean_key("auroc"), mean_key("eefp"))
RANK_KEPT = mean_key("kendall_tau")
#: |change| at most this is "stayed".
TOLERANCE = 0.001


@dataclasses.dataclass(frozen=True)
class WithinModelRow:
    """One model under one calibrator against the same model uncalibrated.

    `change` maps each of `CHANGED_PROXIES` and each target to calibrated minus none (raw scale, NaN where
    either side is undefined); `kendall_tau` is the calibrated point's `mean/kendall_tau`.
    """

    trial: int | str
    calibrator: str
    run_id: str | None
    change: dict[str, float]
    kendall_tau: float

    def to_dict(self) -> dict:
        return {"trial": self.trial, "calibrator": self.calibrator, "run_id": self.run_id,
                "change": {key: json_float(value) for key, value in self.change.items()},
                "kendall_tau": json_float(self.kendall_tau)}


def within_model_rows(points: list[Point] | tuple[Point, ...],
                      targets: tuple[str, ...]) -> list[WithinModelRow]:
    """One row per calibrated point whose trial also has a "none" point, in the order of the points."""
    uncalibrated = {p.trial: p for p in points if p.calibrator == UNCALIBRATED}
    rows = []
    for point in points:
        base = uncalibrated.get(point.trial)
        if point.calibrator == UNCALIBRATED or base is None:
            continue
        change = {key: as_float(point.metrics.get(key)) - as_float(base.metrics.get(key))
                  for key in (*CHANGED_PROXIES, *targets)}
        tau = as_float(point.metrics.get(RANK_KEPT))
        rows.append(WithinModelRow(point.trial, point.calibrator, point.run_id, change, tau))
    return rows


def _counts(rows: list[WithinModelRow], targets: tuple[str, ...], tolerance: float) -> dict:
    ece = np.array([row.change[ECE] for row in rows], dtype=float)
    cut = ece < 0
    taus = np.array([row.kendall_tau for row in rows], dtype=float)
    summary = {
        "pairs": len(rows),
        "ece_cut": int(cut.sum()),
        "ece_undefined": int(np.isnan(ece).sum()),
        "median_kendall_tau": _median(taus),
        "targets": {},
    }
    for target in targets:
        change = np.array([row.change[target] for row in rows], dtype=float)[cut]
        defined = change[np.isfinite(change)]
        summary["targets"][target] = {
            "rose": int((defined > tolerance).sum()),
            "stayed": int((np.abs(defined) <= tolerance).sum()),
            "fell": int((defined < -tolerance).sum()),
            "undefined": int(change.size - defined.size),
            "median_change": _median(defined),
        }
    return summary


def _median(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def within_model_summary(rows: list[WithinModelRow], targets: tuple[str, ...],
                         tolerance: float = TOLERANCE) -> dict:
    """Counts per calibrator and over all (model, calibrator) pairs, JSON-ready.

    A pair "cut ECE" when its `mean/ece` change is below 0. Among those pairs each target "rose" (change above
    `tolerance`), "stayed" (|change| <= tolerance), "fell" (below -tolerance) or is "undefined" (NaN), on the
    raw scale (a cost target that rose got worse); `median_change` is over the defined changes of the
    ECE-cutting pairs, `median_kendall_tau` over all pairs.
    """
    calibrators = list(dict.fromkeys(row.calibrator for row in rows))
    return {
        "tolerance": tolerance,
        "ece_cut_rule": f"{ECE} calibrated minus none < 0",
        "by_calibrator": {name: _counts([r for r in rows if r.calibrator == name], targets, tolerance)
                          for name in calibrators},
        "overall": _counts(rows, targets, tolerance),
    }
