"""Accuracy against cost: what an early-exit policy buys, drawn from computed reports (nothing is evaluated here).

Cost is a share of the last exit's cost (in %). Solid lines are the evaluated (test) split, dashed the split the
thresholds were chosen on (val), so the held-out numbers are never hidden under the in-sample ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eeopt.plots.base import EXIT, LAST, SEARCH, SWEEP, figure, setting

if TYPE_CHECKING:
    from eeopt.evaluation import EvaluationReport
    from eeopt.search import PolicySearch


def plot_accuracy_vs_cost(path: Path, report: EvaluationReport, costs: np.ndarray, *,
                          fit_report: EvaluationReport | None = None, search: PolicySearch | None = None,
                          split: str = "test", fit_split: str = "val") -> Path:
    """Accuracy against mean cost of the evaluated split `report`.

    Draws the global-threshold sweep (this split solid, the fit split's dashed), the per-exit search's val-chosen
    policies when `search` is given (their test numbers solid, val dashed), every exit alone (grey dots, the last
    one a black star: what the network costs without early exits), and for each budget (25/50/75/100 % of the
    last exit's cost) the policy chosen on the fit split with its numbers on this split (diamonds and squares).

    Args:
        costs: [K] the exits' costs (the last one is 100 %).
    """
    costs = np.asarray(costs, dtype=float)
    last = costs[-1]
    chosen_on = fit_split if fit_report is not None else f"{split}, in-sample"
    with figure(path, (8.6, 7.0)) as fig:
        ax = fig.add_subplot()
        if fit_report is not None:
            ax.plot(100 * fit_report.curve.mean_cost / last, 100 * fit_report.curve.accuracy, color=SWEEP, lw=1.1,
                    ls="--", alpha=0.8, label=f"global threshold, {fit_split}", zorder=2)
        ax.plot(100 * report.curve.mean_cost / last, 100 * report.curve.accuracy, color=SWEEP, lw=1.8,
                label=f"global threshold, {split}", zorder=3)
        if search is not None:
            _search_lines(ax, search, last, split, fit_split)
        _budget_choices(ax, report, search, last, split, chosen_on)
        _single_exits(ax, report, costs)
        for b in (25, 50, 75, 100):
            ax.axvline(b, color="grey", lw=0.6, ls=":", zorder=0)
        ax.set_xlabel("mean cost (% of the last exit's cost)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xlim(0, 105)
        ax.grid(alpha=0.25)
        ax.set_title(f"Accuracy vs cost, {split} split (thresholds chosen on {chosen_on})\n"
                     f"{setting(None, report.score, report.calibration, fit_split if fit_report else None)}",
                     fontsize=11)
        # below the axes, inside the figure: the constrained layout makes room for it (the plot keeps its width)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False, fontsize=8.5)
    return path


def _search_lines(ax, search: PolicySearch, last: float, split: str, fit_split: str) -> None:
    """The per-exit search's Pareto policies (chosen on val, sorted by val cost): val dashed, test solid on top."""
    res = search.result
    ax.plot(100 * res.fit.mean_cost / last, 100 * res.fit.accuracy, color=SEARCH, lw=1.1, ls="--", alpha=0.8,
            label=f"per-exit thresholds, {fit_split} (Pareto front)", zorder=4)
    if res.report is not None:
        ax.plot(100 * res.report.mean_cost / last, 100 * res.report.accuracy, color=SEARCH, lw=1.8, marker=".",
                ms=3, label=f"the same policies on {split}", zorder=5)


def _budget_choices(ax, report: EvaluationReport, search: PolicySearch | None, last: float, split: str,
                    chosen_on: str) -> None:
    """The policy chosen for each budget, at its numbers on the evaluated split."""
    sweep = [(c.report_mean_cost, c.report_accuracy, c.budget) for c in report.budgets if c.index >= 0]
    if sweep:
        x, y, _ = np.array(sweep, dtype=float).T
        ax.scatter(100 * x / last, 100 * y, marker="s", s=90, facecolor="none", edgecolor=SWEEP, linewidth=1.6,
                   zorder=9, label=f"global threshold chosen per budget on {chosen_on}")
    if search is not None:
        chosen = [(c.report_mean_cost, c.report_accuracy, c.budget) for c in search.result.efficiency.choices
                  if c.index >= 0]
        if chosen:
            x, y, budgets = np.array(chosen, dtype=float).T
            ax.scatter(100 * x / last, 100 * y, marker="D", s=46, color=SEARCH, edgecolor="white", zorder=8,
                       label=f"per-exit thresholds chosen per budget on {chosen_on}")
            points: dict[tuple[float, float], list[str]] = {}
            for xi, yi, b in zip(x, y, budgets):  # budgets that chose the same policy share one label
                points.setdefault((xi, yi), []).append(f"{b:.0f}")
            # left to right, labels alternate below and above their points, so neighbours do not overlap
            for j, ((xi, yi), names) in enumerate(sorted(points.items())):
                ax.annotate(f"budget {'/'.join(names)} %", (100 * xi / last, 100 * yi), textcoords="offset points",
                            xytext=(5, -12 if j % 2 == 0 else 7), fontsize=8, color=SEARCH)


def _single_exits(ax, report: EvaluationReport, costs: np.ndarray) -> None:
    """Every exit alone (all samples leave there): grey dots, the last exit a star."""
    k = len(costs)
    acc = np.array([report.metrics.get(f"exit{i}/accuracy", np.nan) for i in range(1, k + 1)], dtype=float)
    share = 100 * costs / costs[-1]
    ax.scatter(share[:-1], 100 * acc[:-1], s=36, color=EXIT, zorder=6, label="one exit alone")
    for i in range(k - 1):
        ax.annotate(f"exit {i + 1}", (share[i], 100 * acc[i]), textcoords="offset points", xytext=(4, 4), fontsize=8,
                    color=EXIT)
    ax.scatter(share[-1:], 100 * acc[-1:], marker="*", s=180, color=LAST, zorder=9,
               label=f"last exit only (exit {k}, no early exit)")
