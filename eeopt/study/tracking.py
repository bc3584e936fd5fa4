"""MLflow bookkeeping for studies: one parent run per `eeopt study run`, one nested child run per trial.

Runs are created explicitly with `MlflowClient` (Ray's and Optuna's integrations do not nest). The driver creates
and closes runs; the trial (possibly on a Ray worker) logs its params, metrics and artifacts into the run id it is
given. Names: `{split}/exit{k}/{metric}`, `{split}/mean/{metric}`, `{split}/{efficiency metric}`, the model's
per-exit costs `cost/flops/exit{k}` and `cost/latency_ms/exit{k}` (the tag `eeopt.cost` names the one the
efficiency metrics use); per-epoch curves under `train/...` with `step` = epoch; plots as MLflow images under
`plots/{name}` (the runs page's image grid); policy files under `policies/budget_{b}.json`.

What a person sees: the parent run carries the study's summary (the best trial's objectives and headline test
metrics under the same keys as the trials, `trials/...` counts, a Markdown description), and the experiment carries
a saved view of its runs page that `eeopt ui` opens (`runs_view`, below).


How the MLflow UI shows a study: a saved view of the experiment's runs page, and the links into it.

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

The view's functions are pure (keys in, JSON-ready dicts and strings out); `StudyRuns` writes the tag.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import time
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from eeopt.names import parse_key
from eeopt.stores import RetryPolicy, TrialRun, mask_url, tracking_store
from eeopt.stores.tracking_store import NOTE_TAG, client
from eeopt.stores.urls import is_tracking_server, without_credentials


log = logging.getLogger("eeopt.study")
MAX_PARAM_LENGTH = 500
#: Where `eeopt ui` serves a local tracking store by default (an http tracking URI serves its own UI).
DEFAULT_UI = "http://127.0.0.1:5000"
#: The image keys of a trial's plots (`eeopt.plots.TRIAL_PLOTS` under `plots/`).
PLOT_KEY_PREFIX = "plots/"
#: The error of a run whose driver died (no heartbeat on the parent run for `study.heartbeat_grace` seconds).
DEAD_DRIVER_REASON = "its driver stopped sending heartbeats (killed?)"
TAG_HEARTBEAT = "eeopt.heartbeat"
#: A trial run's tag naming the cost unit of its efficiency metrics and objectives: "flops" or "latency_ms" (its
#: per-exit costs are logged as `cost/{unit}/exit{k}` for every unit it knows, `eeopt.names.cost_key`).
TAG_COST = "eeopt.cost"


def ensure_experiment(mlflow_client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (with `artifact_location`) when missing."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=artifact_location)


def params_from_config(config: Mapping[str, Any], sampled: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Flattened config (`training.lr` ...) as MLflow params, URLs masked, plus `sampled.<path>` for sampled ones."""
    from eeopt.config import flatten

    params = {}
    for key, value in flatten(dict(config)).items():
        text = mask_url(value) if isinstance(value, str) and "://" in value else value
        params[key] = str(text)[:MAX_PARAM_LENGTH]
    for key, value in (sampled or {}).items():
        params[f"sampled.{key}"] = str(value)[:MAX_PARAM_LENGTH]
    return params


#: Of each compared calibrator (`calib/{name}/`) and other score (`score/{name}/`), a trial's MLflow run keeps these
#: keys on each split; all of them are in the run's `metrics.json` and `metrics_table.csv` artifacts, where `eeopt
#: study analyze` reads them.
VARIANT_RUN_KEYS = ("mean/ece", "mean/nll", "mean/auroc", "mean/eefp", "acc_cost_auc", "sweep/acc_cost_auc")


