"""How the MLflow UI shows a study: a saved view of the experiment's runs page, and the links into it.

MLflow 3 opens on its GenAI pages; the trials are on `#/experiments/<id>/runs?workflowType=machine_learning`. Its
runs table shows no metric columns by default, and its chart view puts each metric in a section named after the key
up to its last '/' (`test/exit2/ece` and `test/exit2/auroc` share 'test/exit2'), so calibration and failure
prediction end up mixed. Both are settings of the page's view state, which MLflow 3 reads from an experiment tag
`mlflow.sharedViewState.<id>` when the URL carries `viewStateShareKey=<id>` (its "saved views": an envelope with a
name and the state, the state optionally `deflate;` + base64). eeopt writes one such view (`VIEW_ID`), so no key is
renamed: sections come from `eeopt.names.parse_key` (split, calibrator or score variant, scope, metric family), the
columns are the objectives, the sampled parameters and a few headline test metrics (each column as wide as its
name, so `sampled.training.failure_loss` and `sampled.training.failure_weight` stay apart), the rows are the trials
only (the study's parent run carries the best trial's numbers under the same keys; the experiment's description
links to it) sorted by the first objective. The charts compare: first the objective against each sampled value
and the headline metrics against the objective, as scatter plots (their axes fit the data, where MLflow's bar
charts start at 0), then a bar chart per metric by section; each image card is a whole row, with several trials'
plots side by side.

Everything here is pure (keys in, JSON-ready dicts and strings out); `tracking` writes the tag.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections.abc import Iterable, Mapping

from eeopt.names import parse_key

#: The saved view's id (`viewStateShareKey=`) and the experiment tag that holds it.
VIEW_ID = "eeopt-trials"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
VIEW_NAME = "eeopt: trials, metrics by family"
#: Headline columns beside the objectives (those a run lacks stay empty).
HEADLINE_COLUMNS = ("test/acc_cost_auc", "test/acc_at_50", "test/mean/ece", "test/mean/auroc", "test/mean/eefp")
#: Proxy-against-efficiency scatter plots shown first (the question eeopt asks): (x, y).
SCATTERS = (("test/mean/auroc", "test/acc_cost_auc"), ("test/mean/eefp", "test/acc_cost_auc"),
            ("test/mean/ece", "test/acc_cost_auc"))
#: The runs the view lists: the trials (the parent run holds the best trial's metrics and would look like one more).
TRIALS_FILTER = "tags.`eeopt.role` = 'trial'"
#: How many trials each image card shows side by side.
IMAGE_RUNS = 6
#: The plots section's layout: one card per row, tall, so a card shows several trials' images side by side (MLflow
#: draws them in a scrolling grid, in the reverse of the table's order).
PLOT_LAYOUT = {"columns": 1, "cardHeight": 620}

_FAMILY = {"accuracy": "accuracy", "calibration": "calibration", "failure": "failure prediction",
           "ranking": "ranking kept by the calibrator", "efficiency": "efficiency and cost", "cost": "efficiency and cost"}
_FAMILY_ORDER = {"efficiency and cost": 0, "calibration": 1, "failure prediction": 2, "accuracy": 3,
                 "ranking kept by the calibrator": 4}


def section_of(key: str, objectives: Iterable[str] = ()) -> tuple[tuple, str, bool] | None:
    """(sort order, section name, open) of a metric key; None for keys outside the scheme (MLflow's default
    grouping by prefix applies to them, e.g. the `train/...` curves).

    Test before val; per split: efficiency, calibration, failure prediction (means over exits open, per-exit values
    folded), then each compared calibrator or score in a folded section of its own; the per-exit costs
    (`cost/flops/exit{k}`, `cost/latency_ms/exit{k}`) last, in one folded section."""
    if key in set(objectives):
        return (0,), "objectives (val: what the search optimises)", True
    if key.startswith("trials/"):
        return (9,), "study: trial counts (parent run)", False
    try:
        parsed = parse_key(key)
    except ValueError:
        return None
    if parsed.scope == "cost":  # the model's, not a split's: FLOPs and measured latency side by side
        return (7,), "cost of reaching each exit (per sample; objectives use policy.cost)", False
    split = parsed.split or "?"
    split_rank = {"test": 0, "val": 1}.get(split, 2)
    family = _FAMILY[parsed.metric.group]
    where = "thresholds chosen on val" if split == "test" else "in-sample"
    if parsed.variant is not None:
        kind, name = parsed.variant
        label = f"{split} · {'calibrator' if kind == 'calib' else 'score'} {name}"
        return (3 + split_rank, 1, kind, name, False), label, False
    if parsed.scope == "efficiency":
        return (3 + split_rank, 0, 0, "", False), f"{split} · {family} ({where})", split == "test"
    if parsed.scope == "mean":
        return (3 + split_rank, 0, _FAMILY_ORDER[family], "", False), f"{split} · {family} · mean over exits", \
            split == "test"
    return (3 + split_rank, 0, 10 + _FAMILY_ORDER[family], "", True), f"{split} · {family} · per exit", False


def view_state(metric_keys: Iterable[str], objectives: Mapping[str, str], params: Iterable[str] = (),
               image_keys: Iterable[str] = ()) -> dict:
    """The runs page's state: columns, sort order, chart sections and cards.

    Args:
        metric_keys: the keys the runs carry (each gets a bar chart in its section).
        objectives: {objective key: "maximize" | "minimize"}, in order; the rows sort by the first.
        params: MLflow param names shown as columns (the sampled ones).
        image_keys: `log_image` keys (each gets an image card in 'plots').
    """
    objectives = dict(objectives)
    params = list(params)
    keys = sorted(set(metric_keys) | set(objectives), key=_natural)
    placed = [(section_of(k, objectives), k) for k in keys]
    placed = [(s, k) for s, k in placed if s is not None]
    plots = ((2,), "plots (trials side by side)", True)
    scatter = ((1, 5), "proxy vs efficiency (test): does the proxy predict the efficiency?", True)
    # the objectives' own section: the first objective against each sampled value, and test against val, as
    # scatter plots in place of its bar chart (bars start at 0: 0.88 0.88 0.88 0.87)
    compare = section_of(next(iter(objectives)), objectives) if objectives else ((0,), "objectives", True)
    scatters = [(x, y) for x, y in SCATTERS if {x, y} <= set(keys)]
    first, direction = next(iter(objectives.items())) if objectives else (None, "maximize")
    test_twin = f"test/{first.split('/', 1)[1]}" if first and first.startswith("val/") else None
    comparisons = [(("PARAM", p), ("METRIC", first)) for p in params] if first else []
    if test_twin in keys:
        comparisons.append((("METRIC", first), ("METRIC", test_twin)))
    images = sorted(image_keys)
    sections: dict[str, tuple] = {}
    for s in ([compare] * bool(comparisons) + [sp for sp, _ in placed] + [plots] * bool(images)
              + [scatter] * bool(scatters)):
        sections.setdefault(s[1], s)
    order = sorted(sections.values(), key=lambda s: s[0])
    uuid = {name: f"s{i}" for i, (_, name, _) in enumerate(order)}
    charts = [_scatter(x, y, uuid[compare[1]], f"o{i}") for i, (x, y) in enumerate(comparisons)]
    charts += [_scatter(("METRIC", x), ("METRIC", y), uuid[scatter[1]], f"x{i}") for i, (x, y) in enumerate(scatters)]
    charts += [{"type": "IMAGE", "uuid": f"i{i}", "metricSectionId": uuid[plots[1]], "deleted": False,
                "isGenerated": True, "imageKeys": [k], "step": 0, "showRunParams": False,
                "runsCountToCompare": IMAGE_RUNS} for i, k in enumerate(images)]
    charts += [_bar(k, uuid[s[1]], i, objectives, drawn=not (k == first and comparisons))
               for i, (s, k) in enumerate(placed)]
    headline = [k for k in HEADLINE_COLUMNS if k in keys and k not in objectives]
    # what was tried beside what it got: the objectives, the sampled values, then the held-out headline numbers
    columns = [*(_column("metrics", k) for k in objectives), *(_column("params", p) for p in params),
               *(_column("metrics", k) for k in headline), _column("tags", "eeopt.state")]
    return {
        "searchFilter": TRIALS_FILTER,
        "orderByKey": _column("metrics", first) if first else "attributes.start_time",
        "orderByAsc": direction == "minimize",
        "selectedColumns": columns,
        "columnOrder": columns,  # the objective first (MLflow sorts the metric columns by name otherwise)
        "columnWidths": {c: column_width(c) for c in columns},
        "compareRunSections": [{"uuid": uuid[name], "name": name, "display": shown, "isReordered": True,
                                "deleted": False, "isGenerated": False,
                                **(PLOT_LAYOUT if name == plots[1] else {})} for _, name, shown in order],
        "compareRunCharts": charts,
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
        "useGroupedValuesInCharts": True,
    }


def column_width(column: str) -> int:
    """Pixels for a runs-table column: its whole name (MLflow cuts a header to the column's width; its header font
    takes about 6 px a character), at least 130."""
    name = column.split(".", 1)[1].strip("`")
    return max(130, 7 * len(name) + 32)


#: A qualitative palette (Tableau 10, then darker shades): trial colours by rank, the best first.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd")


def rank_colours(values: Mapping[str, float], maximize: bool = True) -> dict[str, str]:
    """{run id: colour} by rank of the first objective (best first): MLflow's own colours come from a hash of the
    run id, so two trials can share one; these never do among the first 16. Runs without a value get none."""
    ranked = sorted((v, run) for run, v in values.items() if v is not None and v == v)
    if maximize:
        ranked.reverse()
    return {run: PALETTE[i % len(PALETTE)] for i, (_, run) in enumerate(ranked)}


def encode_view(state: dict, name: str = VIEW_NAME, now_ms: int | None = None) -> str:
    """The experiment tag's value: MLflow's saved-view envelope around the state, compressed as the UI does
    (`deflate;` + base64 of zlib data), so a few hundred charts fit in the tag's 20,000 characters."""
    packed = "deflate;" + base64.b64encode(zlib.compress(json.dumps(state, separators=(",", ":")).encode())).decode()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": packed})


