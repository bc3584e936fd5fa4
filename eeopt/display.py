"""Human-readable tables for the CLI (rich). Consumes computed reports; computes nothing.

Every table fits the console's width (`COLUMNS` when set, else the terminal's, else 80) without cutting a cell:
columns keep their natural width, and those that do not fit move to a continuation table that repeats the key
columns (`fitted`); prose wraps at word boundaries; a note shared by many rows is printed once, under the table.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

from rich.console import Console
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text


def console() -> Console:
    """A console for one print. Its width is `COLUMNS` when set, else the terminal's (stdout, stdin or stderr: piped
    into `less` it still gets the terminal's), else 80 (rich's rule). Made per call so that a changed `COLUMNS`
    counts (tests, `COLUMNS=120 eeopt ...`)."""
    return Console(highlight=False)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1e5:
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


# ------------------------------------------------------------------------------------------- tables that fit
@dataclasses.dataclass
class Column:
    """One column of a table to fit: its header (lines split by "\\n"), its cells (rich markup), and how it moves.

    `key` columns are repeated in every part of a split table (trial, state, objective ...); columns sharing a
    `group` name (a value and its interval) stay in one part; a `wrap` column may wrap its cells at spaces (a list
    of numbers) instead of moving; every other column keeps its natural width, never cut.
    """

    header: str
    cells: list[str]
    justify: str = "right"
    key: bool = False
    group: str | None = None
    wrap: bool = False
    style: str | None = None
    label: str = ""  # the column's name on one line, for a transposed view (default: the header's lines)


def fitted(columns: list[Column], width: int, *, title: str = "", sections: set[int] = frozenset(),
           continued: str = "(continued)") -> list[Table]:
    """The table as one or more tables no wider than `width`: the key columns, then as many of the other columns
    (in order, a group at a time) as fit; the columns left over go to the next table, which repeats the key
    columns. A part that cannot fit even one more column beside the keys takes it anyway (only when `width` is
    smaller than the key columns and that column together). `sections` are row indices that end a section."""
    keys = [c for c in columns if c.key]
    groups: list[list[Column]] = []
    for c in columns:
        if c.key:
            continue
        if groups and c.group is not None and groups[-1][-1].group == c.group:
            groups[-1].append(c)
        else:
            groups.append([c])
    parts: list[list[Column]] = []
    for group in groups:
        for part in parts:  # first fit: a narrow column may join an earlier part
            if _min_width(keys + part + group) <= width:
                part += group
                break
        else:
            parts.append(list(group))
    order = {id(c): i for i, c in enumerate(columns)}
    return [_table(sorted(keys + part, key=lambda c: order[id(c)]), title if i == 0 else continued, sections)
            for i, part in enumerate(parts or [[]])]


def _table(columns: list[Column], title: str = "", sections: set[int] = frozenset()) -> Table:
    table = Table(title=title or None, title_justify="left")
    for c in columns:
        table.add_column(c.header, justify=c.justify, no_wrap=not c.wrap, style=c.style,
                         overflow="fold" if c.wrap else "ellipsis")
    rows = len(columns[0].cells) if columns else 0
    for i in range(rows):
        table.add_row(*(c.cells[i] for c in columns), end_section=i in sections)
    return table


def _min_width(columns: list[Column]) -> int:
    """The narrowest a table of these columns renders without cutting a cell: each column as wide as its widest
    line (a wrapping column as its longest word), plus rich's padding (one space each side) and borders."""
    widths = []
    for c in columns:
        lines = [line for text in (c.header, *c.cells) for line in Text.from_markup(text).plain.splitlines()]
        parts = [word for line in lines for word in line.split()] if c.wrap else lines
        widths.append(max((cell_len(p) for p in parts), default=0))
    return sum(widths) + 2 * len(widths) + len(widths) + 1


def transposed(columns: list[Column], names: list[str]) -> list[Column]:
    """The table turned: a row per column (named by its `label`), a column per row (headed by `names`)."""
    body = [c for c in columns[1:]]
    labels = [c.label or " ".join(c.header.split("\n")) for c in body]
    return [Column("", labels, justify="left", key=True),
            *(Column(name, [c.cells[i] for c in body]) for i, name in enumerate(names))]