def run_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics a trial's MLflow run holds (about 250 keys instead of 1,300 for 5 exits and 5 calibrators): the
    configured calibrator's and score's (objectives, per exit, mean, efficiency, costs), and of every other
    calibrator and score the comparable few of `VARIANT_RUN_KEYS`. A key outside the naming scheme is kept."""
    from eeopt.names import parse_key

    kept = {}
    for key, value in metrics.items():
        try:
            parsed = parse_key(key)
        except ValueError:
            parsed = None
        if parsed is None or parsed.variant is None or parsed.base in VARIANT_RUN_KEYS:
            kept[key] = value
    return kept


def trial_metrics(mlflow_client, run) -> dict[str, float]:
    """Every metric of a trial's run: its `metrics.json` artifact (the run's own metrics are `run_metrics`, a
    selection), else, for a run that logged everything itself or lost that artifact, the run's metrics. NaN where
    the file has null."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow_client.download_artifacts(run.info.run_id, "metrics.json", tmp)
        except Exception:  # noqa: BLE001 - an older run, or one without artifacts: what the run holds
            return dict(run.data.metrics)
        stored = json.loads(Path(path).read_text())
    return {k: math.nan if v is None else float(v) for k, v in stored.items()
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def trial_note(objectives: Mapping[str, float], headline: Mapping[str, float], artifacts: Iterable[str]) -> str:
    """A trial run's description (Markdown): its objectives, then the headline test numbers, then where the rest
    is, so the run page starts with what the trial is judged by."""
    objective = "  \n".join(f"**{name} = {value:.4f}**" for name, value in objectives.items())
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in headline.items()
                     if v is not None and not math.isnan(v))
    where = ", ".join(f"`{name}`" for name in artifacts)
    return (f"Objective (val, steers the search):  \n{objective}\n\n"
            f"| headline (test: held out, reported only) | value |\n| --- | ---: |\n{rows}\n\n"
            f"The run's metrics hold the configured calibrator and score (per exit, mean, efficiency) and a few of "
            f"each compared one; every metric is in the artifacts {where}. Plots: `plots/`.")


def ui_base(tracking_uri: str) -> str:
    """The MLflow UI's address for a tracking URI: a tracking server serves its own, a local store `DEFAULT_UI`.

    Without the URI's user and password: the address goes into links that eeopt stores (Optuna user attributes,
    dashboard notes, run descriptions), and a browser asks for the credentials itself."""
    if not is_tracking_server(tracking_uri):
        return DEFAULT_UI
    return without_credentials(tracking_uri.rstrip("/"))


STATUS_OF_STATE = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}


def create_run_once(mlflow_client, experiment_id: str, run_name: str, tags: Mapping[str, str]):
    """A function that creates the run and, called again (a retry after a lost answer), finds the run its first
    call created instead of creating a second one (by a unique tag `eeopt.create_id`)."""
    import uuid

    create_id = uuid.uuid4().hex
    tries = [0]

    def create() -> str:
        tries[0] += 1
        if tries[0] > 1:
            found = mlflow_client.search_runs([experiment_id], filter_string=f"tags.`eeopt.create_id` = '{create_id}'",
                                              max_results=1)
            if found:
                return found[0].info.run_id
        run = mlflow_client.create_run(experiment_id, run_name=run_name, tags={**tags, "eeopt.create_id": create_id})
        return run.info.run_id

    return create


