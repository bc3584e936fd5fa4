"""Where analysis points come from: a trial's flat metrics (as MLflow holds them), or model folders on disk.

A trial assessed under several calibrators (`calibration.compare`) logs `{split}/calib/{name}/{key}` for each; each
calibrator becomes one `Point` with the plain keys (`mean/ece`, `acc_cost_auc`, `score/learned/mean/auroc` ...).
`exits analyze` assesses folders holding `val.npz` and `test.npz` the same way, so the same models give the same
points, and the same numbers, whether they come from a study or from disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from eeopt.analysis.points import Point
from eeopt.errors import AnalysisError
from eeopt.names import of_variant, on_split, variant_names


def points_from_metrics(trial: int | str, run_id: str | None, metrics: dict[str, float], split: str,
                        primary: str = "none") -> list[Point]:
    """The points of one trial on `split`: one per calibrator found under `{split}/calib/{name}/`.

    A trial without compared calibrators gives one point for its `primary` (configured) calibrator, from the plain
    `{split}/...` keys. The score variant of a calibrator point (`score/learned/...`) is taken from the trial's
    plain keys when that calibrator is the primary one (the learned score is assessed under it).
    """
    own = on_split(split, metrics)
    names = variant_names("calib", own)
    if not names:
        plain = {k: v for k, v in own.items() if not k.startswith("calib/")}
        return [Point(trial, primary, run_id, plain)] if plain else []
    points = []
    for name in names:
        values = of_variant("calib", name, own)
        if name == primary:
            values.update({k: v for k, v in own.items() if k.startswith("score/")})
        points.append(Point(trial, name, run_id, values))
    return points


def assess_folders(
    folders: Sequence[str | Path],
    *,
    compare: Sequence[str] | None = None,
    score: str = "msp",
    trials: int = 300,
    sampler: str = "nsga2",
    seed: int = 0,
    split: str = "test",
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Point], dict[str, dict]]:
    """Points of models trained elsewhere: each folder holds `val.npz` and `test.npz` of one model.

    Every calibrator in `compare` (default: none and every registered one) is fitted on val, as a study trial with
    `calibration.compare` does; thresholds are searched with the same `policy` settings. Returns the points and, per
    folder, the split's accuracy-vs-cost frontiers by calibrator (for the report's before/after plot).
    `progress(line)` hears about each folder as it starts.

    Raises:
        AnalysisError: a folder without val.npz or test.npz, or two folders of one name.
        ExitOutputsError: unreadable or mismatched exit outputs.
    """
    from eeopt.assess import assess_model
    from eeopt.core.calibration import list_calibrators
    from eeopt.core.outputs import ExitOutputs

    compare = list(compare) if compare else ["none", *list_calibrators()]
    points, curves = [], {}
    folders = [Path(f) for f in folders]
    for i, folder in enumerate(folders, start=1):
        if progress is not None:
            progress(f"[{i}/{len(folders)}] {folder}: {len(compare)} calibrators, a threshold search each")
        for name in ("val.npz", "test.npz"):
            if not (folder / name).is_file():
                raise AnalysisError(f"{folder}: no {name} (exits analyze needs one folder per model with val.npz "
                                    "and test.npz, as `eeopt train` writes them)")
        if folder.name in curves:
            raise AnalysisError(f"{folder}: two folders are named {folder.name!r}; models are told apart by name")
        val, test = ExitOutputs.load(folder / "val.npz"), ExitOutputs.load(folder / "test.npz")
        assessed = assess_model(val, test, calibration=compare[0], compare=compare, score=score, trials=trials,
                                sampler=sampler, seed=seed)
        points += points_from_metrics(folder.name, None, assessed.metrics, split, primary=compare[0])
        last = float(test.costs[-1])
        reports = {name: v.test_report if split == "test" else v.val_report for name, v in assessed.calibrators.items()}
        curves[folder.name] = {name: (np.asarray(r.frontier.cost) / last, np.asarray(r.frontier.accuracy))
                               for name, r in reports.items()}
    return points, curves