#: MLflow's limit on an experiment tag's value.
TAG_LIMIT = 20_000


def fit_view(state: dict, limit: int = TAG_LIMIT) -> str:
    """`encode_view(state)`, thinned until it fits `limit`: first without the deleted cards (MLflow then draws
    those keys itself, in sections by prefix at the end), then without any per-exit card, then without charts
    (the columns and the sort order stay)."""
    def per_exit(card: dict) -> bool:
        parsed = _parsed(card.get("metricKey", ""))
        return parsed is not None and parsed.scope == "exit"

    for keep in (lambda c: True, lambda c: not c["deleted"], lambda c: not c["deleted"] and not per_exit(c),
                 lambda c: False):
        value = encode_view({**state, "compareRunCharts": [c for c in state["compareRunCharts"] if keep(c)]})
        if len(value) <= limit:
            return value
    raise ValueError(f"the runs-page view does not fit {limit} characters even without charts")


def decode_view(value: str) -> dict:
    """The state inside a tag value written by `encode_view` (tests and checks)."""
    packed = json.loads(value)["state"]
    return json.loads(zlib.decompress(base64.b64decode(packed.removeprefix("deflate;"))).decode())


def runs_url(base: str, experiment_id: str | None, with_view: bool = True) -> str:
    """The runs page of an experiment in the model-training view (the experiments list without an id)."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments"
    view = f"&viewStateShareKey={VIEW_ID}" if with_view else ""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning{view}"


#: The path on optuna-dashboard (served by `eeopt dashboard`) that redirects to a run's page wherever `eeopt ui`
#: serves the MLflow UI: `{DASHBOARD_LINK}/{experiment id}/{run id}` (see `eeopt.cli.links`).
DASHBOARD_LINK = "/eeopt/mlflow"


def dashboard_run_path(experiment_id: str, run_id: str) -> str:
    """A run's link for optuna-dashboard's notes when the MLflow UI has no fixed address (a local store): a path on
    the dashboard's own server, which redirects to the run's page on the running `eeopt ui`."""
    return f"{DASHBOARD_LINK}/{experiment_id}/{run_id}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the model-training view (without `workflowType`, MLflow 3 shows it among GenAI pages)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _column(kind: str, name: str) -> str:
    """MLflow's column id: `metrics.\\`val/acc_cost_auc\\``."""
    return f"{kind}.`{name}`"


