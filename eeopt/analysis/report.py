"""`analyze` points into an `Analysis`, and `write_report` it as Markdown with figures.

    analysis = analyze(points)                       # correlations, within-model view; to_dict() for JSON
    write_report(analysis, "report/", split="test")  # report.md + PNGs
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from eeopt.analysis.correlations import SIGN_CONVENTION, Correlation, correlations, resolve_targets
from eeopt.analysis.points import Point, PointTable
from eeopt.analysis.within_model import (
    CHANGED_PROXIES,
    TOLERANCE,
    WithinModelRow,
    within_model_rows,
    within_model_summary,
)
from eeopt.errors import AnalysisError
from eeopt.names import mean_key, parse_key

CONTROL = "exit{K}/accuracy, K the largest exit index among each point's keys"
#: Proxies drawn against the main target, when present.
SCATTER_PROXIES = tuple(mean_key(m) for m in ("ece", "nll", "brier", "auroc", "aurc", "eefp"))


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What `analyze` found. `targets[0]` is the main target; `correlations` run target by target, proxies
    in a stable order (mean, per exit, variants); `within_summary` is JSON-ready already."""

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

    `targets` default to those of `DEFAULT_TARGETS` present (acc_cost_auc first); `n_boot` 0 skips the
    intervals; `tolerance` is the |change| of a target that counts as "stayed" in the within-model summary.
    Raises `AnalysisError` for no points, a repeated (trial, calibrator), keys with a split prefix, an unknown
    or absent target, or a negative `n_boot` or `tolerance`.
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise AnalysisError(f"n_boot must be a whole number >= 0 (0 skips the intervals), got {n_boot!r}")
    if not tolerance >= 0:
        raise AnalysisError(f"tolerance must be >= 0 (the |change| that counts as stayed), got {tolerance!r}")
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


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _is_mean(key: str) -> bool:
    return parse_key(key).scope == "mean"


def _correlation_table(rows: list[Correlation]) -> list[str]:
    header = ["#", "proxy", "family", "Spearman", "95 % CI", "Kendall", "95 % CI", "partial Spearman",
              "models", "points", "note"]
    return _table(header, [
        [str(i), f"`{r.proxy}`", parse_key(r.proxy).metric.group, _num(r.spearman), _interval(r.spearman_ci),
         _num(r.kendall), _interval(r.kendall_ci), _num(r.partial_spearman), str(r.n_trials), str(r.n_points),
         r.note]
        for i, r in enumerate(rows, 1)])


def _targets_table(analysis: Analysis) -> list[str]:
    """Spearman of the mean proxies (rows, best for the main target first) against every target (columns)."""
    value = {(r.proxy, r.target): r.spearman for r in analysis.correlations}
    proxies = [r.proxy for r in analysis.ranked() if _is_mean(r.proxy)]
    return _table(["proxy", *(f"`{t}`" for t in analysis.targets)],
                  [[f"`{p}`", *(_num(value[p, t], 2) for t in analysis.targets)] for p in proxies])


def _within_section(summary: dict, targets: tuple[str, ...]) -> list[str]:
    """The main target's counts in words, then every target's counts per calibrator in a table."""
    overall, tolerance, main = summary["overall"], summary["tolerance"], targets[0]
    if not overall["pairs"]:
        return ["No trial has both an uncalibrated (`none`) point and a calibrated one."]
    counts = overall["targets"][main]
    words = (f"Calibration cut mean ECE in **{overall['ece_cut']} of {overall['pairs']}** "
             "(model, calibrator) pairs")
    if overall["ece_cut"]:
        words += (f". In those, `{main}` rose in **{counts['rose']}**, stayed within ±{tolerance:g} in "
                  f"**{counts['stayed']}** and fell in **{counts['fell']}** (median change "
                  f"{_num(counts['median_change'], 4)}")
        words += f"; {counts['undefined']} undefined)" if counts["undefined"] else ")"
    if overall["median_kendall_tau"] is not None:
        words += (". The calibrators kept the exits' sample order to a median Kendall tau of "
                  f"{overall['median_kendall_tau']:.3f}")
    header = ["calibrator", "models", "ECE cut", *(f"`{t}` rose / stayed / fell" for t in targets),
              "median Kendall tau"]
    rows = []
    for name, c in [*summary["by_calibrator"].items(), ("all", overall)]:
        cells = [f"{t['rose']} / {t['stayed']} / {t['fell']}" for t in (c["targets"][k] for k in targets)]
        tau = "–" if c["median_kendall_tau"] is None else f"{c['median_kendall_tau']:.3f}"
        label = "**all**" if name == "all" else f"`{name}`"
        rows.append([label, str(c["pairs"]), str(c["ece_cut"]), *cells, tau])
    return [words + ".", "", "Counts among the models where calibration cut ECE (change within "
            f"±{tolerance:g} = stayed):", "", *_table(header, rows)]


