"""Human-readable tables for the CLI (rich). Consumes computed reports; computes nothing."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

# Piped or redirected output is not squeezed into 80 columns: tables keep their width and lines are never broken
# inside a token (soft wrap); a terminal gets its own width.
console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:
    console = Console(highlight=False, soft_wrap=True, width=200)

_SHORT = {
    "accuracy": "acc", "adaptive_ece": "aece", "aupr_error": "aupr_err", "kendall_tau": "tau",
}


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1e5:
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


_GROUP_TITLES = {"accuracy": "", "calibration": "calibration", "failure": "failure prediction",
                 "ranking": "order kept"}


def print_report(report, outputs=None) -> None:
    """Per-exit metrics (rows, grouped: calibration, failure prediction) by exit (columns) with their mean, the
    direction that is better marked, then the global sweep's efficiency and the patience baseline."""
    from eeopt.names import metric_of

    title = f"score={report.score}  calibration={report.calibration}"
    if outputs is not None:
        title = f"{outputs.source}: K={outputs.num_exits}, N={outputs.num_samples}, C={outputs.num_classes}\n" + title
    table = Table(title=title, title_justify="left")
    table.add_column("metric", no_wrap=True)
    for k in range(1, report.num_exits + 1):
        table.add_column(f"exit{k}", justify="right", no_wrap=True)
    table.add_column("mean", justify="right", style="bold", no_wrap=True)
    if outputs is not None:
        last = float(outputs.costs[-1])
        table.add_row("cost (%)", *(f"{100 * c / last:.1f}" for c in outputs.costs), "", end_section=True)
    rows = report.exit_rows()
    group = None
    for name, values in rows.items():
        metric = metric_of(f"exit1/{name}")
        if metric.group != group and group is not None:
            table.add_section()
        if metric.group != group and _GROUP_TITLES[metric.group]:
            table.add_row(f"[italic]{_GROUP_TITLES[metric.group]}[/italic]")
        group = metric.group
        arrow = "↑" if metric.higher_is_better else "↓"
        table.add_row(f"{name} {arrow}", *(fmt(v) for v in values), fmt(report.metrics.get(f"mean/{name}")))
    console.print(table)
    last = float(outputs.costs[-1]) if outputs is not None else None
    _print_efficiency(report, last)
    _print_compared(report.metrics)
    if report.patience and last:
        console.print("patience (exit once P exits agree): " + "  ".join(
            f"P={p['patience']}: {fmt(p['accuracy'])} at {100 * p['mean_cost'] / last:.0f}%" for p in report.patience))


def _print_efficiency(report, last: float | None) -> None:
    """The global threshold's efficiency, one row per budget: the accuracy (`sweep/acc_at_{b}`) and mean cost
    (`sweep/mean_cost_at_{b}`) of the threshold chosen on the fit split, measured on the evaluated one; then the
    area under the accuracy-cost curve."""
    from eeopt.names import BUDGETS

    m = report.metrics
    table = Table(title=f"efficiency: one global threshold per budget, chosen on {report.thresholds_from} "
                        "(keys under sweep/)", title_justify="left")
    table.add_column("budget (% of the last exit's cost)", no_wrap=True)
    table.add_column("accuracy ↑", justify="right", no_wrap=True)
    table.add_column("mean cost ↓", justify="right", no_wrap=True)
    for b in BUDGETS:
        cost = m.get(f"sweep/mean_cost_at_{b}")
        table.add_row(f"acc_at_{b} ({b} %)", fmt(m.get(f"sweep/acc_at_{b}")), _share(cost, last) if last else fmt(cost))
    table.add_row("acc_cost_auc (over all budgets)", fmt(m.get("sweep/acc_cost_auc")), "", style="bold")
    console.print(table)


_FAMILY_HEADERS = {"calibration": "calibration", "failure": "failure pred.", "ranking": "order kept",
                   "efficiency": "efficiency", "cost": "cost", "accuracy": "accuracy"}
_COMPARED = ("mean/ece", "mean/nll", "mean/auroc", "mean/aurc", "mean/eefp", "mean/kendall_tau", "sweep/acc_cost_auc")