def _display_name(key: str, keep_split: bool = False) -> str:
    """The key without its split (its section names it), with the better direction: 'exit2/ece ↓'."""
    try:
        parsed = parse_key(key)
    except ValueError:
        return key
    rest = key.split("/", 1)[1] if parsed.split and not keep_split else key
    return f"{rest} {'↑' if parsed.metric.higher_is_better else '↓'}"


def _bar(key: str, section: str, i: int, objectives, drawn: bool = True) -> dict:
    """A bar chart of one key. The per-exit values of compared calibrators and scores (a thousand keys with six
    exits and five calibrators) get a deleted card: not drawn, and not regenerated by MLflow either, which keeps
    the page light and the view within the tag's 20,000 characters; their means and efficiency are drawn. So
    does a key drawn otherwise (`drawn=False`: the objective, in scatter plots)."""
    parsed = _parsed(key)
    if not drawn or (parsed is not None and parsed.variant is not None and parsed.scope == "exit"):
        return {"type": "BAR", "uuid": f"d{i}", "metricSectionId": section, "deleted": True, "metricKey": key}
    return {"type": "BAR", "uuid": f"c{i}", "metricSectionId": section, "deleted": False, "isGenerated": True,
            "metricKey": key, "displayName": _display_name(key, key in objectives), "runsCountToCompare": 10}


def _parsed(key: str):
    try:
        return parse_key(key)
    except ValueError:
        return None


def _scatter(x: tuple[str, str], y: tuple[str, str], section: str, uuid: str) -> dict:
    """A scatter chart of y against x, each a (METRIC | PARAM, key) pair; plotly fits both axes to the data."""
    return {"type": "SCATTER", "uuid": uuid, "metricSectionId": section, "deleted": False,
            "isGenerated": False, "xaxis": {"key": x[1], "type": x[0]}, "yaxis": {"key": y[1], "type": y[0]},
            "runsCountToCompare": 100, "displayName": f"{y[1]} against {x[1].removeprefix('sampled.')}"}


def _natural(key: str) -> list:
    """Sort 'exit10' after 'exit9'."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]
