"""Figures of the proxy analysis: proxy vs target, a forest plot of Spearman intervals, accuracy vs cost.

They consume computed results (points, `Correlation` rows, curves) and draw; matplotlib (Agg) loads only when
a figure is drawn. Every figure names the split in its title, labels its axes and has a legend.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from eeopt.analysis.correlations import Correlation
from eeopt.analysis.points import UNCALIBRATED, Point, as_float
from eeopt.errors import AnalysisError
from eeopt.names import parse_key
from eeopt.plots.base import figure

_NAMES = {
    "accuracy": "accuracy", "ece": "ECE", "mce": "MCE", "adaptive_ece": "adaptive ECE",
    "brier": "Brier score", "nll": "NLL", "auroc": "AUROC", "aupr_error": "AUPR-error", "fpr95": "FPR@95",
    "aurc": "AURC", "eaurc": "E-AURC", "eefp": "EEFP", "kendall_tau": "Kendall tau (order kept)",
    "acc_cost_auc": "area under the accuracy-cost curve", "mean_cost": "mean cost",
}
_FAMILY_COLOURS = {"calibration": "#d95f02", "failure": "#1b6fb5"}
_STYLE = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10,
          "xtick.labelsize": 11, "ytick.labelsize": 11}


def describe(key: str) -> str:
    """A key in words: 'ECE (mean over exits)', 'accuracy at 50 % cost (per-exit thresholds)'."""
    parsed = parse_key(key)
    name = parsed.metric.name
    if name.startswith("acc_at_"):
        text = f"accuracy at {name[7:]} % cost"
    elif name.startswith("mean_cost_at_"):
        text = f"mean cost at {name[13:]} % budget"
    else:
        text = _NAMES.get(name, name)
    if parsed.scope == "mean":
        text += " (mean over exits 1..K-1)" if name == "eefp" else " (mean over exits)"
    elif parsed.scope == "exit":
        text += f" (exit {parsed.exit})"
    else:
        text += " (global threshold)" if parsed.method == "sweep" else " (per-exit thresholds)"
    if parsed.variant:
        kind, variant = parsed.variant
        text += f", {variant} {'calibrator' if kind == 'calib' else 'score'}"
    return text


def describe_oriented(key: str, explain: bool = True) -> str:
    """`describe(key)` in higher-is-better form: a minus sign in front of lower-is-better metrics (and, with
    `explain`, a note saying so)."""
    text = describe(key)
    if parse_key(key).metric.higher_is_better:
        return text
    return f"−{text}  (negated: higher is better)" if explain else f"−{text}"


@contextlib.contextmanager
def _figure(path: Path, size: tuple[float, float]):
    """A styled figure (`eeopt.plots.base.figure`, larger type) and its axes, with a grid; the PNG on exit."""
    with figure(path, size, style=_STYLE) as fig:
        ax = fig.add_subplot()
        yield fig, ax
        ax.grid(alpha=0.3)


def _calibrator_colours(*orders: list[str]) -> dict[str, str]:
    """"none" near-black, the others tab10 in the order given (pass the same order to every figure); names
    of later `orders` missing from the first are appended."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    names = dict.fromkeys(name for order in orders for name in order if name != UNCALIBRATED)
    colours = {name: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, name in enumerate(names)}
    colours[UNCALIBRATED] = "#222222"
    return colours


