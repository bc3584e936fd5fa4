"""MLflow bookkeeping for studies: one parent run per `eeopt study run`, one nested child run per trial.

Runs are created explicitly with `MlflowClient` (Ray's and Optuna's integrations do not nest). The driver creates
and closes runs; the trial (possibly on a Ray worker) logs its params, metrics and artifacts into the run id it is
given. Names: `{split}/exit{k}/{metric}`, `{split}/mean/{metric}`, `{split}/{efficiency metric}`, the model's
per-exit costs `cost/flops/exit{k}` and `cost/latency_ms/exit{k}` (the tag `eeopt.cost` names the one the
efficiency metrics use); per-epoch curves under `train/...` with `step` = epoch; plots as MLflow images under
`plots/{name}` (the runs page's image grid); policy files under `policies/budget_{b}.json`.

What a person sees: the parent run carries the study's summary (the best trial's objectives and headline test
metrics under the same keys as the trials, `trials/...` counts, a Markdown description), and the experiment carries
a saved view of its runs page (`mlflow_view`) that `eeopt ui` opens.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from eeopt.stores import RetryPolicy, TrialRun, mask_url, tracking_store
from eeopt.stores.tracking_store import NOTE_TAG, client
from eeopt.stores.urls import is_tracking_server, without_credentials
from eeopt.study import mlflow_view

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
        if mlflow_view.VIEW_TAG not in policy.call(lambda: mlflow_client.get_experiment(exp).tags, tracking_uri, what):
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
        redirects there (`mlflow_view.dashboard_run_path`)."""
        if is_tracking_server(self.tracking_uri):
            return mlflow_view.run_url(self.ui_base, self.experiment_id, run_id)
        return mlflow_view.dashboard_run_path(self.experiment_id, run_id)

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
        for run_id, colour in mlflow_view.rank_colours(values, maximize).items():
            self.run(run_id).set_tags({"mlflow.runColor": colour})
        link = mlflow_view.run_url("", self.experiment_id, self.parent_run_id)  # root-relative: any host and port
        note = (f"Study **{self.study_name}**: the runs below are its trials (coloured by rank of "
                f"{next(iter(self.objectives), 'the objective')}, the best first). The study's own run, with the "
                f"best trial's numbers and the summary: [{self.study_name} (study run)]({link}).")
        self._call(lambda: self.client.set_experiment_tag(self.experiment_id, NOTE_TAG, note))

    def _write_view(self, keys: set[str], params, images) -> None:
        state = mlflow_view.fit_view(mlflow_view.view_state(keys, self.objectives, params, images))
        self._call(lambda: self.client.set_experiment_tag(self.experiment_id, mlflow_view.VIEW_TAG, state))
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
    link = f"[trial {best.number}]({mlflow_view.run_url('', experiment_id, run_id)})" if run_id else \
        f"trial {best.number}"
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in {**values, **headline}.items() if not math.isnan(v))
    lines += [f"Best: {link}" + (f" (of a Pareto front of {len(front)})" if len(front) > 1 else ""),
              f"| metric | best trial |\n| --- | ---: |\n{rows}",
              "Which proxy predicts efficiency: `eeopt study analyze STUDY.yaml` (with `--log`, its report goes to "
              "this run's artifacts, `analysis/`)."]
    tags = {"eeopt.best_trial": str(best.number), **({"eeopt.best_run_id": run_id} if run_id else {})}
    return metrics, tags, "\n\n".join(lines), run_id
