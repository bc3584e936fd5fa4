"""Run a study: Optuna (persistent storage) proposes, Ray Tune runs the trials, MLflow records them.

The Optuna study lives in the configured storage, so a rerun of the same file (or another worker on the same
storage) continues it: `study.trials` is the total number of finished trials, and only what is missing runs.
Ray Tune gets a searcher that asks and tells that Optuna study (an equivalent of Tune's `OptunaSearch` that honours
the total across reruns and workers); early stopping uses Tune's ASHA or median-stopping schedulers.
Interrupted trials (Ctrl-C) go back to the queue (Optuna WAITING) and are re-run first next time; trials whose
process died are found by their missing heartbeat and marked failed.

Layers of `eeopt/study/` (each imports only those below it): `runner` (this: a study file bound to its stores) ->
`loop` (the Tune run) -> `searcher` (driver) | `worker` (Ray worker) -> `trials` (Optuna bookkeeping) | `space`
(search space) | `tracking` (MLflow, with `mlflow_view`) | `progress` | `trial` (one trial without Ray) ->
`records` | `storage`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eeopt.config import StudyConfig, load_config
from eeopt.errors import StorageError, StudyError
from eeopt.study import storage as storage_mod
from eeopt.study import tracking
from eeopt.study.progress import Reporter
from eeopt.study.space import SearchSpace
from eeopt.study.trial import check_objective_names, load_objective
from eeopt.study.trials import (
    ATTR_ERROR, ATTR_MLFLOW_RUN, DEAD_TRIAL_REASON, TrialStore, create_sampler, read_studies,
)

log = logging.getLogger("eeopt.study")


@dataclasses.dataclass
class StudySummary:
    """What `Study.run` did: counts over the whole study and the best (or Pareto-optimal) trials."""

    name: str
    completed: int
    pruned: int
    failed: int
    running: int
    waiting: int
    target: int
    interrupted: bool
    best: list[dict[str, Any]]
    storage: str
    tracking_uri: str


class Study:
    """A study file bound to its stores. `Study.from_yaml(path).run()` is `eeopt study run path`.

    `config` is the whole file; `settings` is its `study:` section (name, trials, storages, resources, ...).

    Raises:
        ConfigError: `study.mlflow.tracking_uri` is no MLflow tracking URI.
    """

    def __init__(self, config: StudyConfig, path: str | Path | None = None):
        self.config = config
        self.settings = config.study
        self.path = Path(path) if path is not None else None
        self.study_dir = (self.path.parent if self.path is not None else Path.cwd()).resolve()
        self.name = self.settings.name
        self.storage_url = (
            storage_mod.resolve_sqlite(self.settings.storage, self.study_dir)
            if self.settings.storage else storage_mod.default_storage_url(self.study_dir)
        )
        self.tracking_uri = (
            storage_mod.resolve_sqlite(self.settings.mlflow.tracking_uri, self.study_dir)
            if self.settings.mlflow.tracking_uri else storage_mod.default_tracking_uri(self.study_dir)
        )
        storage_mod.check_tracking_uri(self.tracking_uri)
        self.artifact_root = storage_mod.default_artifact_root(self.study_dir)
        self.experiment_name = self.settings.mlflow.experiment or self.name
        self.objectives = list(self.settings.objectives)
        self.directions = [self.settings.objectives[name] for name in self.objectives]
        runs = Path(self.settings.runs_dir) if self.settings.runs_dir else Path("runs")
        self.runs_dir = (runs if runs.is_absolute() else self.study_dir / runs).resolve() / self.name

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = (), trials: int | None = None):
        """Load and validate a study file; `overrides` are `--set key=value`; `trials` overrides study.trials."""
        overrides = list(overrides)
        if trials is not None:
            overrides.append(f"study.trials={trials}")
        config = load_config(path, overrides, study=True)
        return cls(config, path)

    # ------------------------------------------------------------------------------------------------ optuna
    def trial_store(self, create: bool = True) -> TrialStore:
        """The study's Optuna bookkeeping. With `create=False` nothing is created: a missing storage or study
        raises `StudyError` ("no study named ...")."""
        s = self.settings
        return TrialStore(self.storage_url, self.name, directions=self.directions, objectives=self.objectives,
                          sampler=create_sampler(s.sampler, s.seed, s.trials), create=create)

    def optuna_study(self, create: bool = True):
        """The `optuna.Study` in the configured storage (created when `create` and missing)."""
        return self.trial_store(create).study

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of the search space, keyed by dotted config path."""
        return SearchSpace(self.config).distributions()

    # ------------------------------------------------------------------------------------------------ run
    def run(self, objective: Callable | str | None = None, *, progress: bool | Reporter = True) -> StudySummary:
        """Run or continue the study until it holds `study.trials` finished trials (or time/failures run out).

        Everything is checked before anything is written: the config, registry names, objectives, and that the
        Optuna storage and the MLflow tracking store answer. Only then the storage, MLflow, the runs folder and
        Ray are touched.

        Args:
            objective: optional custom objective `fn(TrialResult) -> float | tuple` or 'module:function' (else
                `study.objective`, else the named `study.objectives` metrics).
            progress: show progress on stderr (or the `Reporter` to show it with, e.g. one whose clock started
                with the command).
        Raises:
            ConfigError, StorageError: before anything runs; StudyError: too many failed trials.
        """
        objective = objective or self.settings.objective
        if isinstance(objective, str):
            load_objective(objective)  # fail before Ray starts
        elif objective is None:
            check_objective_names(self.objectives)
        space = SearchSpace(self.config)
        space.check_names()
        storage_mod.check_store_answers(self.storage_url, "Optuna storage")
        storage_mod.check_store_answers(self.tracking_uri, "MLflow tracking store")
        store = self.trial_store()  # the last check: a study of this name with other objectives is refused here
        reporter = progress if isinstance(progress, Reporter) else Reporter(enabled=progress)
        reporter.line(f"study {self.name}: opening the MLflow tracking store")
        runs = self._start_runs(store)

        from eeopt.study.loop import run_tune
        from eeopt.study.searcher import SearchPlan

        plan = SearchPlan(
            settings=self.settings, space=space, objectives=tuple(self.objectives),
            directions=tuple(self.directions), objective_ref=objective if isinstance(objective, str) else None,
            runs_dir=self.runs_dir, tracking_uri=self.tracking_uri,
        )
        state, outcome = "KILLED", None
        try:
            outcome = run_tune(plan, store, runs, reporter, objective_fn=objective if callable(objective) else None)
            state = "KILLED" if outcome.interrupted else "FAIL" if outcome.too_many_failures else "COMPLETE"
        finally:
            runs.log_summary(store)
            runs.finish(state)
        summary = self.summary(store, interrupted=outcome.interrupted)
        if outcome.too_many_failures:
            raise StudyError(
                f"study {self.name!r} stopped after {outcome.failures} failed trials (study.max_failures = "
                f"{self.settings.max_failures}); last error: {outcome.last_error}"
            )
        return summary

    def _start_runs(self, store: TrialStore) -> tracking.StudyRuns:
        """Open this invocation's MLflow parent run (the study's fixed config as its params), and mark failed the
        trials whose process died since the last run (Optuna FAIL with the reason, their MLflow runs closed)."""
        runs = tracking.StudyRuns.start(
            self.tracking_uri, self.experiment_name, self.artifact_root, self.name,
            {"eeopt.storage": storage_mod.mask_url(self.storage_url) or "",
             "eeopt.study_file": str(self.path) if self.path else ""},
            objectives=dict(zip(self.objectives, self.directions)),
        )
        for dead in store.fail_dead_trials():
            if dead.mlflow_run_id:
                runs.finish_trial(dead.mlflow_run_id, "FAIL", DEAD_TRIAL_REASON)
            log.warning("trial %d: marked failed, %s", dead.number, DEAD_TRIAL_REASON)
        tracking.log_params(runs.client, runs.parent_run_id, tracking.params_from_config(
            self.config.model_dump(mode="json", exclude={"search_space"})))
        return runs

    # ------------------------------------------------------------------------------------------------ reports
    def summary(self, store: TrialStore | None = None, interrupted: bool = False) -> StudySummary:
        """Counts and best trials; reads the storage, creates nothing (`StudyError` when there is no study)."""
        store = store or self.trial_store(create=False)
        counts = store.counts()
        return StudySummary(
            name=self.name,
            completed=counts.complete,
            pruned=counts.pruned,
            failed=counts.failed,
            running=counts.running,
            waiting=counts.waiting,
            target=self.settings.trials,
            interrupted=interrupted,
            best=[self._row(t) for t in store.best_trials()],
            storage=storage_mod.mask_url(self.storage_url),
            tracking_uri=storage_mod.mask_url(self.tracking_uri),
        )

    def export(self) -> list[dict[str, Any]]:
        """One row per trial: number, state, params, val/test metrics (from MLflow), MLflow run id, error.

        Creates nothing: `StudyError` without the study, `StorageError` when its trials name MLflow runs but the
        (SQLite) tracking store is gone.
        """
        trials = self.trial_store(create=False).trials()
        run_ids = [t.user_attrs.get(ATTR_MLFLOW_RUN) for t in trials]
        mlflow_client = None
        if any(run_ids):
            path = storage_mod.sqlite_path(self.tracking_uri)
            if path is not None and not path.is_file():
                raise StorageError(f"no MLflow tracking store at {storage_mod.mask_url(self.tracking_uri)}")
            mlflow_client = tracking.client(self.tracking_uri)
        rows = []
        for trial, run_id in zip(trials, run_ids):
            row = self._row(trial)
            if run_id:
                with storage_mod.translate_errors(self.tracking_uri, what="MLflow tracking store"):
                    run = mlflow_client.get_run(run_id)
                row.update({k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(("val/", "test/"))})
            rows.append(row)
        return rows

    def trial_rows(self) -> list[dict[str, Any]]:
        """One row per trial from the Optuna storage alone (no MLflow): what `eeopt study status` lists. Creates
        nothing (`StudyError` without the study)."""
        return [self._row(t) for t in self.trial_store(create=False).trials()]

    def _row(self, trial) -> dict[str, Any]:
        start, end = trial.datetime_start, trial.datetime_complete
        return {
            "number": trial.number,
            "state": trial.state.name,
            "duration_s": (end - start).total_seconds() if start and end else None,
            **{f"objective/{name}": v for name, v in zip(self.objectives, trial.values or [None] * len(self.objectives))},
            **{f"param/{k}": v for k, v in trial.params.items()},
            **{k: v for k, v in sorted(trial.user_attrs.items()) if k.startswith("test/")},
            "mlflow_run_id": trial.user_attrs.get(ATTR_MLFLOW_RUN),
            "error": trial.user_attrs.get(ATTR_ERROR),
        }

    def where_to_look(self) -> list[str]:
        """Commands that open the study's stores (passwords masked: fill them in from your own config)."""
        target = self.path or "STUDY.yaml"
        return [
            f"mlflow ui --backend-store-uri {storage_mod.mask_url(self.tracking_uri)}   (or: eeopt ui {target})",
            f"optuna-dashboard {storage_mod.mask_url(self.storage_url)}   (or: eeopt dashboard {target})",
        ]


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    """Every study in an Optuna storage with its trial counts and directions. Creates nothing.

    Raises:
        StorageError: the storage cannot be reached, or there is no Optuna storage at `storage_url`.
    """
    return [
        {
            "name": s.name,
            "directions": s.directions,
            "objectives": s.objectives,
            "complete": s.counts.complete,
            "failed": s.counts.failed,
            "running": s.counts.running,
            "trials": s.trials,
            "started": s.started.isoformat(timespec="seconds") if s.started else None,
        }
        for s in read_studies(storage_url)
    ]