@dataclasses.dataclass(frozen=True)
class StudyRuns:
    """The MLflow side of one `eeopt study run`: its experiment and parent run; one child run per trial. Every
    write goes through `TrialRun`s under the study's `RetryPolicy`."""

    client: Any
    experiment_id: str
    parent_run_id: str
    study_name: str
    ui_base: str = DEFAULT_UI
    objectives: dict[str, str] = dataclasses.field(default_factory=dict)  # {key: direction}, in order
    _view_keys: set = dataclasses.field(default_factory=set)  # the metric keys of the view last written
    tracking_uri: str = ""
    policy: RetryPolicy = RetryPolicy()

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, artifact_root: str | None, study_name: str,
              tags: Mapping[str, str], objectives: Mapping[str, str] | None = None,
              policy: RetryPolicy = RetryPolicy()) -> StudyRuns:
        """Create (or find) the experiment and open the parent run (with a first heartbeat); write the
        experiment's runs-page view.

        Several workers starting together may race to create the store or the experiment: the store is created
        under a lock (`tracking_store.prepare`), the experiment is looked up again when another created it first.

        Raises:
            StorageError: the tracking store cannot be used (the URI masked).
        """
        tracking_store.prepare(tracking_uri, policy)
        mlflow_client = client(tracking_uri)

        def experiment_id() -> str:
            for attempt in range(5):
                try:
                    return ensure_experiment(mlflow_client, experiment, artifact_root)
                except Exception as exc:  # noqa: BLE001 - only the creation race is retried here
                    if attempt == 4 or not any(w in str(exc) for w in ("already exists", "UNIQUE", "duplicate")):
                        raise
                    time.sleep(0.2 * (attempt + 1))
            raise AssertionError("unreachable")

        what = tracking_store.WHAT
        exp = policy.call(experiment_id, tracking_uri, what)
        parent = policy.call(create_run_once(
            mlflow_client, exp, f"{study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            {"eeopt.study": study_name, "eeopt.role": "study", **tags, TAG_HEARTBEAT: f"{time.time():.0f}"}),
            tracking_uri, what)
        runs = cls(mlflow_client, exp, parent, study_name, ui_base(tracking_uri), dict(objectives or {}),
                   tracking_uri=tracking_uri, policy=policy)
        if VIEW_TAG not in policy.call(lambda: mlflow_client.get_experiment(exp).tags, tracking_uri, what):
            runs._write_view(set(runs.objectives), params=(), images=())  # widened once a trial has finished
        return runs

    def run(self, run_id: str) -> TrialRun:
        """The handle of one of this study's runs (a trial's, or the parent's)."""
        return TrialRun(self.tracking_uri, run_id, self.policy, self.client)

    @property
    def parent(self) -> TrialRun:
        return self.run(self.parent_run_id)

    def run_url(self, run_id: str) -> str:
        """The run's link for the trial's Optuna note and attributes: its page on a tracking server's UI, or, for a
        local store (whose UI `eeopt ui` serves on a port of its choosing), the path on optuna-dashboard that
        redirects there (`dashboard_run_path`)."""
        if is_tracking_server(self.tracking_uri):
            return run_url(self.ui_base, self.experiment_id, run_id)
        return dashboard_run_path(self.experiment_id, run_id)

    def log_summary(self, store) -> None:
        """Put the study's state on the parent run (see `summarize`) and widen the runs-page view to the keys the
        best trial has. Display only: a failure is logged as a warning, never raised."""
        try:
            metrics, tags, note, best_run = summarize(store, self.objectives, self.experiment_id)
            self.parent.log_metrics(metrics)
            self.parent.set_tags(tags)
            self.parent.set_note_section("summary", note)
            self._colour_and_describe(store)
            if best_run is not None:
                run = self._call(lambda: self.client.get_run(best_run))
                keys = set(run.data.metrics) | set(metrics)
                if not keys <= self._view_keys:
                    from eeopt.plots import TRIAL_PLOTS

                    self._write_view(keys | self._view_keys,
                                     params=sorted(k for k in run.data.params if k.startswith("sampled.")),
                                     images=[f"{PLOT_KEY_PREFIX}{name}" for name in TRIAL_PLOTS])
        except Exception as exc:  # noqa: BLE001 - a summary that cannot be written must not stop the study
            log.warning("could not write the study summary to MLflow: %s", exc)

    def _colour_and_describe(self, store) -> None:
        """Each completed trial's run gets a colour by rank of the first objective (`mlflow.runColor`: the runs
        page's charts tell every trial apart, the best first), and the experiment's description names the study
        and links this run (the view lists the trials only)."""
        from optuna.trial import TrialState

        maximize = next(iter(self.objectives.values()), "maximize") == "maximize"
        values = {t.user_attrs["mlflow_run_id"]: t.values[0] for t in store.trials((TrialState.COMPLETE,))
                  if t.values and t.user_attrs.get("mlflow_run_id")}
        for run_id, colour in rank_colours(values, maximize).items():
            self.run(run_id).set_tags({"mlflow.runColor": colour})
        link = run_url("", self.experiment_id, self.parent_run_id)  # root-relative: any host and port
        note = (f"Study **{self.study_name}**: the runs below are its trials (coloured by rank of "
                f"{next(iter(self.objectives), 'the objective')}, the best first). The study's own run, with the "
                f"best trial's numbers and the summary: [{self.study_name} (study run)]({link}).")
        self._call(lambda: self.client.set_experiment_tag(self.experiment_id, NOTE_TAG, note))

    def _write_view(self, keys: set[str], params, images) -> None:
        state = fit_view(view_state(keys, self.objectives, params, images))
        self._call(lambda: self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, state))
        self._view_keys.clear()
        self._view_keys.update(keys)

    def _call(self, fn):
        """`fn()` under the study's retry policy; errors as one-line `StorageError`s."""
        return self.policy.call(fn, self.tracking_uri, tracking_store.WHAT)

    def start_trial(self, trial_number: int, tags: Mapping[str, str] | None = None) -> str:
        """Open the child run of a trial; returns its run id. Raises `StorageError`."""
        return self._call(create_run_once(self.client, self.experiment_id, f"trial-{trial_number}", {
            "mlflow.parentRunId": self.parent_run_id, "eeopt.study": self.study_name, "eeopt.role": "trial",
            "optuna.trial_number": str(trial_number), "eeopt.state": "RUNNING", **(tags or {})}))

    def finish_trial(self, run_id: str, state: str, error: str | None = None) -> None:
        """Close a run: `state` is COMPLETE, PRUNED, FAIL or KILLED (the Optuna view); MLflow's status follows.
        Raises `StorageError`."""
        self.run(run_id).terminate(STATUS_OF_STATE[state], {"eeopt.state": state,
                                                            **({"eeopt.error": error} if error else {})})

    def finish(self, state: str) -> None:
        """Close the parent run: COMPLETE, FAIL or KILLED. Raises `StorageError`."""
        self.finish_trial(self.parent_run_id, state)

    def beat(self) -> None:
        """Tell the store this driver is alive (the parent run's `eeopt.heartbeat` tag). Raises `StorageError`."""
        self.parent.set_tags({TAG_HEARTBEAT: f"{time.time():.0f}"})

    def close_dead_runs(self, grace: float) -> int:
        """Close as FAILED the runs that killed drivers of this study left RUNNING: parent runs whose heartbeat is
        older than `grace` seconds, and trial runs under a parent that is no longer running. Returns how many.

        Raises:
            StorageError: the tracking store cannot be used.
        """
        runs = self._call(lambda: self.client.search_runs(
            [self.experiment_id], max_results=5000,
            filter_string=f"attributes.status = 'RUNNING' and tags.`eeopt.study` = '{self.study_name}'"))
        now, closed = time.time(), 0
        parents = {r.info.run_id: r for r in runs if r.data.tags.get("eeopt.role") == "study"}
        dead = {run_id for run_id, r in parents.items() if run_id != self.parent_run_id
                and now - float(r.data.tags.get(TAG_HEARTBEAT, r.info.start_time / 1000)) > grace}
        for run in runs:
            parent = run.data.tags.get("mlflow.parentRunId")
            if run.info.run_id in dead or (parent and (parent in dead or parent not in parents)):
                self.finish_trial(run.info.run_id, "FAIL", DEAD_DRIVER_REASON)
                closed += 1
        return closed


