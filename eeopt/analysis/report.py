"""`analyze` points into an `Analysis`, and `write_report` it as Markdown with figures.

    analysis = analyze(points)                     # correlations, within-model view, JSON via to_dict()
    write_report(analysis, "report/", split="test")  # report.md + PNGs
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from eeopt.analysis.correlations import SIGN_CONVENTION, Correlation, correlations, resolve_targets
from eeopt.analysis.points import AnalysisError, Point, PointTable
from eeopt.analysis.within_model import (
    CHANGED_PROXIES,
    TOLERANCE,
    WithinModelRow,
    within_model_rows,
    within_model_summary,
)
from eeopt.names import mean_key, parse_key

CONTROL = "exit{K}/accuracy, K the largest exit index among each point's keys"
#: Proxies drawn against the main target, when present.
SCATTER_PROXIES = tuple(mean_key(m) for m in ("ece", "nll", "brier", "auroc", "aurc", "eefp"))


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What `analyze` found. `targets[0]` is the main target; `correlations` run target by target, proxies in a
    stable order (mean, per exit, variants); `within_summary` is JSON-ready already."""

    points: tuple[Point, ...]
    targets: tuple[str, ...]
    correlations: tuple[Correlation, ...]
    within_model: tuple[WithinModelRow, ...]
    within_summary: dict
    sign_convention: str
    n_trials: int
    n_points: int
    n_boot: int
    seed: int
    control: str = CONTROL

    @property
    def main_target(self) -> str:
        return self.targets[0]

    def ranked(self, target: str | None = None) -> list[Correlation]:
        """The rows of `target` (default the main one), highest Spearman first, rows without numbers last."""
        target = target or self.main_target
        rows = [row for row in self.correlations if row.target == target]
        return sorted(rows, key=lambda r: -r.spearman if math.isfinite(r.spearman) else math.inf)

    def to_dict(self) -> dict:
        """JSON-ready (NaN as None)."""
        return {
            "points": [p.to_dict() for p in self.points],
            "targets": list(self.targets),
            "correlations": [row.to_dict() for row in self.correlations],
            "within_model": [row.to_dict() for row in self.within_model],
            "within_summary": self.within_summary,
            "sign_convention": self.sign_convention,
            "partial_control": self.control,
            "n_trials": self.n_trials, "n_points": self.n_points, "n_boot": self.n_boot, "seed": self.seed,
        }