def plot_proxy_vs_target(points: tuple[Point, ...], proxy: str, target: str, correlation: Correlation | None,
                         path: Path, split: str = "test", calibrators: list[str] | None = None) -> Path:
    """One dot per (trial, calibrator): the proxy in higher-is-better form against the target, coloured by
    calibrator (colours in the order of `calibrators`, default as they come); each trial's calibrated dots
    joined to its uncalibrated dot by a thin grey line."""
    sign = 1.0 if parse_key(proxy).metric.higher_is_better else -1.0
    xy = {(p.trial, p.calibrator): (sign * as_float(p.metrics.get(proxy)), as_float(p.metrics.get(target)))
          for p in points}
    present = list(dict.fromkeys(p.calibrator for p in points))
    colours = _calibrator_colours(calibrators or [], present)
    with _figure(path, (8.5, 5.5)) as (fig, ax):
        joined = False
        for (trial, calibrator), (x, y) in xy.items():
            base = xy.get((trial, UNCALIBRATED))
            if calibrator != UNCALIBRATED and base is not None:
                ax.plot([base[0], x], [base[1], y], color="grey", lw=0.7, alpha=0.5, zorder=1,
                        label=None if joined else "one model:\nnone to calibrated")
                joined = True
        for calibrator in present:
            pts = np.array([v for (_, c), v in xy.items() if c == calibrator], dtype=float).reshape(-1, 2)
            ax.scatter(pts[:, 0], pts[:, 1], s=46, color=colours[calibrator], edgecolor="white",
                       linewidth=0.6, label=calibrator, zorder=3 if calibrator == UNCALIBRATED else 2)
        ax.set_xlabel(describe_oriented(proxy))
        ax.set_ylabel(describe(target))
        stats = ""
        if correlation is not None and math.isfinite(correlation.spearman):
            low, high = correlation.spearman_ci
            stats = (f"\nSpearman {correlation.spearman:+.2f} [{low:+.2f}, {high:+.2f}], "
                     f"{correlation.n_trials} models")
        ax.set_title(f"{_NAMES.get(parse_key(proxy).metric.name, proxy)} vs efficiency, {split} split{stats}")
        ax.legend(title="calibrator", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # never on a dot
    return path


def plot_forest(rows: list[Correlation], path: Path, split: str = "test") -> Path:
    """Spearman with 95 % trial-bootstrap intervals of `rows` (one target), one line per proxy (best at the
    top), coloured by family. Rows without numbers are left out; with none left, the figure says why."""
    target = rows[0].target if rows else ""
    notes = list(dict.fromkeys(r.note for r in rows if not math.isfinite(r.spearman)))
    rows = sorted((r for r in rows if math.isfinite(r.spearman)), key=lambda r: r.spearman)
    with _figure(path, (9, 1.2 + 0.42 * max(len(rows), 3))) as (fig, ax):
        if not rows:
            ax.text(0, 1, "no proxy has numbers:\n" + "\n".join(notes or ["no rows"]), ha="center", va="center",
                    bbox={"facecolor": "white", "edgecolor": "grey"})
            ax.set_ylim(0, 2)
        for family, colour in _FAMILY_COLOURS.items():
            chosen = [(i, r) for i, r in enumerate(rows) if parse_key(r.proxy).metric.group == family]
            if not chosen:
                continue
            ys = np.array([i for i, _ in chosen], dtype=float)
            rho = np.array([r.spearman for _, r in chosen])
            ci = np.array([r.spearman_ci for _, r in chosen], dtype=float)
            err = np.abs(np.nan_to_num(np.stack([rho - ci[:, 0], ci[:, 1] - rho]), nan=0.0))
            ax.errorbar(rho, ys, xerr=err, fmt="o", color=colour, ms=7, capsize=3, lw=1.6,
                        label="calibration" if family == "calibration" else "failure prediction")
        for i, r in enumerate(rows):
            ax.annotate(f"{r.spearman:+.2f}", (1.02, i), xycoords=("axes fraction", "data"), va="center",
                        fontsize=10)
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_yticks(range(len(rows)), [describe_oriented(r.proxy, explain=False) for r in rows])
        ax.set_xlim(-1.05, 1.05)
        ax.set_xlabel("Spearman rho (higher-is-better form), 95 % bootstrap interval over models")
        ax.set_title(f"Which proxy tracks efficiency? {split} split\n"
                     f"target: {describe(target) if target else '-'}")
        if rows:
            ax.legend(title="proxy family", loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2,
                      frameon=False)
    return path


def plot_accuracy_vs_cost(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, split: str = "test",
                          model: str = "", calibrators: list[str] | None = None) -> Path:
    """Accuracy against cost (shares of the last exit's cost, drawn in %) of one model under each calibrator:
    `curves` maps a calibrator to (cost_share [n], accuracy [n]). Raises `AnalysisError` for arrays that are
    not 1-D of one length."""
    arrays = {}
    for calibrator, (cost, accuracy) in curves.items():
        cost, accuracy = np.asarray(cost, dtype=float), np.asarray(accuracy, dtype=float)
        if cost.shape != accuracy.shape or cost.ndim != 1:
            raise AnalysisError(f"curve {calibrator!r}: cost and accuracy must be 1-D arrays of one length, "
                                f"got {cost.shape} and {accuracy.shape}")
        order = np.argsort(cost, kind="stable")
        arrays[calibrator] = cost[order], accuracy[order]
    colours = _calibrator_colours(calibrators or [], list(curves))
    with _figure(path, (8, 5.5)) as (fig, ax):
        for calibrator, (cost, accuracy) in arrays.items():
            plain = calibrator == UNCALIBRATED
            ax.plot(cost * 100, accuracy * 100, color=colours[calibrator], label=calibrator,
                    lw=2.4 if plain else 1.6, ls="-" if plain else "--")
        ax.set_xlabel("mean cost (% of the last exit's cost)")
        ax.set_ylabel("accuracy (%)")
        of_model = f"of {model} " if model else ""
        ax.set_title(f"Accuracy vs cost {of_model}before and after calibration, {split} split")
        ax.legend(title="calibrator", loc="lower right", frameon=False)
    return path