def print_fitted(columns: list[Column], *, title: str = "", sections: set[int] = frozenset(),
                 notes: list[str] = (), out: Console | None = None, turned: list[str] | None = None) -> None:
    """Print `fitted` tables at the console's width, then `notes` (plain text, wrapped at word boundaries).

    `turned`: the rows' names for a transposed view, printed instead when the table would take more than two parts
    and, turned, fits in one (a few trials with many columns, on a narrow terminal)."""
    out = out or console()
    tables = fitted(columns, out.width, title=title, sections=sections)
    if turned is not None and len(tables) > 2:
        turned_tables = fitted(transposed(columns, turned), out.width, title=title)
        if len(turned_tables) == 1:
            tables = turned_tables
    for table in tables:
        out.print(table)
    for note in notes:
        out.print(note, markup=False)  # plain text: an error's "[Errno 2]" stays as it is


def header(key: str, arrow: str = "", family: str = "") -> str:
    """A metric column's header on short lines: the family, the key's prefix and its last part with the better
    direction (`calib.` / `test/mean/` / `ece ↓`), so the column is as narrow as its numbers allow."""
    prefix, _, name = key.rpartition("/")
    lines = [family] if family else []
    lines += [f"{prefix}/"] if prefix else []
    return "\n".join(lines + [f"{name} {arrow}".rstrip()])


def _arrow(key: str) -> str:
    return "↑" if _higher(key) else "↓"


# ------------------------------------------------------------------------------------------- exits evaluate
_GROUP_TITLES = {"accuracy": "", "calibration": "calibration", "failure": "failure prediction",
                 "ranking": "order kept"}


def print_report(report, outputs=None) -> None:
    """Per-exit metrics (rows, grouped: calibration, failure prediction) by exit (columns) with their mean, the
    direction that is better marked, then the global sweep's efficiency and the patience baseline. With many
    exits, the exit columns continue in a second table."""
    from eeopt.names import exit_key, mean_key, metric_of

    out = console()
    title = f"score={report.score}  calibration={report.calibration}"
    if outputs is not None:
        title = f"{outputs.source}: K={outputs.num_exits}, N={outputs.num_samples}, C={outputs.num_classes}\n" + title
    labels: list[str] = []
    values: list[list[str]] = []  # one list per row: the exits' cells, then the mean
    sections: set[int] = set()
    if outputs is not None:
        last = float(outputs.costs[-1])
        labels.append("cost (%)")
        values.append([f"{100 * c / last:.1f}" for c in outputs.costs] + [""])
        sections.add(0)
    group = None
    for name, row in report.exit_rows().items():
        metric = metric_of(exit_key(1, name))
        if metric.group != group and group is not None:
            sections.add(len(labels) - 1)
        if metric.group != group and _GROUP_TITLES[metric.group]:
            labels.append(f"[italic]{_GROUP_TITLES[metric.group]}[/italic]")
            values.append([""] * (report.num_exits + 1))
        group = metric.group
        labels.append(f"{name} {'↑' if metric.higher_is_better else '↓'}")
        values.append([fmt(v) for v in row] + [fmt(report.metrics.get(mean_key(name)))])
    columns = [Column("metric", labels, justify="left", key=True)]
    columns += [Column(f"exit{k + 1}", [v[k] for v in values]) for k in range(report.num_exits)]
    columns.append(Column("mean", [v[-1] for v in values], style="bold"))
    print_fitted(columns, title=title, sections=sections, out=out)
    last = float(outputs.costs[-1]) if outputs is not None else None
    _print_efficiency(report, last, out)
    _print_compared(report.metrics, out)
    if report.patience and last:
        columns = [Column("P", [str(p["patience"]) for p in report.patience], key=True),
                   Column("accuracy ↑", [fmt(p["accuracy"]) for p in report.patience]),
                   Column("mean cost ↓", [_share(p["mean_cost"], last) for p in report.patience])]
        print_fitted(columns, title="patience baseline: exit once P exits in a row agree", out=out)


