"""Run a study: Optuna (persistent storage) proposes, Ray Tune runs the trials, MLflow records them.

The Optuna study lives in the configured storage, so a rerun of the same file (or another worker on the same
storage) continues it: `study.trials` is the total number of finished trials, and only what is missing runs.
Ray Tune gets a searcher that asks and tells that Optuna study (an equivalent of Tune's `OptunaSearch` that honours
the total across reruns and workers); early stopping uses Tune's ASHA or median-stopping schedulers.
Interrupted trials (Ctrl-C) go back to the queue (Optuna WAITING) and are re-run first next time; trials whose
process died are found by their missing heartbeat (silent for `study.heartbeat_grace` seconds) and marked failed,
by the next run or by any live worker of the study, which then takes their slots; the MLflow runs a killed driver
left open are closed as FAILED with the reason. With `study.ray.address` the trials run on a Ray cluster; stores
its nodes could not reach are refused before anything starts (`eeopt.stores.Stores.check`).

Layers of `eeopt/study/` (each imports only those below it): `runner` (this: a study file bound to its stores)
-> `driver` (Ray set-up, the Tune run and its searcher) | `analysis` (`study analyze`) -> `progress` (the live
view) -> `worker` (the Ray worker around the trial pipeline, the records it exchanges with the driver, trial folders,
the plot writer) -> `trials` (the study in Optuna: trials, search space, sampler) | `tracking` (MLflow runs and the
runs-page view) | `reaper` (the watchdog of a local Ray); every store call goes through `eeopt.stores`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eeopt.config import StudyConfig, load_config
from eeopt.environment import environment
from eeopt.errors import StorageError, StudyError
from eeopt.stores import Stores, mask_url, translate_errors
from eeopt.stores.urls import is_uri, join_location
from eeopt.study import tracking
from eeopt.study.progress import Reporter
from eeopt.pipeline import check_objective_names, load_objective
from eeopt.study.trials import (
    ATTR_ERROR, ATTR_MLFLOW_RUN, DEAD_TRIAL_REASON, SearchSpace, TrialStore, create_sampler, read_studies,
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
        #: The Optuna storage, MLflow tracking store and artifact root (beside the study file for a local store; a
        #: tracking server keeps its own), and the retry policy of every call to them.
        self.stores = Stores.for_study(self.settings.storage, self.settings.mlflow.tracking_uri, self.study_dir,
                                       retry_for=self.settings.store_retry_s)
        self.storage_url = self.stores.storage_url
        self.tracking_uri = self.stores.tracking_uri
        self.artifact_root = self.stores.artifact_root
        self.experiment_name = self.settings.mlflow.experiment or self.name
        self.objectives = list(self.settings.objectives)
        self.directions = [self.settings.objectives[name] for name in self.objectives]
        runs = Path(self.settings.runs_dir) if self.settings.runs_dir else Path("runs")
        self.runs_dir = (runs if runs.is_absolute() else self.study_dir / runs).resolve() / self.name
        #: Where trials write (checkpoints, exit outputs) and Tune keeps its files: `study.ray.storage_path` (a
        #: folder or URI every node reaches) when set, else `runs_dir`.
        storage_path = self.settings.ray.storage_path
        self.trials_location = (join_location(storage_path, self.name) if storage_path
                                else str(self.runs_dir))

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = (), trials: int | None = None):
        """Load and validate a study file; `overrides` are `--set key=value`; `trials` overrides study.trials."""
        overrides = list(overrides)
        if trials is not None:
            overrides.append(f"study.trials={trials}")
        config = load_config(path, overrides, study=True)
        return cls(config, path)

    # ------------------------------------------------------------------------------------------------ analysis
    def analyze(self, *, split: str = "test", targets: list[str] | None = None, n_boot: int = 1000):
        """Which proxy predicts efficiency across this study's finished trials (`analysis.analyze_study`)."""
        from eeopt.study.analysis import analyze_study

        return analyze_study(self, split=split, targets=targets, n_boot=n_boot)

    def compare_replicate(self, first, replicate: Study):
        """`first` (this study's `analyze`) against the same analysis of `replicate`, the same study file run
        again with another training seed (`analysis.analyze_replicate`)."""
        from eeopt.study.analysis import analyze_replicate

        return analyze_replicate(self, first, replicate)

    def log_report(self, result, paths: list[Path]) -> str | None:
        """Log an analysis report's files to the study's latest MLflow parent run; its id, or None."""
        from eeopt.study.analysis import log_report

        return log_report(self, result, paths)

    # ------------------------------------------------------------------------------------------------ UIs
    def runs_page(self, base_url: str | None = None) -> tuple[str, bool]:
        """(the address of this study's trials in the MLflow UI at `base_url`, default the tracking server; whether
        the study has an MLflow experiment yet). The address opens eeopt's saved view where the study wrote one.
        Reads only, and opens no SQLite file that does not exist (MLflow would create it)."""
        experiment = None
        if self.stores.tracking_exists():
            if self.stores.tracking_file is None:
                self.stores.check_tracking()  # fast, one line if it does not answer
            experiment = self.stores.read_tracking(lambda client: client.get_experiment_by_name(self.experiment_name))
        experiment_id = experiment.experiment_id if experiment is not None else None
        has_view = experiment is not None and tracking.VIEW_TAG in experiment.tags
        return tracking.runs_url(base_url or self.tracking_uri, experiment_id, with_view=has_view), bool(experiment_id)

    def optuna_study_id(self) -> int | None:
        """The study's id in its Optuna storage (optuna-dashboard's URLs use it); None when it is not there yet.
        Creates nothing."""
        try:
            return self.stores.optuna_storage(create=False).get_study_id_from_name(self.name)
        except KeyError:
            return None

    # ------------------------------------------------------------------------------------------------ optuna
    def trial_store(self, create: bool = True) -> TrialStore:
        """The study's Optuna bookkeeping. With `create=False` nothing is created: a missing storage or study
        raises `StudyError` ("no study named ...")."""
        s = self.settings
        return TrialStore(self.storage_url, self.name, directions=self.directions, objectives=self.objectives,
                          sampler=create_sampler(s.sampler, s.seed, s.trials), create=create,
                          grace=s.heartbeat_grace, retry_for=self.stores.policy.retry_for)

    def optuna_study(self, create: bool = True):
        """The `optuna.Study` in the configured storage (created when `create` and missing)."""
        return self.trial_store(create).study

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of the search space, keyed by dotted config path."""
        return SearchSpace(self.config).distributions()

    # ------------------------------------------------------------------------------------------------ run
    def run(self, objective: Callable | str | None = None, *, progress: bool | Reporter = True) -> StudySummary:
        """Run or continue the study until it holds `study.trials` finished trials (or time/failures run out).

        Everything is checked before anything is written: the config, registry names, objectives, that the stores
        answer, (on a Ray cluster) that every node can reach them, and that an existing study of this name has the
        same objectives. Then Ray starts (or is joined; a node able to run a trial is checked for), and only then
        the Optuna study is created and MLflow and the runs folder are touched.

        Args:
            objective: optional custom objective `fn(TrialResult) -> float | tuple` or 'module:function' (else
                `study.objective`, else the named `study.objectives` metrics).
            progress: show progress on stderr (or the `Reporter` to show it with, e.g. one whose clock started
                with the command).
        Raises:
            ConfigError, StorageError: before anything runs; StudyError: too many failed trials; StorageError: the
            stores stopped answering for longer than the retries wait.
        """
        objective = objective or self.settings.objective
        if isinstance(objective, str):
            load_objective(objective)  # fail before Ray starts
        elif objective is None:
            check_objective_names(self.objectives)
        space = SearchSpace(self.config)
        space.check_names()
        self.check_stores()
        self._check_existing_study()  # a study of this name with other objectives is refused before Ray starts
        reporter = progress if isinstance(progress, Reporter) else Reporter(enabled=progress)

        from eeopt.study.driver import SearchPlan, ray_session, run_tune
        from eeopt.study.worker import drain_plot_writer, start_plot_writer

        with ray_session(self.settings.ray, self.settings.resources, reporter):
            store = self.trial_store()  # created only once Ray can run a trial (`study.resources` checked)
            reporter.line(f"study {self.name}: opening the MLflow tracking store")
            runs = self._start_runs(store, reporter)
            plan = SearchPlan(
                settings=self.settings, space=space, objectives=tuple(self.objectives),
                directions=tuple(self.directions), objective_ref=objective if isinstance(objective, str) else None,
                runs_dir=self.trials_location,
            )
            state, outcome = "KILLED", None
            plot_writer = start_plot_writer(self.stores) if self.settings.plots else None
            try:
                outcome = run_tune(plan, store, runs, reporter, self.stores, plot_writer,
                                   objective_fn=objective if callable(objective) else None)
                state = outcome.state
            finally:
                try:
                    self._finish_runs(runs, store, state)
                finally:  # the writer drew the last plots while the study's run was closed
                    drain_plot_writer(plot_writer, reporter)
        summary = self.summary(store, interrupted=outcome.interrupted)
        if outcome.too_many_failures:
            raise StudyError(
                f"study {self.name!r} stopped after {outcome.failures} failed trials (study.max_failures = "
                f"{self.settings.max_failures}); last error: {outcome.last_error}"
            )
        if outcome.storage_failed:
            raise StorageError(f"study {self.name!r} stopped: {outcome.last_error}")
        return summary

    def _check_existing_study(self) -> None:
        """`ConfigError` when the storage holds a study of this name with other objectives or directions; reads
        only (a study that is not there yet is fine: it is created once Ray is up)."""
        try:
            self.trial_store(create=False)
        except StudyError:
            return

    def check_stores(self) -> None:
        """The checks made before a run writes anything: stores reachable from where trials run (one line naming
        the setting to change), no more SQLite writers than SQLite takes, and both stores answering.

        Raises:
            ConfigError, StorageError.
        """
        s = self.settings
        self.stores.check(cluster_address=s.ray.address, storage_path=s.ray.storage_path,
                          max_concurrent=s.resources.max_concurrent)

    def _start_runs(self, store: TrialStore, reporter: Reporter) -> tracking.StudyRuns:
        """Open this invocation's MLflow parent run (the study's fixed config as its params); mark failed the
        trials whose process died since the last run (Optuna FAIL with the reason, their MLflow runs closed) and
        close the runs of killed drivers; say which trials still look alive elsewhere (this run waits for them)."""
        runs = tracking.StudyRuns.start(
            self.tracking_uri, self.experiment_name, self.artifact_root, self.name,
            {"eeopt.storage": self.stores.masked_storage,
             "eeopt.study_file": str(self.path) if self.path else "",
             tracking.TAG_COST: self.config.policy.cost_unit,
             **environment(deterministic=self.config.training.deterministic)},
            objectives=dict(zip(self.objectives, self.directions)), policy=self.stores.policy,
        )
        for dead in store.fail_dead_trials():
            if dead.mlflow_run_id:
                runs.finish_trial(dead.mlflow_run_id, "FAIL", DEAD_TRIAL_REASON)
            reporter.line(f"trial {dead.number}: marked failed, {DEAD_TRIAL_REASON}")
        runs.close_dead_runs(self.settings.heartbeat_grace)
        elsewhere = store.waiting_on(own=())
        if elsewhere:
            which = (f"trial {elsewhere[0]} is" if len(elsewhere) == 1
                     else f"trials {', '.join(map(str, elsewhere))} are")
            reporter.line(f"{which} RUNNING elsewhere: another worker's, or a killed run's (failed once silent for "
                          f"{self.settings.heartbeat_grace:g} s, study.heartbeat_grace); this run waits for "
                          f"{'it' if len(elsewhere) == 1 else 'them'} before it stops")
        runs.parent.log_params(tracking.params_from_config(
            self.config.model_dump(mode="json", exclude={"search_space"})))
        return runs

    def _finish_runs(self, runs: tracking.StudyRuns, store: TrialStore, state: str) -> None:
        """Put the study's summary on this run's MLflow parent run and close it, and any run a killed driver left
        open that is now past the grace. A tracking store that does not answer at this point is reported, not
        raised over the study's outcome."""
        runs.log_summary(store)
        try:
            runs.close_dead_runs(self.settings.heartbeat_grace)
            runs.finish(state)
        except StorageError as exc:
            log.warning("the MLflow parent run %s was not closed: %s", runs.parent_run_id, exc)

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
            storage=self.stores.masked_storage,
            tracking_uri=self.stores.masked_tracking,
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
            self.stores.require_tracking()
            mlflow_client = self.stores.mlflow_client()
        rows = []
        for trial, run_id in zip(trials, run_ids):
            row = self._row(trial)
            if run_id:
                with translate_errors(self.tracking_uri, what="MLflow tracking store"):
                    run = mlflow_client.get_run(run_id)
                    metrics = tracking.trial_metrics(mlflow_client, run)  # every metric, not the run's selection
                row.update({k: v for k, v in sorted(metrics.items()) if k.startswith(("val/", "test/"))})
            rows.append(row)
        return rows

    def trial_policy(self, budget: float = 0.5, trial: int | None = None):
        """The policy file a finished trial wrote for `budget` (a share of the last exit's cost): the best trial's
        (`TrialStore.best_trial`: the first objective decides, on the Pareto front with several), or trial number
        `trial`'s. Read from the trial's folder, else from its MLflow run's artifacts. Creates nothing.

        Returns:
            (`eeopt.core.policy_file.PolicyFile`, the trial's number).
        Raises:
            ConfigError: `budget` is not one trials write a policy for, or no such trial.
            StudyError: no study, no finished trial, the trial did not complete, or it has no policy file for
                `budget` (the message lists those it has).
            PolicyFileError: the file is not a valid policy. StorageError: a store cannot be read.
        """
        from eeopt.errors import ConfigError
        from eeopt.pipeline import POLICY_BUDGETS, POLICY_DIR

        shares = {b / 100: b for b in POLICY_BUDGETS}
        if isinstance(budget, bool) or budget not in shares:
            raise ConfigError(f"budget: expected one of {', '.join(f'{s:g}' for s in shares)} (the budgets every "
                              f"trial writes a policy file for), got {budget!r}")
        percent = shares[budget]
        store = self.trial_store(create=False)
        if trial is None:
            chosen = store.best_trial()
            if chosen is None:
                raise StudyError(f"study {self.name!r} has no finished trial yet (run it: eeopt study run)")
        else:
            by_number = {t.number: t for t in store.trials()}
            if trial not in by_number:
                known = f"trials 0..{max(by_number)}" if by_number else "no trials yet"
                raise ConfigError(f"trial: study {self.name!r} has no trial {trial} ({known})")
            chosen = by_number[trial]
            if chosen.state.name != "COMPLETE":
                raise StudyError(f"trial {trial} of study {self.name!r} is {chosen.state.name}, not COMPLETE: it "
                                 "wrote no policy files")
        local, available = self._local_policy(chosen.number, percent)
        if local is not None:
            from eeopt.core.policy_file import PolicyFile

            return PolicyFile.load(local), chosen.number
        policy, listed = self._mlflow_policy(chosen.user_attrs.get(ATTR_MLFLOW_RUN), percent)
        if policy is not None:
            return policy, chosen.number
        have = sorted(available | listed)
        raise StudyError(
            f"trial {chosen.number} of study {self.name!r} has no policy file for budget {budget:g}; it has: "
            f"{', '.join(f'{b / 100:g}' for b in have) or 'none'} (a budget gets none when no val policy costs so "
            f"little; looked in {self._trial_folder(chosen.number)}/{POLICY_DIR} and the trial's MLflow artifacts)")

    def _trial_folder(self, number: int) -> str:
        return join_location(self.trials_location, f"trial-{number}")

    def _local_policy(self, number: int, percent: int) -> tuple[Path | None, set[int]]:
        """(the trial folder's policy file for `percent`, or None; the budgets the folder has files for). Only
        where the trials' location is a local folder."""
        from eeopt.pipeline import POLICY_DIR, policy_path

        if is_uri(self.trials_location):
            return None, set()
        folder = Path(self._trial_folder(number))
        path = policy_path(folder, percent)
        have = {int(f.stem.removeprefix("budget_")) for f in (folder / POLICY_DIR).glob("budget_*.json")
                if f.stem.removeprefix("budget_").isdigit()}
        return (path if path.is_file() else None), have

    def _mlflow_policy(self, run_id: str | None, percent: int):
        """(the policy file for `percent` among the MLflow run's artifacts, or None; the budgets it has)."""
        import tempfile

        from eeopt.core.policy_file import PolicyFile
        from eeopt.pipeline import POLICY_DIR

        if not run_id:
            return None, set()
        if not self.stores.tracking_exists():
            return None, set()
        mlflow_client = self.stores.mlflow_client()
        with translate_errors(self.tracking_uri, what="MLflow tracking store"):
            names = [Path(f.path).name for f in mlflow_client.list_artifacts(run_id, POLICY_DIR)]
            have = {int(n[len("budget_"):-len(".json")]) for n in names
                    if n.startswith("budget_") and n.endswith(".json") and n[len("budget_"):-len(".json")].isdigit()}
            if percent not in have:
                return None, have
            with tempfile.TemporaryDirectory() as tmp:
                local = mlflow_client.download_artifacts(run_id, f"{POLICY_DIR}/budget_{percent}.json", tmp)
                return PolicyFile.load(local), have

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
            f"mlflow ui --backend-store-uri {mask_url(self.tracking_uri)}   (or: eeopt ui {target})",
            f"optuna-dashboard {mask_url(self.storage_url)}   (or: eeopt dashboard {target})",
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