def _print_compared(metrics: dict[str, float]) -> None:
    """One row per compared calibrator (`calib/{name}/...` keys): the headline proxies and the sweep's efficiency."""
    names = list(dict.fromkeys(k.split("/")[1] for k in metrics if k.startswith("calib/")))
    if not names:
        return
    from eeopt.names import metric_of

    table = Table(title="calibrators compared (each fitted on the fit split)", title_justify="left")
    table.add_column("calibrator", no_wrap=True)
    for key in _COMPARED:
        family = _FAMILY_HEADERS[metric_of(key).group]
        table.add_column(f"{family}\n{key} {'↑' if metric_of(key).higher_is_better else '↓'}", justify="right",
                         no_wrap=True)
    for name in names:
        table.add_row(name, *(fmt(metrics.get(f"calib/{name}/{key}")) for key in _COMPARED))
    console.print(table)


def print_search(summary: dict[str, Any]) -> None:
    """Budget table: per-exit search vs global sweep, both chosen on val and reported on test."""
    table = Table(
        title=f"thresholds chosen on val, reported on test  (score={summary['score']}, "
        f"calibration={summary['calibration']}, {summary['trials']} trials, {summary['sampler']})",
        title_justify="left",
    )
    for col in ("budget", "method", "val acc", "val cost", "test acc", "test cost", "thresholds"):
        table.add_column(col, justify="right" if col != "thresholds" else "left")
    last = summary["costs"][-1]
    for ours, sweep in zip(summary["budgets"]["search"], summary["budgets"]["sweep"]):
        budget = f"{ours['budget']}%"
        thr = ours["thresholds"]
        thr_text = "-" if thr is None else " ".join(fmt(t, 2) if not isinstance(t, str) else t for t in thr)
        table.add_row(budget, "per-exit", fmt(ours["val_accuracy"]), _share(ours["val_mean_cost"], last),
                      fmt(ours["test_accuracy"]), _share(ours["test_mean_cost"], last), thr_text)
        table.add_row("", "global", fmt(sweep["val_accuracy"]), _share(sweep["val_mean_cost"], last),
                      fmt(sweep["test_accuracy"]), _share(sweep["test_mean_cost"], last),
                      fmt(sweep["threshold"], 3), end_section=True)
    console.print(table)
    m = summary["metrics"]
    console.print(
        f"test acc_cost_auc: per-exit {fmt(m['acc_cost_auc'])}  global sweep {fmt(m['sweep/acc_cost_auc'])}"
        "   (cost shown as % of the last exit's cost)"
    )


def _share(cost: float, last: float) -> str:
    if cost is None or (isinstance(cost, float) and math.isnan(cost)):
        return "-"
    return f"{100.0 * cost / last:.1f}%"


def print_rows(rows: list[dict[str, Any]], title: str = "") -> None:
    """A plain table of dict rows (columns from the first row)."""
    if not rows:
        console.print(f"{title}: none")
        return
    table = Table(title=title, title_justify="left")
    for col in rows[0]:
        table.add_column(str(col))
    for row in rows:
        table.add_row(*(fmt(v) if not isinstance(v, (list, dict)) else str(v) for v in row.values()))
    console.print(table)


#: Headline columns of `study status` (Optuna user attributes of finished trials): efficiency, calibration,
#: failure prediction.
STATUS_METRICS = ("test/acc_cost_auc", "test/acc_at_50", "test/mean/ece", "test/mean/auroc", "test/mean/eefp")


def print_trials(rows: list[dict[str, Any]], objectives: list[str], best: set[int] = frozenset()) -> None:
    """Every trial: state, objectives, sampled values, headline test metrics (efficiency, calibration, failure
    prediction, each with its better direction) and duration; the best trials starred; a failed trial's error."""
    console.print(_trials_table(rows, objectives, best) if rows else "no trials yet")


def trials_text(rows: list[dict[str, Any]], objectives: list[str], run_ids: bool = False) -> str:
    """The trials table as plain text (no colour, not squeezed to a terminal), with the MLflow run ids first."""
    import io

    out = Console(file=io.StringIO(), width=1000, no_color=True, highlight=False, soft_wrap=True)
    out.print(_trials_table(rows, objectives, run_ids=run_ids) if rows else "no trials yet")
    return "\n".join(line.rstrip() for line in out.file.getvalue().splitlines()) + "\n"