def _print_efficiency(report, last: float | None, out: Console) -> None:
    """The global threshold's efficiency, one row per budget: the accuracy (`sweep/acc_at_{b}`) and mean cost
    (`sweep/mean_cost_at_{b}`) of the threshold chosen on the fit split, measured on the evaluated one; then the
    area under the accuracy-cost curve."""
    from eeopt.names import BUDGETS, efficiency_key

    m = {key: report.metrics.get(efficiency_key(key, "sweep"))
         for key in ("acc_cost_auc", *(f"{what}_at_{b}" for b in BUDGETS for what in ("acc", "mean_cost")))}
    rows = [(f"acc_at_{b} ({b} %)", fmt(m[f"acc_at_{b}"]),
             _share(m[f"mean_cost_at_{b}"], last) if last else fmt(m[f"mean_cost_at_{b}"])) for b in BUDGETS]
    rows.append(("[bold]acc_cost_auc[/bold] (over all budgets)", f"[bold]{fmt(m['acc_cost_auc'])}[/bold]", ""))
    columns = [Column("budget (% of the\nlast exit's cost)", [r[0] for r in rows], justify="left", key=True),
               Column("accuracy ↑", [r[1] for r in rows]), Column("mean cost ↓", [r[2] for r in rows])]
    print_fitted(columns, title=f"efficiency: one global threshold per budget, chosen on {report.thresholds_from} "
                                "(keys under sweep/)", out=out)


_FAMILY_HEADERS = {"calibration": "calibration", "failure": "failure pred.", "ranking": "order kept",
                   "efficiency": "efficiency", "cost": "cost", "accuracy": "accuracy"}
_COMPARED = ("mean/ece", "mean/nll", "mean/auroc", "mean/aurc", "mean/eefp", "mean/kendall_tau", "sweep/acc_cost_auc")


def _print_compared(metrics: dict[str, float], out: Console) -> None:
    """One row per compared calibrator (`calib/{name}/...` keys): the headline proxies and the sweep's efficiency."""
    from eeopt.names import metric_of, variant_key, variant_names

    names = variant_names("calib", metrics)
    if not names:
        return
    columns = [Column("calibrator", names, justify="left", key=True)]
    columns += [Column(header(key, _arrow(key), _FAMILY_HEADERS[metric_of(key).group]),
                       [fmt(metrics.get(variant_key(key, "calib", name))) for name in names]) for key in _COMPARED]
    print_fitted(columns, title="calibrators compared (each fitted on the fit split; keys under calib/NAME/)",
                 out=out)


# ------------------------------------------------------------------------------------------- exits search
def print_search(summary: dict[str, Any]) -> None:
    """Budget table: per-exit search vs global sweep, both chosen on val and reported on test; the per-exit
    thresholds wrap between numbers when the terminal is narrow."""
    out = console()
    last = summary["costs"][-1]
    rows, sections = [], set()
    for ours, sweep in zip(summary["budgets"]["search"], summary["budgets"]["sweep"]):
        thr = ours["thresholds"]
        thr_text = "-" if thr is None else " ".join(fmt(t, 2) if not isinstance(t, str) else t for t in thr)
        rows.append((f"{ours['budget']}%", "per-exit", fmt(ours["val_accuracy"]), _share(ours["val_mean_cost"], last),
                     fmt(ours["test_accuracy"]), _share(ours["test_mean_cost"], last), thr_text))
        rows.append(("", "global", fmt(sweep["val_accuracy"]), _share(sweep["val_mean_cost"], last),
                     fmt(sweep["test_accuracy"]), _share(sweep["test_mean_cost"], last), fmt(sweep["threshold"], 3)))
        sections.add(len(rows) - 1)
    heads = ("budget", "method", "val acc", "val cost", "test acc", "test cost", "thresholds")
    columns = [Column(h, [r[i] for r in rows], justify="left" if h in ("method", "thresholds") else "right",
                      key=i < 2, group="val" if h.startswith("val") else "test" if h.startswith("test") else None,
                      wrap=h == "thresholds") for i, h in enumerate(heads)]
    print_fitted(columns, sections=sections, out=out, title=(
        f"thresholds chosen on val, reported on test (score={summary['score']}, "
        f"calibration={summary['calibration']}, {summary['trials']} trials, {summary['sampler']})"))
    m = summary["metrics"]
    out.print(f"test acc_cost_auc: per-exit {fmt(m['acc_cost_auc'])}  global sweep {fmt(m['sweep/acc_cost_auc'])}"
              "   (cost shown as % of the last exit's cost)")


