"""Per-exit figures of one prepared split: reliability diagrams with their confidence histograms, risk-coverage
curves beside the optimal ranking, and calibration / failure-prediction metrics against the exit index.

They take a `PreparedSplit` (the calibrated outputs and exit scores) and its `EvaluationReport` (the numbers in
titles and legends come from the report, so a figure and a table never disagree); the only arrays computed here
are bins and curves from `eeopt.core.metrics` helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eeopt.names import exit_key
from eeopt.plots.base import EXIT, LAST, SEARCH, figure, fixed_grid, grid_shape, setting

if TYPE_CHECKING:
    from eeopt.core.evaluation import EvaluationReport
    from eeopt.core.prepared import PreparedSplit

#: A bin holding fewer samples than this (or than 0.5 % of the split) is drawn hatched: its accuracy is noise.
SPARSE_BIN = 20
#: The gap between a bin's accuracy and its mean confidence.
GAP = "#d62728"


def plot_reliability(path: Path, split: PreparedSplit, report: EvaluationReport, n_bins: int = 15,
                     fit_split: str | None = "val") -> Path:
    """One panel per exit, in a grid that fits the exit count: accuracy per confidence bin against the diagonal,
    the gap to the bin's mean confidence shaded (hatched where the bin is under-confident), sparse bins hatched; below each, the confidence histogram (samples
    per bin, log scale). ECE and accuracy in each panel's title come from `report`."""
    from eeopt.core.metrics.calibration import reliability_bins

    out = split.outputs
    k, n = out.num_exits, out.num_samples
    rows, cols = grid_shape(k)
    sparse = max(SPARSE_BIN, int(0.005 * n))
    width = max(3.1 * cols + 0.4, 6.6)  # one or two exits: wide enough for the title and the legend
    narrow = width < 9.5  # the title on two lines, the legend in two columns
    with figure(path, (width, 3.9 * rows + (0.8 if narrow else 0.6)), layout=None) as fig:
        # each exit: its reliability panel over its histogram, close together; room between the exits for the
        # x label below and the title above
        outer = fixed_grid(fig, rows, cols, left=0.7, right=0.2, top=0.82 if narrow else 0.62,
                           bottom=1.0 if narrow else 0.85, wgap=0.55, hgap=0.85)
        for i in range(k):
            r, c = divmod(i, cols)
            pair = outer[r, c].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.12)
            top = fig.add_subplot(pair[0])
            bottom = fig.add_subplot(pair[1], sharex=top)
            bins = reliability_bins(out.confidence[i], split.correct[i], n_bins)
            _reliability_panel(top, bottom, bins, sparse)
            top.set_title(f"exit {i + 1}: ECE {report.metrics.get(f'exit{i + 1}/ece', np.nan):.3f}, "
                          f"acc {report.metrics.get(f'exit{i + 1}/accuracy', np.nan):.3f}", fontsize=10)
            if c == 0:
                top.set_ylabel("accuracy")
                bottom.set_ylabel("samples")
            bottom.set_xlabel("confidence")
        fig.suptitle(f"Reliability per exit, N = {n}{chr(10) if narrow else ', '}"
                     f"{setting(split.name, None, split.calibration, fit_split)}", fontsize=11,
                     y=1 - 0.1 / fig.get_size_inches()[1], va="top")
        fig.legend(handles=_reliability_legend(sparse), loc="lower center", ncols=2 if narrow else 4, fontsize=8,
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
    return path


def _reliability_legend(sparse: int) -> list:
    """One legend for the grid, below it (inside a panel it covered bars)."""
    from matplotlib.patches import Patch

    return [Patch(color=SEARCH, alpha=0.85, label="accuracy"),
            Patch(facecolor="white", edgecolor=SEARCH, hatch="///", label=f"sparse bin (< {sparse} samples)"),
            Patch(color=GAP, alpha=0.3, label="over-confident: gap up to the mean confidence"),
            Patch(facecolor="white", edgecolor=GAP, hatch="xx", label="under-confident: gap down to the mean confidence")]


def _reliability_panel(top, bottom, bins, sparse: int) -> None:
    """Accuracy bars (hatched where sparse, sparse bins shaded grey whatever their accuracy), the gap to the
    bin's mean confidence in red (tinted above an over-confident bar, hatched inside an under-confident one), the
    diagonal; the histogram of samples per bin below."""
    centers = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = bins.edges[1] - bins.edges[0]
    full = bins.count >= sparse
    thin = (bins.count > 0) & ~full
    acc, conf = np.nan_to_num(bins.accuracy), np.nan_to_num(bins.mean_confidence)
    for lo in bins.edges[:-1][thin]:
        top.axvspan(lo, lo + width, color=EXIT, alpha=0.15, lw=0)
    top.bar(centers[full], acc[full], width=width * 0.92, color=SEARCH, alpha=0.85)
    top.bar(centers[thin], acc[thin], width=width * 0.92, color="white", edgecolor=SEARCH, hatch="///")
    used = bins.count > 0
    over, under = used & (conf >= acc), used & (conf < acc)
    top.bar(centers[over], (conf - acc)[over], bottom=acc[over], width=width * 0.92, color=GAP, alpha=0.3)
    # under-confident: the gap lies inside the accuracy bar, so it is hatched rather than tinted
    top.bar(centers[under], (acc - conf)[under], bottom=conf[under], width=width * 0.92, facecolor="none",
            edgecolor=GAP, hatch="xx", linewidth=0)
    top.plot([0, 1], [0, 1], color=LAST, lw=0.8, ls="--")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.tick_params(labelbottom=False)
    top.grid(alpha=0.25)
    bottom.bar(centers, np.maximum(bins.count, 0.8), width=width * 0.92, color=EXIT, log=True)
    bottom.set_ylim(0.8, max(10, bins.count.max() * 1.5))
    bottom.grid(alpha=0.25)


def plot_risk_coverage(path: Path, split: PreparedSplit, report: EvaluationReport, fit_split: str | None = "val") -> Path:
    """Risk (error rate among the accepted samples) against coverage per exit, accepting by decreasing exit score;
    each exit's optimal curve (every error ranked last, same error rate) dotted in its colour."""
    import matplotlib

    from eeopt.core.metrics.failure import risk_coverage

    out = split.outputs
    palette = matplotlib.colormaps["viridis"]
    with figure(path, (8.2, 5.2), layout=None) as fig:
        ax = fig.add_subplot(fixed_grid(fig, left=0.75, top=0.6, bottom=0.6)[0, 0])
        for i in range(out.num_exits):
            colour = palette(i / max(out.num_exits - 1, 1) * 0.9)
            rc = risk_coverage(split.scores[i], split.correct[i])
            error = 1.0 - float(report.metrics.get(exit_key(i + 1, "accuracy"), np.nan))
            aurc, eaurc = (report.metrics.get(exit_key(i + 1, m), np.nan) for m in ("aurc", "eaurc"))
            ax.plot(100 * rc.coverage, 100 * rc.risk, color=colour, lw=1.6,
                    label=f"exit {i + 1}: AURC {aurc:.3f}, E-AURC {eaurc:.3f}")
            ax.plot(100 * rc.coverage, 100 * np.maximum(0.0, 1.0 - (1.0 - error) / rc.coverage), color=colour,
                    lw=1.0, ls=":")
        ax.plot([], [], color="grey", ls=":", label="optimal ranking (same errors)")
        ax.set_xlabel("coverage (% of samples accepted)")
        ax.set_ylabel("risk (% errors among accepted)")
        ax.set_xlim(0, 100)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.25)
        ax.set_title(f"Risk vs coverage per exit (lower is better)\n"
                     f"{setting(split.name, split.score, split.calibration, fit_split)}", fontsize=11)
        ax.legend(loc="upper left", frameon=False)
    return path