def analyze(points: list[Point] | tuple[Point, ...], targets: list[str] | tuple[str, ...] | None = None,
            n_boot: int = 1000, seed: int = 0, tolerance: float = TOLERANCE) -> Analysis:
    """Correlate every proxy with every target across `points`, and compare each model with itself calibrated.

    `targets` default to those of `DEFAULT_TARGETS` present (acc_cost_auc first). Raises `AnalysisError` for no
    points, a repeated (trial, calibrator), keys with a split prefix, an unknown or absent target, or a negative
    `n_boot` (0 skips the intervals).
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise AnalysisError(f"n_boot must be a whole number >= 0 (0 skips the intervals), got {n_boot!r}")
    table = PointTable(points)
    targets = resolve_targets(table, targets)
    rows = within_model_rows(table.points, targets)
    return Analysis(
        points=table.points,
        targets=targets,
        correlations=tuple(correlations(table, targets, n_boot=int(n_boot), seed=seed)),
        within_model=tuple(rows),
        within_summary=within_model_summary(rows, targets, tolerance),
        sign_convention=SIGN_CONVENTION,
        n_trials=table.n_trials,
        n_points=table.n_points,
        n_boot=int(n_boot),
        seed=seed,
    )


# --------------------------------------------------------------------------------------------------- Markdown
def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _interval(ci: tuple[float, float]) -> str:
    return "–" if not all(math.isfinite(v) for v in ci) else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _correlation_table(rows: list[Correlation]) -> list[str]:
    lines = ["| # | proxy | family | Spearman | 95 % CI | Kendall | 95 % CI | partial Spearman | models | points "
             "| note |", "|" + " --- |" * 11]
    for i, row in enumerate(rows, 1):
        family = parse_key(row.proxy).metric.group
        lines.append(f"| {i} | `{row.proxy}` | {family} | {_num(row.spearman)} | {_interval(row.spearman_ci)} | "
                     f"{_num(row.kendall)} | {_interval(row.kendall_ci)} | {_num(row.partial_spearman)} | "
                     f"{row.n_trials} | {row.n_points} | {row.note} |")
    return lines


def _other_targets(analysis: Analysis) -> list[str]:
    """Spearman of the mean proxies (rows) against every target (columns)."""
    proxies = list(dict.fromkeys(r.proxy for r in analysis.correlations if r.proxy.startswith("mean/")))
    value = {(r.proxy, r.target): r.spearman for r in analysis.correlations}
    lines = ["| proxy | " + " | ".join(f"`{t}`" for t in analysis.targets) + " |",
             "|" + " --- |" * (len(analysis.targets) + 1)]
    lines += [f"| `{p}` | " + " | ".join(_num(value[(p, t)], 2) for t in analysis.targets) + " |" for p in proxies]
    return lines


def _within_words(summary: dict, targets: tuple[str, ...], tolerance: float) -> list[str]:
    def sentence(counts: dict, who: str) -> str:
        text = f"{who}, calibration cut mean ECE in **{counts['ece_cut']} of {counts['pairs']}** models"
        if counts["ece_undefined"]:
            text += f" ({counts['ece_undefined']} with ECE undefined)"
        parts = []
        for target in targets:
            t = counts["targets"][target]
            parts.append(f"`{target}` rose in {t['rose']}, stayed within ±{tolerance:g} in {t['stayed']} and fell "
                         f"in {t['fell']}" + (f" ({t['undefined']} undefined)" if t["undefined"] else "")
                         + f" (median change {_num(t['median_change'], 4)})")
        if counts["ece_cut"] and parts:
            text += ". Of those, " + "; ".join(parts)
        tau = counts["median_kendall_tau"]
        if tau is not None:
            text += f". Median Kendall tau between the exits' sample order before and after: {tau:.3f}"
        return text + "."

    overall = summary["overall"]
    if not overall["pairs"]:
        return ["No trial has both an uncalibrated (`none`) point and a calibrated one."]
    lines = [sentence(overall, "Over all (model, calibrator) pairs"), ""]
    lines += [f"- {sentence(counts, f'With `{name}`')}" for name, counts in summary["by_calibrator"].items()]
    return lines


def write_report(analysis: Analysis, folder: str | Path, curves: dict | None = None, split: str = "test",
                 curves_model: str = "") -> list[Path]:
    """Write `report.md` and its PNG figures into `folder` (created if needed); return the paths written,
    report.md first.

    Figures: each of `SCATTER_PROXIES` present against the main target, a forest plot of the mean proxies'
    Spearman intervals, and, when `curves` ({calibrator: (cost_share [n], accuracy [n])} of one model, named
    `curves_model`) is given, that model's accuracy-vs-cost curves. `split` names the split in titles.
    """
    from eeopt.analysis.plots import describe, plot_accuracy_vs_cost, plot_forest, plot_proxy_vs_target

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = analysis.main_target
    ranked = analysis.ranked(target)
    by_proxy = {row.proxy: row for row in ranked}
    calibrators = list(dict.fromkeys(p.calibrator for p in analysis.points))
    figures: list[tuple[str, Path]] = []
    forest = plot_forest([r for r in ranked if r.proxy.startswith("mean/") or "/mean/" in r.proxy],
                         folder / f"forest_{_slug(target)}.png", split)
    figures.append(("Spearman of each mean proxy with the main target", forest))
    for proxy in SCATTER_PROXIES:
        if proxy in by_proxy:
            path = folder / f"scatter_{_slug(proxy)}_vs_{_slug(target)}.png"
            figures.append((f"{describe(proxy)} vs {describe(target)}",
                            plot_proxy_vs_target(analysis.points, proxy, target, by_proxy[proxy], path, split,
                                                 calibrators)))
    if curves:
        path = plot_accuracy_vs_cost(curves, folder / "accuracy_vs_cost.png", split, curves_model, calibrators)
        figures.append(("Accuracy vs cost of one model before and after calibration", path))

    lines = [
        f"# Calibration or failure prediction: which tracks early-exit efficiency? ({split} split)", "",
        f"{analysis.n_trials} models (trials), {analysis.n_points} points (model x calibrator; calibrators "
        f"{', '.join(f'`{c}`' for c in calibrators)}). Intervals: 95 % percentile bootstrap, {analysis.n_boot} resamples of whole models "
        f"(all calibrator points of a model together), seed {analysis.seed}.", "",
        f"**Sign convention.** {analysis.sign_convention}", "",
        f"**Partial Spearman** controls for the last exit's accuracy ({analysis.control}): a proxy that only "
        "tracks how good the model is overall drops towards 0.", "",
        f"## Proxies against `{target}`: {describe(target)}", "",
        *_correlation_table(ranked), "",
        f"![{figures[0][0]}]({figures[0][1].name})", "",
    ]
    if len(analysis.targets) > 1:
        lines += ["## Spearman of the mean proxies against every target", "", *_other_targets(analysis), ""]
    lines += ["## Within-model: each model before and after calibration", "",
              "Training differences drop out here: every comparison is one trained model against itself "
              f"(change = calibrated minus `none`, in {', '.join(f'`{k}`' for k in CHANGED_PROXIES)} and each "
              "target).", "",
              *_within_words(analysis.within_summary, analysis.targets, analysis.within_summary["tolerance"]), ""]
    lines += ["## Figures", ""]
    for caption, path in figures[1:]:
        lines += [f"### {caption}", "", f"![{caption}]({path.name})", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return [report, *(path for _, path in figures)]


def _slug(key: str) -> str:
    return key.replace("/", "_")