def _share(cost: float, last: float) -> str:
    if cost is None or (isinstance(cost, float) and math.isnan(cost)):
        return "-"
    return f"{100.0 * cost / last:.1f}%"


def print_rows(rows: list[dict[str, Any]], title: str = "") -> None:
    """A plain table of dict rows (columns from the first row; the first column repeated if the table splits)."""
    out = console()
    if not rows:
        out.print(f"{title}: none")
        return
    columns = [Column(str(col), [fmt(r.get(col)) if not isinstance(r.get(col), (list, dict)) else str(r.get(col))
                                 for r in rows], justify="left", key=i == 0) for i, col in enumerate(rows[0])]
    print_fitted(columns, title=title, out=out)


# ------------------------------------------------------------------------------------------- study status / export
#: Headline columns of `study status` (Optuna user attributes of finished trials): efficiency, calibration,
#: failure prediction.
STATUS_METRICS = ("test/acc_cost_auc", "test/acc_at_50", "test/mean/ece", "test/mean/auroc", "test/mean/eefp")
_STATUS_FAMILY = {"calibration": "calib.", "failure": "fail. pred.", "efficiency": "effic."}


def print_trials(rows: list[dict[str, Any]], objectives: list[str], best: set[int] = frozenset()) -> None:
    """Every trial: state, objectives, sampled values, headline test metrics (efficiency, calibration, failure
    prediction, each with its better direction) and duration; the best trials starred; failed trials' errors under
    the table. Columns beyond the terminal's width continue in a second table keyed by the trial."""
    out = console()
    if not rows:
        out.print("no trials yet")
        return
    _print_trials(rows, objectives, best, False, out)


def trials_text(rows: list[dict[str, Any]], objectives: list[str], run_ids: bool = False,
                best: set[int] = frozenset()) -> str:
    """The trials table as plain text (no colour) at the console's width, with the MLflow run ids after the key
    columns; the best trials starred (`best`: their numbers)."""
    width = console().width
    out = Console(file=io.StringIO(), width=width, no_color=True, highlight=False)
    if rows:
        _print_trials(rows, objectives, best, run_ids, out)
    else:
        out.print("no trials yet")
    return "\n".join(line.rstrip() for line in out.file.getvalue().splitlines()) + "\n"


def _print_trials(rows, objectives, best, run_ids: bool, out: Console) -> None:
    from eeopt.names import metric_of

    params = list(dict.fromkeys(k for row in rows for k in row if k.startswith("param/")))
    short = {k: k.rsplit(".", 1)[-1] for k in params}
    if len(set(short.values())) < len(short):
        short = {k: k.removeprefix("param/") for k in params}
    metrics = [k for k in STATUS_METRICS if any(row.get(k) is not None for row in rows)]
    starred = best & {row["number"] for row in rows}
    title = f"trials ({'★ best; ' if starred else ''}test metrics are held out, never steer the search)"
    columns = [Column("trial", [f"{'★ ' if r['number'] in starred else ''}{r['number']}" for r in rows], key=True),
               Column("state", [r["state"] for r in rows], justify="left", key=True)]
    columns += [Column(header(name, "↑" if _higher(name) else "↓"), [fmt(r.get(f"objective/{name}")) for r in rows],
                       key=True, style="bold", label=f"{name} {'↑' if _higher(name) else '↓'}") for name in objectives]
    columns.append(Column("time", [_duration(r.get("duration_s")) for r in rows]))
    if run_ids:
        columns.append(Column("mlflow_run_id", [r.get("mlflow_run_id") or "-" for r in rows], justify="left"))
    columns += [Column(short[k], [_param(r.get(k)) for r in rows]) for k in params]
    columns += [Column(header(k, _arrow(k), _STATUS_FAMILY.get(metric_of(k).group, "")),
                       [fmt(r.get(k)) for r in rows], label=f"{k} {_arrow(k)}") for k in metrics]
    notes = [f"trial {r['number']} ({r['state']}): {_first_lines(r['error'])}" for r in rows if r.get("error")]
    names = [f"{'★ ' if r['number'] in starred else ''}trial {r['number']}" for r in rows]
    print_fitted(columns, title=title, notes=notes, out=out, turned=names)