def write_report(analysis: Analysis, folder: str | Path, curves: dict | None = None, split: str = "test",
                 curves_model: str = "") -> list[Path]:
    """Write `report.md` and its PNG figures into `folder` (created if needed); return the paths written,
    report.md first.

    Figures: a forest plot of the mean proxies' Spearman intervals against the main target, each of
    `SCATTER_PROXIES` present against the main target, and, when `curves` ({calibrator: (cost_share [n],
    accuracy [n])} of one model, named `curves_model`) is given, that model's accuracy-vs-cost curves. `split`
    names the split in titles.
    """
    from eeopt.analysis.plots import describe, plot_accuracy_vs_cost, plot_forest, plot_proxy_vs_target

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = analysis.main_target
    ranked = analysis.ranked(target)
    by_proxy = {row.proxy: row for row in ranked}
    calibrators = list(dict.fromkeys(p.calibrator for p in analysis.points))
    forest = folder / f"forest_{_slug(target)}.png"
    plot_forest([r for r in ranked if _is_mean(r.proxy)], forest, split)
    figures: list[tuple[str, Path]] = []
    for proxy in SCATTER_PROXIES:
        if proxy in by_proxy:
            path = folder / f"scatter_{_slug(proxy)}_vs_{_slug(target)}.png"
            plot_proxy_vs_target(analysis.points, proxy, target, by_proxy[proxy], path, split, calibrators)
            figures.append((f"{describe(proxy)} vs {describe(target)}", path))
    if curves:
        path = folder / "accuracy_vs_cost.png"
        plot_accuracy_vs_cost(curves, path, split, curves_model, calibrators)
        figures.append((f"Accuracy vs cost of {curves_model or 'one model'} before and after calibration",
                        path))

    intervals = (f"Intervals: 95 % percentile bootstrap, {analysis.n_boot} resamples of whole models (all "
                 f"calibrator points of a model together), seed {analysis.seed}." if analysis.n_boot else
                 "No intervals (n_boot = 0).")
    changed = ", ".join(f"`{k}`" for k in CHANGED_PROXIES)
    lines = [
        f"# Calibration or failure prediction: which tracks early-exit efficiency? ({split} split)", "",
        f"{analysis.n_trials} models (trials), {analysis.n_points} points (model x calibrator; calibrators "
        f"{', '.join(f'`{c}`' for c in calibrators)}). {intervals}", "",
        f"**Sign convention.** {analysis.sign_convention}", "",
        f"**Partial Spearman** controls for the last exit's accuracy ({analysis.control}): a proxy that only "
        "tracks how good the model is overall drops towards 0.", "",
        f"## Proxies against `{target}`: {describe(target)}", "",
        f"![Spearman of each mean proxy with {target}]({forest.name})", "",
        *_correlation_table(ranked), "",
    ]
    if len(analysis.targets) > 1:
        lines += ["## Spearman of the mean proxies against every target", "", *_targets_table(analysis), ""]
    lines += ["## Within-model: each model before and after calibration", "",
              "Training differences drop out here: every comparison is one trained model against itself "
              f"(change = calibrated minus `none`; `within_model` in the JSON has {changed} and each "
              "target).",
              "", *_within_section(analysis.within_summary, analysis.targets), "", "## Figures", ""]
    for caption, path in figures:
        lines += [f"### {caption}", "", f"![{caption}]({path.name})", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return [report, forest, *(path for _, path in figures)]


def _slug(key: str) -> str:
    return key.replace("/", "_")
