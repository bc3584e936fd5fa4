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
def figure(path: Path, size: tuple[float, float], dpi: int = 110, style: dict | None = None,
           layout: str | None = "constrained") -> Iterator:
    """A styled bare `Figure` (`STYLE`, updated by `style`); on exit, the PNG written. The constrained layout
    fits everything into the figure; a tight bounding box on top would draw each figure twice (a fifth of a study
    trial's plotting time, for a few pixels of margin). The trial plots, drawn for every trial of a study, pass
    `layout=None` and place their panels with `fixed_grid` instead: the layout engine measures every tick label,
    about a third of their drawing time.

    A bare `matplotlib.figure.Figure` renders with Agg without pyplot, so the caller's backend and pyplot's figure
    list are left alone (no figure to close, nothing leaks between plots).
    """
    import matplotlib
    from matplotlib.figure import Figure

    # A fixed layout also fixes where titles sit (on the axes' top edge, as nothing of ours is drawn above it):
    # matplotlib otherwise measures every axes' tick labels again to place each title, a sixth of the drawing.
    fixed = {"axes.titley": 1.0} if layout is None else {}
    with matplotlib.rc_context({**STYLE, **fixed, **(style or {})}):
        fig = Figure(figsize=size, layout=layout)
        yield fig
        png = not isinstance(path, (str, Path)) or str(path).endswith(".png")
        # zlib's fastest level: a sixth of a trial plot's time at its default, for files about 6 % larger
        fig.savefig(path, dpi=dpi, **({"pil_kwargs": {"compress_level": 1}} if png else {}))


def fixed_grid(fig, rows: int = 1, cols: int = 1, *, left: float = 0.8, right: float = 0.2, top: float = 0.6,
               bottom: float = 0.6, wgap: float = 0.5, hgap: float = 0.5, **kwargs):
    """A `GridSpec` of `rows` x `cols` panels for a figure without a layout engine: the margins (room for tick
    labels, axis labels, titles, a legend below) and the gaps between panels in inches, so they stay the same
    whatever the figure's size. `kwargs` go to `add_gridspec` (`height_ratios`, ...)."""
    width, height = fig.get_size_inches()
    panel_w = (width - left - right - (cols - 1) * wgap) / cols
    panel_h = (height - top - bottom - (rows - 1) * hgap) / rows
    return fig.add_gridspec(rows, cols, left=left / width, right=1 - right / width, bottom=bottom / height,
                            top=1 - top / height, wspace=wgap / panel_w, hspace=hgap / panel_h, **kwargs)


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