def _first_lines(text: str, lines: int = 3, chars: int = 400) -> str:
    """The start of an error message for a note under a table (the whole one: `study export --format json`)."""
    kept = " ".join(line.strip() for line in text.strip().splitlines()[:lines])
    return kept if len(kept) <= chars and len(text.strip().splitlines()) <= lines else kept[:chars] + " [...]"


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
    """Counts, best trials (or the Pareto front: one column per trial, continued below when they do not fit) and
    where to look next."""
    out = console()
    out.print(
        f"study {summary.name}: {summary.completed} complete, {summary.pruned} pruned, {summary.failed} failed, "
        f"{summary.running} running, {summary.waiting} queued (target {summary.target} finished)"
    )
    if summary.interrupted:
        out.print("interrupted: running trials were requeued; run the same command again to continue")
    if summary.best:
        title = "best trial" if len(study.objectives) == 1 else "Pareto front"
        keys = [k for k in summary.best[0] if k.startswith(("objective/", "param/", "test/"))] + ["mlflow_run_id"]
        columns = [Column("", [k.removeprefix("param/") for k in keys], justify="left", key=True)]
        columns += [Column(f"trial {row['number']}", [_param(row.get(k)) if k.startswith("param/") else fmt(row.get(k))
                                                      for k in keys]) for row in summary.best]
        print_fitted(columns, title=title, out=out)
    for line in study.where_to_look():
        out.print(f"  {line}")


# ------------------------------------------------------------------------------------------- analyze
def print_analysis(analysis, target: str | None = None, per_exit: bool = False) -> None:
    """The proxies against one target, highest Spearman first, with intervals and the partial correlation; the
    Kendall columns continue in a second table when the terminal is narrow. Sample sizes are in the title, and
    in columns only where a row has fewer; a note shared by rows (e.g. too few trials) is printed once, under the
    table. Then the sign convention and the within-model summary, one line per calibrator."""
    from eeopt.names import parse_key

    out = console()
    target = target or analysis.main_target
    rows = [r for r in analysis.ranked(target) if per_exit or parse_key(r.proxy).scope == "mean"]
    notes = list(dict.fromkeys(r.note for r in rows if r.note))
    marks = {note: "" if len(notes) == 1 and all(r.note for r in rows) else f" ({i + 1})"
             for i, note in enumerate(notes)}
    columns = [Column("proxy", [r.proxy + (marks[r.note] if r.note else "") for r in rows], justify="left", key=True),
               Column("Spearman", [fmt(r.spearman, 3) for r in rows], group="spearman"),
               Column("95 % CI", [_ci(r.spearman_ci) for r in rows], group="spearman"),
               Column("partial", [fmt(r.partial_spearman, 3) for r in rows])]
    if any(r.n_trials != analysis.n_trials for r in rows):
        columns.append(Column("models", [str(r.n_trials) for r in rows]))
    if any(r.n_points != analysis.n_points for r in rows):
        columns.append(Column("points", [str(r.n_points) for r in rows]))
    columns += [Column("family", [parse_key(r.proxy).metric.group for r in rows], justify="left"),
                Column("Kendall", [fmt(r.kendall, 3) for r in rows], group="kendall"),
                Column("95 % CI", [_ci(r.kendall_ci) for r in rows], group="kendall")]
    lines = [f"{'every row' if not mark else mark.strip()}: {note}" for note, mark in marks.items()]
    print_fitted(columns, out=out, notes=lines, title=(
        f"Which proxy predicts {target}? {analysis.n_trials} models, {analysis.n_points} (model, calibrator) points"))
    out.print(analysis.sign_convention)
    summary = analysis.within_summary
    for name, c in summary["by_calibrator"].items():
        t = c["targets"].get(target)
        if not c["pairs"] or t is None:
            continue
        out.print(f"{name}: cut mean ECE in {c['ece_cut']} of {c['pairs']} models; there {target} rose in "
                  f"{t['rose']}, stayed (±{summary['tolerance']:g}) in {t['stayed']}, fell in {t['fell']}"
                  f" (median change {fmt(t['median_change'])})")


def _ci(ci) -> str:
    lo, hi = ci
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return "-"
    return f"[{lo:.2f}, {hi:.2f}]"
