"""Plots a person would rather look at than read: accuracy vs cost, reliability diagrams, risk-coverage curves.

Plot functions consume computed results (curves, bins) and draw; they compute nothing of their own beyond what
the metrics modules return. Files are PNGs written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, ax, path: Path) -> Path:
    """Legend, grid, tight layout; write the PNG and free the figure."""
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_accuracy_vs_cost(summary: dict, path: Path, title: str = "") -> Path:
    """Test accuracy vs mean cost (share of the last exit's cost) of the val-chosen policies of both methods."""
    plt = _pyplot()
    last = summary["costs"][-1]
    fig, ax = plt.subplots(figsize=(6, 4))
    pareto = np.array(summary["pareto"], dtype=float).reshape(-1, 4)
    if pareto.size:
        ax.step(pareto[:, 2] / last * 100, pareto[:, 3] * 100, where="post", label="per-exit search (test)")
        ax.plot(pareto[:, 0] / last * 100, pareto[:, 1] * 100, ".", alpha=0.4, label="per-exit search (val)")
    sweep = summary["budgets"]["sweep"]
    xs = [b["test_mean_cost"] / last * 100 for b in sweep if b["test_mean_cost"] == b["test_mean_cost"]]
    ys = [b["test_accuracy"] * 100 for b in sweep if b["test_mean_cost"] == b["test_mean_cost"]]
    ax.plot(xs, ys, "s", label="global threshold at 25/50/75/100 % (test)")
    for cost in summary["costs"]:
        ax.axvline(cost / last * 100, color="grey", lw=0.5, alpha=0.5)
    ax.set_xlabel("mean cost (% of the last exit)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or f"accuracy vs cost (score={summary['score']}, calibration={summary['calibration']})")
    return _save(fig, ax, path)


def plot_reliability(outputs, path: Path, n_bins: int = 15) -> Path:
    """One reliability diagram per exit (accuracy vs confidence per bin, with the ECE in the title)."""
    from eeopt.metrics.calibration import ece, reliability_bins

    plt = _pyplot()
    k = outputs.num_exits
    cols = min(k, 4)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for i in range(k):
        ax = axes[i // cols][i % cols]
        conf, ok = outputs.confidence[i], outputs.correct[i]
        bins = reliability_bins(conf, ok, n_bins)
        centers = (bins.edges[:-1] + bins.edges[1:]) / 2
        width = bins.edges[1] - bins.edges[0]
        ax.bar(centers, np.nan_to_num(bins.accuracy), width=width * 0.9, alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(f"exit{i + 1}  ECE {ece(conf, ok, n_bins):.3f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for j in range(k, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.supxlabel("confidence")
    fig.supylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_risk_coverage(outputs, scores: np.ndarray, path: Path) -> Path:
    """Risk (error rate among accepted) vs coverage per exit, sorted by the exit score; AURC in the legend."""
    from eeopt.metrics.failure import risk_coverage

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in range(outputs.num_exits):
        rc = risk_coverage(scores[i], outputs.correct[i])
        ax.plot(rc.coverage, rc.risk, label=f"exit{i + 1} (AURC {rc.risk.mean():.3f})")
    ax.set_xlabel("coverage")
    ax.set_ylabel("risk")
    return _save(fig, ax, path)


def save_trial_plots(result, folder: Path) -> list[Path]:
    """The standard plots of a study trial (test split; calibration per the trial's config, fitted on val)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    primary = result.evaluation.primary
    test = primary.test
    return [
        plot_accuracy_vs_cost(primary.search.to_dict(), folder / "accuracy_vs_cost.png"),
        plot_reliability(test.outputs, folder / "reliability_test.png"),
        plot_risk_coverage(test.outputs, test.scores, folder / "risk_coverage_test.png"),
    ]