def _trials_table(rows: list[dict[str, Any]], objectives: list[str], best: set[int] = frozenset(),
                  run_ids: bool = False) -> Table:
    from eeopt.names import metric_of

    params = list(dict.fromkeys(k for row in rows for k in row if k.startswith("param/")))
    short = {k: k.rsplit(".", 1)[-1] for k in params}
    if len(set(short.values())) < len(short):
        short = {k: k.removeprefix("param/") for k in params}
    metrics = [k for k in STATUS_METRICS if any(row.get(k) is not None for row in rows)]
    table = Table(title="trials (★ best; test metrics are held out, never steer the search)", title_justify="left")
    if run_ids:
        table.add_column("mlflow_run_id", no_wrap=True)
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for name in objectives:
        table.add_column(f"{name} {'↑' if _higher(name) else '↓'}", justify="right", no_wrap=True, style="bold")
    for key in params:
        table.add_column(short[key], justify="right", no_wrap=True)
    for key in metrics:
        family = {"calibration": "calib.", "failure": "fail. pred.", "efficiency": "effic."}.get(metric_of(key).group, "")
        table.add_column(f"{family}\n{key} {'↑' if metric_of(key).higher_is_better else '↓'}", justify="right",
                         no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("error", overflow="fold", max_width=50)
    for row in rows:
        table.add_row(
            *([row.get("mlflow_run_id") or "-"] if run_ids else []),
            f"{'★ ' if row['number'] in best else ''}{row['number']}", row["state"],
            *(fmt(row.get(f"objective/{name}")) for name in objectives),
            *(_param(row.get(k)) for k in params), *(fmt(row.get(k)) for k in metrics),
            _duration(row.get("duration_s")), row.get("error") or "",
        )
    return table


def _param(value: Any) -> str:
    """A sampled value: floats to 3 significant digits (learning rates are small), the rest as they are."""
    return f"{value:.3g}" if isinstance(value, float) else fmt(value)


def _higher(key: str) -> bool:
    from eeopt.names import metric_of

    try:
        return metric_of(key).higher_is_better
    except ValueError:
        return True


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def print_study_summary(summary, study) -> None:
    """Counts, best trials (or the Pareto front) and where to look next."""
    console.print(
        f"study {summary.name}: {summary.completed} complete, {summary.pruned} pruned, {summary.failed} failed, "
        f"{summary.running} running, {summary.waiting} queued (target {summary.target} finished)"
    )
    if summary.interrupted:
        console.print("interrupted: running trials were requeued; run the same command again to continue")
    if summary.best:
        title = "best trial" if len(study.objectives) == 1 else "Pareto front"
        keys = [k for k in summary.best[0] if k.startswith(("objective/", "param/", "test/"))] + ["mlflow_run_id"]
        table = Table(title=title, title_justify="left")
        table.add_column("")
        for row in summary.best:
            table.add_column(f"trial {row['number']}", justify="right")
        for key in keys:
            table.add_row(key.removeprefix("param/"), *(fmt(row.get(key)) for row in summary.best))
        console.print(table)
    for line in study.where_to_look():
        console.print(f"  {line}")


def print_analysis(analysis, target: str | None = None, per_exit: bool = False) -> None:
    """The proxies against one target, highest Spearman first, with intervals, the partial correlation and the
    sample sizes; rows without numbers say why. Then the within-model summary in one line per calibrator."""
    from eeopt.names import parse_key

    target = target or analysis.main_target
    rows = [r for r in analysis.ranked(target) if per_exit or parse_key(r.proxy).scope == "mean"]
    table = Table(title=f"Which proxy predicts {target}? {analysis.n_trials} models, {analysis.n_points} "
                  "(model, calibrator) points", title_justify="left", caption=analysis.sign_convention,
                  caption_justify="left")
    for col in ("proxy", "family", "Spearman", "95 % CI", "Kendall", "95 % CI", "partial", "models", "points"):
        table.add_column(col, justify="left" if col in ("proxy", "family") else "right", no_wrap=True)
    for r in rows:
        family = parse_key(r.proxy).metric.group
        if r.note:
            table.add_row(r.proxy, family, "-", "-", "-", "-", "-", str(r.n_trials), str(r.n_points) + f"  {r.note}")
            continue
        table.add_row(r.proxy, family, fmt(r.spearman, 3), _ci(r.spearman_ci), fmt(r.kendall, 3), _ci(r.kendall_ci),
                      fmt(r.partial_spearman, 3), str(r.n_trials), str(r.n_points))
    console.print(table)
    summary = analysis.within_summary
    for name, c in summary["by_calibrator"].items():
        t = c["targets"].get(target)
        if not c["pairs"] or t is None:
            continue
        console.print(f"{name}: cut mean ECE in {c['ece_cut']} of {c['pairs']} models; there {target} rose in "
                      f"{t['rose']}, stayed (±{summary['tolerance']:g}) in {t['stayed']}, fell in {t['fell']}"
                      f" (median change {fmt(t['median_change'])})")


def _ci(ci) -> str:
    lo, hi = ci
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return "-"
    return f"[{lo:.2f}, {hi:.2f}]"
