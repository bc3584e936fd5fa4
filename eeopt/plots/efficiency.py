"""Accuracy against cost: what an early-exit policy buys, drawn from computed reports (nothing is evaluated here).

Cost is a share of the last exit's cost (in %). Solid lines are the evaluated (test) split, dashed the split the
thresholds were chosen on (val), so the held-out numbers are never hidden under the in-sample ones. Where the
per-exit search and the global sweep coincide on test, the sweep's thin line runs on top of the search's wide
band, so both stay visible. The y axis is fitted to the part of the curves where the budgets are (from 40 % of
the last exit's cost on); when that leaves the cheap start of the curves out, an inset shows them whole. Labels sit
on a white box drawn above the lines, so no line crosses their text.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eeopt.names import exit_key
from eeopt.plots.base import EXIT, LAST, SEARCH, SWEEP, figure, fixed_grid, setting

if TYPE_CHECKING:
    from eeopt.core.evaluation import EvaluationReport
    from eeopt.core.search import PolicySearch

#: The y range covers every curve from this share of the last exit's cost on (%), and every marked point.
ZOOM_FROM = 40.0
#: An inset shows the whole curves when the fitted range leaves out more than this share of their height.
INSET_WHEN = 0.25
_LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9}


def plot_accuracy_vs_cost(path: Path, report: EvaluationReport, costs: np.ndarray, *,
                          fit_report: EvaluationReport | None = None, search: PolicySearch | None = None,
                          split: str = "test", fit_split: str = "val") -> Path:
    """Accuracy against mean cost of the evaluated split `report`.

    Draws the global-threshold sweep (this split solid, the fit split's dashed), the per-exit search's val-chosen
    policies when `search` is given (their test numbers a wide solid band under the sweep, val dashed), every exit
    alone (grey dots, the last one a black star: what the network costs without early exits), and for each budget
    (25/50/75/100 % of the last exit's cost) the policy chosen on the fit split with its numbers on this split
    (squares for the sweep, diamonds for the search).

    Args:
        costs: [K] the exits' costs (the last one is 100 %).
    """
    costs = np.asarray(costs, dtype=float)
    last = costs[-1]
    chosen_on = fit_split if fit_report is not None else f"{split}, in-sample"
    lines = _lines(report, fit_report, search, last, split, fit_split)
    points = _points(report, search, costs)
    legend_rows = -(-len(lines) // 2) + 2  # at most: two columns, the lines then up to four kinds of points
    with figure(path, (8.6, 7.0), layout=None) as fig:
        ax = fig.add_subplot(fixed_grid(fig, left=0.85, top=0.7, bottom=0.75 + 0.2 * legend_rows)[0, 0])
        _draw(ax, lines, points, chosen_on, labels=True)
        for b in (25, 50, 75, 100):
            ax.axvline(b, color="grey", lw=0.6, ls=":", zorder=0)
        ax.set_xlabel("mean cost (% of the last exit's cost)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xlim(0, 105)
        ax.grid(alpha=0.25)
        full, fitted = _y_ranges(lines, points)
        ax.set_ylim(*fitted)
        if (fitted[0] - full[0]) > INSET_WHEN * (full[1] - full[0]):
            _inset(ax, lines, points, full, fitted)
        ax.set_title(f"Accuracy vs cost, {split} split (thresholds chosen on {chosen_on})\n"
                     f"{setting(None, report.score, report.calibration, fit_split if fit_report else None)}",
                     fontsize=11)
        # below the axes, inside the figure (the plot keeps its width)
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncols=2, frameon=False, fontsize=8.5,
                   bbox_to_anchor=(0.5, 0.0))
    return path


def _lines(report, fit_report, search, last: float, split: str, fit_split: str) -> list[tuple]:
    """(x %, y %, style) of every curve, in drawing order (later on top)."""
    lines = []
    if fit_report is not None:
        lines.append((100 * fit_report.curve.mean_cost / last, 100 * fit_report.curve.accuracy,
                      dict(color=SWEEP, lw=1.1, ls="--", alpha=0.8, label=f"global threshold, {fit_split}", zorder=2)))
    if search is not None:
        res = search.result
        lines.append((100 * res.fit.mean_cost / last, 100 * res.fit.accuracy,
                      dict(color=SEARCH, lw=1.1, ls="--", alpha=0.8, zorder=2,
                           label=f"per-exit thresholds, {fit_split} (Pareto front)")))
        if res.report is not None:  # a wide band under the sweep's line: both show where they coincide
            lines.append((100 * res.report.mean_cost / last, 100 * res.report.accuracy,
                          dict(color=SEARCH, lw=4.5, alpha=0.45, solid_capstyle="round", zorder=3,
                               label=f"the same policies on {split}")))
    lines.append((100 * report.curve.mean_cost / last, 100 * report.curve.accuracy,
                  dict(color=SWEEP, lw=1.6, label=f"global threshold, {split}", zorder=4)))
    return lines


def _points(report, search, costs: np.ndarray) -> dict[str, tuple]:
    """The marked points: budget choices (x %, y %, budgets) of the sweep and the search, and the single exits."""
    last = costs[-1]
    sweep = [(c.report_mean_cost, c.report_accuracy, c.budget) for c in report.budgets if c.index >= 0]
    chosen = ([(c.report_mean_cost, c.report_accuracy, c.budget) for c in search.result.efficiency.choices
               if c.index >= 0] if search is not None else [])
    k = len(costs)
    acc = np.array([report.metrics.get(exit_key(i, "accuracy"), np.nan) for i in range(1, k + 1)], dtype=float)
    as_arrays = (lambda rows: tuple(np.array(rows, dtype=float).T) if rows else (np.array([]),) * 3)
    return {"sweep": as_arrays([(100 * x / last, 100 * y, b) for x, y, b in sweep]),
            "search": as_arrays([(100 * x / last, 100 * y, b) for x, y, b in chosen]),
            "exits": (100 * costs / last, 100 * acc, np.arange(1, k + 1, dtype=float))}


def _y_ranges(lines: list[tuple], points: dict[str, tuple]) -> tuple[tuple[float, float], tuple[float, float]]:
    """(whole, fitted) y ranges: everything drawn, and the curves from `ZOOM_FROM` % of the cost on with every
    marked point there; each with a margin of 6 % of its height."""
    ys = [y for _, y, _ in lines] + [p[1] for p in points.values()]
    zoomed = [y[x >= ZOOM_FROM] for x, y, _ in lines] + [p[1][p[0] >= ZOOM_FROM] for p in points.values()]

    def padded(parts) -> tuple[float, float]:
        values = np.concatenate([np.ravel(v) for v in parts]) if parts else np.array([])
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 100.0
        lo, hi = float(values.min()), float(values.max())
        pad = max(0.06 * (hi - lo), 0.3)
        return lo - pad, min(hi + pad, 100.0 + pad)

    whole = padded(ys)
    fitted = padded(zoomed) if any(np.size(z) for z in zoomed) else whole
    return whole, (max(fitted[0], whole[0]), fitted[1])


def _draw(ax, lines, points, chosen_on: str, labels: bool) -> None:
    """The curves and the marked points on `ax` (with labels and legend entries when `labels`)."""
    for x, y, style in lines:
        ax.plot(x, y, **(style if labels else {k: v for k, v in style.items() if k != "label"}))
    x, y, _ = points["sweep"]
    if x.size:
        ax.scatter(x, y, marker="s", s=90 if labels else 30, facecolor="none", edgecolor=SWEEP, linewidth=1.6,
                   zorder=9, label=f"global threshold chosen per budget on {chosen_on}" if labels else None)
    x, y, budgets = points["search"]
    if x.size:
        ax.scatter(x, y, marker="D", s=46 if labels else 16, color=SEARCH, edgecolor="white", zorder=8,
                   label=f"per-exit thresholds chosen per budget on {chosen_on}" if labels else None)
        if labels:
            shared: dict[tuple[float, float], list[str]] = {}
            for xi, yi, b in zip(x, y, budgets):  # budgets that chose the same policy share one label
                shared.setdefault((xi, yi), []).append(f"{b:.0f}")
            # below and to the right of its point (the curves rise to the left), alternating with the neighbours
            for j, ((xi, yi), names) in enumerate(sorted(shared.items())):
                ax.annotate(f"budget {'/'.join(names)} %", (xi, yi), textcoords="offset points",
                            xytext=(8, -16 if j % 2 == 0 else -28), fontsize=8, color=SEARCH, bbox=_LABEL_BOX,
                            zorder=10, annotation_clip=True)
    x, y, numbers = points["exits"]
    ax.scatter(x[:-1], y[:-1], s=36 if labels else 14, color=EXIT, zorder=6,
               label="one exit alone" if labels else None)
    if labels:
        for xi, yi, k in zip(x[:-1], y[:-1], numbers[:-1]):
            if np.isfinite(yi):
                ax.annotate(f"exit {k:.0f}", (xi, yi), textcoords="offset points", xytext=(5, -13), fontsize=8,
                            color=EXIT, bbox=_LABEL_BOX, zorder=10, annotation_clip=True)
    ax.scatter(x[-1:], y[-1:], marker="*", s=180 if labels else 60, color=LAST, zorder=9,
               label=f"last exit only (exit {len(x)}, no early exit)" if labels else None)


#: Where an inset may go, in axes fractions [x0, y0, width, height]: below the curves on the right (wide, then
#: narrower), or above them on the left (the curves rise from the left); the one that hides least is taken.
_INSET_PLACES = ([0.56, 0.05, 0.42, 0.36], [0.66, 0.04, 0.33, 0.32], [0.06, 0.56, 0.40, 0.34])


def _inset(ax, lines, points, full: tuple[float, float], fitted: tuple[float, float]) -> None:
    """The whole curves, small, where they hide the least of the main plot (a marked point, such as an exit or a
    budget's choice, weighs as much as ten points of a curve), with the fitted range shaded."""
    (x0, x1), (y0, y1) = ax.get_xlim(), fitted

    def fractions(xs, ys):
        xs, ys = np.concatenate([np.ravel(x) for x in xs] or [[]]), np.concatenate([np.ravel(y) for y in ys] or [[]])
        return (xs - x0) / (x1 - x0), (ys - y0) / (y1 - y0)

    curve = fractions([x for x, _, _ in lines], [y for _, y, _ in lines])
    marked = fractions([p[0] for p in points.values()], [p[1] for p in points.values()])

    def hidden(place) -> int:  # the title above the box counts as covered too
        left, bottom, width, height = place

        def inside(fx, fy):
            return int(np.sum((fx >= left) & (fx <= left + width) & (fy >= bottom) & (fy <= bottom + height + 0.05)))

        return inside(*curve) + 10 * inside(*marked)

    inset = ax.inset_axes(min(_INSET_PLACES, key=hidden))
    _draw(inset, lines, points, "", labels=False)
    inset.set_xlim(0, 105)
    inset.set_ylim(*full)
    inset.axhspan(*fitted, color="grey", alpha=0.12, zorder=0)
    inset.set_title("whole range (shaded: the main plot)", fontsize=8)
    inset.tick_params(labelsize=7)
    inset.set_facecolor("white")
    inset.grid(alpha=0.2)
    inset.set_zorder(11)
