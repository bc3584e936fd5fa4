"""What every eeopt figure shares: one style, a bare matplotlib `Figure` (no pyplot state), titles that name the
split, the exit score and the calibration, and a grid shape that fits the number of exits."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.spines.top": False, "axes.spines.right": False}
#: Colours: the per-exit threshold search, the global threshold, single exits, the last exit alone.
SEARCH, SWEEP, EXIT, LAST = "#1b6fb5", "#d95f02", "#7f7f7f", "#111111"


@contextlib.contextmanager
def figure(path: Path, size: tuple[float, float], dpi: int = 110, style: dict | None = None) -> Iterator:
    """A styled bare `Figure` (`STYLE`, updated by `style`); on exit, the PNG written. The constrained layout
    already fits everything into the figure; a tight bounding box on top would draw each figure twice (a fifth of
    a study trial's plotting time, for a few pixels of margin).

    A bare `matplotlib.figure.Figure` renders with Agg without pyplot, so the caller's backend and pyplot's figure
    list are left alone (no figure to close, nothing leaks between plots).
    """
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({**STYLE, **(style or {})}):
        fig = Figure(figsize=size, layout="constrained")
        yield fig
        fig.savefig(path, dpi=dpi)


def grid_shape(panels: int) -> tuple[int, int]:
    """(rows, cols) for one panel per exit: one row up to 5, two rows up to 10, then rows of 5."""
    if panels <= 5:
        return 1, max(panels, 1)
    if panels <= 10:
        return 2, math.ceil(panels / 2)
    return math.ceil(panels / 5), 5


def setting(split: str | None, score: str | None = None, calibration: str | None = None,
            fit: str | None = None) -> str:
    """'test split · score msp · calibration temperature (fitted on val)' (the parts given)."""
    parts = [f"{split} split"] if split else []
    if score:
        parts.append(f"score {score}")
    if calibration:
        fitted = f" (fitted on {fit})" if fit and calibration != "none" else ""
        parts.append(f"calibration {calibration}{fitted}")
    return " · ".join(parts)