#: Metrics of the per-exit figure: (key, label).
PER_EXIT = (("accuracy", "accuracy ↑"), ("ece", "ECE ↓ (calibration)"), ("auroc", "AUROC ↑ (failure prediction)"),
            ("eefp", "EEFP ↑ (exiting here loses nothing)"))


def plot_per_exit(path: Path, report: EvaluationReport, costs: np.ndarray | None = None, *,
                  fit_report: EvaluationReport | None = None, split: str = "test", fit_split: str = "val") -> Path:
    """Accuracy, ECE, AUROC and EEFP against the exit index, one panel each: the evaluated split solid, the fit
    split dashed. EEFP is undefined at the last exit (nothing comes after it)."""
    k = report.num_exits
    exits = np.arange(1, k + 1)
    labels = [str(i) if costs is None else f"{i}\n{100 * costs[i - 1] / costs[-1]:.0f} %" for i in exits]
    with figure(path, (3.0 * len(PER_EXIT) + 0.6, 3.6), layout=None) as fig:
        grid = fixed_grid(fig, 1, len(PER_EXIT), left=0.6, right=0.35, top=0.62,
                          bottom=0.75 if costs is not None else 0.6, wgap=0.55)
        axes = [fig.add_subplot(grid[0, j]) for j in range(len(PER_EXIT))]
        for ax, (name, label) in zip(axes, PER_EXIT):
            for rep, style, which in ((fit_report, "--", fit_split), (report, "-", split)):
                if rep is None:
                    continue
                values = np.array([rep.metrics.get(exit_key(i, name), np.nan) for i in exits], dtype=float)
                ax.plot(exits, values, ls=style, marker="o", ms=4, color=SEARCH, alpha=1.0 if style == "-" else 0.6,
                        label=which)
            ax.set_title(label, fontsize=10)
            ax.set_xticks(exits, labels, fontsize=8)
            ax.set_xlabel("exit (cost)" if costs is not None else "exit")
            ax.grid(alpha=0.25)
        axes[0].legend(frameon=False)
        fig.suptitle(f"Per-exit metrics, {setting(split, report.score, report.calibration)} "
                     f"({split} solid{', ' + fit_split + ' dashed' if fit_report is not None else ''})", fontsize=11,
                     y=1 - 0.1 / fig.get_size_inches()[1], va="top")
    return path