def summarize(store, objectives: Mapping[str, str], experiment_id: str):
    """(metrics, tags, Markdown note, best run id) of a study for its parent run: trial counts as `trials/...`;
    the best trial's objective values and headline test metrics (its Optuna user attributes) under the trials'
    own keys, so the parent's row shows them in the same columns; with several objectives, the Pareto trial best
    on the first."""
    counts = store.counts()
    metrics = {"trials/complete": counts.complete, "trials/pruned": counts.pruned, "trials/failed": counts.failed,
               "trials/running": counts.running}
    names = list(objectives)
    front = store.best_trials()
    lines = [f"**{counts.complete} complete**, {counts.pruned} pruned, {counts.failed} failed, "
             f"{counts.running} running."]
    if not front:
        return metrics, {}, "\n\n".join(lines + ["No trial has completed yet."]), None
    best = store.best_trial()  # the one rule: `TrialStore.best_trial`
    headline = {k: float(v) for k, v in sorted(best.user_attrs.items())
                if k.startswith("test/") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    values = dict(zip(names, best.values))
    metrics.update({**values, **headline, "trials/best": best.number})
    run_id = best.user_attrs.get("mlflow_run_id")
    # root-relative: the link works on whatever host and port serves this UI
    link = f"[trial {best.number}]({run_url('', experiment_id, run_id)})" if run_id else \
        f"trial {best.number}"
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in {**values, **headline}.items() if not math.isnan(v))
    lines += [f"Best: {link}" + (f" (of a Pareto front of {len(front)})" if len(front) > 1 else ""),
              f"| metric | best trial |\n| --- | ---: |\n{rows}",
              "Which proxy predicts efficiency: `eeopt study analyze STUDY.yaml` (with `--log`, its report goes to "
              "this run's artifacts, `analysis/`)."]
    tags = {"eeopt.best_trial": str(best.number), **({"eeopt.best_run_id": run_id} if run_id else {})}
    return metrics, tags, "\n\n".join(lines), run_id


# ----------------------------------------------------------------------------------------------------
# How the MLflow UI shows a study: a saved view of the runs page, and links into it
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
