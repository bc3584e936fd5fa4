"""Run a study: Optuna (persistent storage) proposes, Ray Tune runs the trials, MLflow records them.

The Optuna study lives in the configured storage, so a rerun of the same file (or another worker on the same
storage) continues it: `study.trials` is the total number of finished trials, and only what is missing runs.
Ray Tune gets a searcher that asks and tells that Optuna study (an equivalent of Tune's `OptunaSearch` that honours
the total across reruns and workers); early stopping uses Tune's ASHA or median-stopping schedulers.
Interrupted trials (Ctrl-C) go back to the queue (Optuna WAITING) and are re-run first next time; trials whose
process died are found by their missing heartbeat and marked failed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eeopt.config import CategoricalDistribution, FloatDistribution, StudyConfig, load_config
from eeopt.errors import ConfigError, StorageError, StudyError
from eeopt.study import storage as storage_mod
from eeopt.study import tracking

log = logging.getLogger("eeopt.study")

#: Optuna trial user attributes eeopt writes.
ATTR_MLFLOW_RUN = "mlflow_run_id"
ATTR_ERROR = "eeopt_error"
ATTR_RAY_TRIAL = "ray_trial_id"


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
    """A study file bound to its storages. `Study.from_yaml(path).run()` is `eeopt study run path`."""

    def __init__(self, config: StudyConfig, path: str | Path | None = None):
        self.config = config
        self.path = Path(path) if path is not None else None
        self.study_dir = (self.path.parent if self.path is not None else Path.cwd()).resolve()
        settings = config.study
        self.name = settings.name
        self.storage_url = (
            storage_mod.resolve_sqlite(settings.storage, self.study_dir)
            if settings.storage else storage_mod.default_storage_url(self.study_dir)
        )
        self.tracking_uri = (
            storage_mod.resolve_sqlite(settings.mlflow.tracking_uri, self.study_dir)
            if settings.mlflow.tracking_uri else storage_mod.default_tracking_uri(self.study_dir)
        )
        self.artifact_root = storage_mod.default_artifact_root(self.study_dir)
        self.experiment_name = settings.mlflow.experiment or self.name
        self.objectives = list(settings.objectives)
        self.directions = [settings.objectives[name] for name in self.objectives]
        runs = Path(settings.runs_dir) if settings.runs_dir else Path("runs")
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
    def _sampler(self):
        import optuna

        s = self.config.study
        if s.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, constant_liar=True)
        if s.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(4, min(20, s.trials)))
        return optuna.samplers.RandomSampler(seed=s.seed)

    def optuna_study(self, create: bool = True):
        """The Optuna study in the configured storage (created when `create` and missing)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        missing = self.storage_url.startswith("sqlite:///") and not Path(self.storage_url[len("sqlite:///"):]).exists()
        if not create and missing:  # do not leave an empty database behind a status or export of nothing
            raise StudyError(f"no study named {self.name!r}: {self.storage_url} does not exist (run the study first)")
        for attempt in range(5):
            try:
                study = self._open_optuna_study(create)
                break
            except StorageError as exc:
                # Workers starting together race to create the schema or the study ("duplicate key"); the loser
                # finds it created a moment later.
                if "duplicate key" not in str(exc) and "already exists" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.5 + attempt)
        existing = [d.name.lower() for d in study.directions]
        if existing != self.directions:
            raise ConfigError(
                f"study.objectives: study {self.name!r} in {storage_mod.mask_url(self.storage_url)} was created with "
                f"directions {existing}, this file asks for {self.directions}; use another study.name"
            )
        stored = study.user_attrs.get("objectives")
        if stored is None:
            with storage_mod.translate_errors(self.storage_url):
                study.set_user_attr("objectives", self.objectives)
        elif stored != self.objectives:
            raise ConfigError(
                f"study.objectives: study {self.name!r} optimises {stored}, this file asks for {self.objectives}; "
                "use another study.name"
            )
        return study

    def _open_optuna_study(self, create: bool):
        import optuna

        storage = storage_mod.open_storage(self.storage_url)
        with storage_mod.translate_errors(self.storage_url):
            if not create:
                try:
                    return optuna.load_study(study_name=self.name, storage=storage, sampler=self._sampler())
                except KeyError:
                    raise StudyError(
                        f"no study named {self.name!r} in {storage_mod.mask_url(self.storage_url)} (run it first)"
                    ) from None
            return optuna.create_study(
                study_name=self.name, storage=storage, sampler=self._sampler(),
                directions=self.directions, load_if_exists=True,
            )

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of the search space, keyed by dotted config path."""
        import optuna.distributions as d

        out = {}
        for path, dist in self.config.search_space.items():
            if isinstance(dist, CategoricalDistribution):
                out[path] = d.CategoricalDistribution([_hashable(c) for c in dist.choices])
            elif isinstance(dist, FloatDistribution):
                out[path] = d.FloatDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                out[path] = d.IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
        return out

    # ------------------------------------------------------------------------------------------------ run
    def run(self, objective: Callable | None = None, *, progress: bool = True) -> StudySummary:
        """Run or continue the study until it holds `study.trials` finished trials (or time/failures run out).

        Args:
            objective: optional custom objective `fn(TrialResult) -> float | tuple` (else `study.objective`, else
                the named `study.objectives` metrics).
        Raises:
            ConfigError, StorageError: before anything runs; StudyError: too many failed trials.
        """

        settings = self.config.study
        objective = objective or settings.objective
        from eeopt.study.trial import check_objective_names, load_objective

        if isinstance(objective, str):
            load_objective(objective)  # fail before Ray starts
        elif objective is None:
            check_objective_names(self.objectives)
        _check_names(self.config)
        study = self.optuna_study()
        mlflow_client = tracking.client(self.tracking_uri)
        self._fail_dead_trials(study, mlflow_client)
        with storage_mod.translate_errors(self.tracking_uri):
            experiment_id = tracking.ensure_experiment(mlflow_client, self.experiment_name, self.artifact_root)
            parent = tracking.start_parent_run(
                mlflow_client, experiment_id, self.name,
                {"eeopt.storage": storage_mod.mask_url(self.storage_url) or "",
                 "eeopt.study_file": str(self.path) if self.path else ""},
            )
        tracking.log_params(mlflow_client, parent, tracking.params_from_config(
            self.config.model_dump(mode="json", exclude={"search_space"})))

        from eeopt.study.tune import run_with_tune

        reporter = _Reporter(enabled=progress)
        state, outcome = "KILLED", None
        try:
            outcome = run_with_tune(
                self, study, mlflow_client, experiment_id, parent, objective=objective, reporter=reporter
            )
            state = "KILLED" if outcome.interrupted else "FAIL" if outcome.too_many_failures else "COMPLETE"
        finally:
            tracking.finish_run(mlflow_client, parent, state)
        summary = self.summary(study, interrupted=outcome.interrupted)
        if outcome.too_many_failures:
            raise StudyError(
                f"study {self.name!r} stopped after {outcome.failures} failed trials (study.max_failures = "
                f"{settings.max_failures}); last error: {outcome.last_error}"
            )
        return summary

    def _fail_dead_trials(self, study, mlflow_client) -> None:
        """Mark trials whose process died (no heartbeat for a while) failed, in Optuna and in MLflow."""
        import optuna
        from optuna.trial import TrialState

        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if not before:
            return
        with warnings.catch_warnings(), storage_mod.translate_errors(self.storage_url):
            warnings.simplefilter("ignore")  # fail_stale_trials is marked experimental
            optuna.storages.fail_stale_trials(study)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if trial.number in before:
                reason = "its process stopped sending heartbeats (killed?)"
                study._storage.set_trial_user_attr(trial._trial_id, ATTR_ERROR, reason)
                run_id = trial.user_attrs.get(ATTR_MLFLOW_RUN)
                if run_id:
                    tracking.finish_run(mlflow_client, run_id, "FAIL", reason)
                log.warning("trial %d: marked failed, %s", trial.number, reason)

    # ------------------------------------------------------------------------------------------------ reports
    def summary(self, study=None, interrupted: bool = False) -> StudySummary:
        from optuna.trial import TrialState

        study = study or self.optuna_study(create=False)
        trials = study.get_trials(deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        return StudySummary(
            name=self.name,
            completed=count[TrialState.COMPLETE],
            pruned=count[TrialState.PRUNED],
            failed=count[TrialState.FAIL],
            running=count[TrialState.RUNNING],
            waiting=count[TrialState.WAITING],
            target=self.config.study.trials,
            interrupted=interrupted,
            best=[self._row(t) for t in _best_trials(study)],
            storage=storage_mod.mask_url(self.storage_url),
            tracking_uri=storage_mod.mask_url(self.tracking_uri),
        )

    def export(self) -> list[dict[str, Any]]:
        """One row per trial: number, state, params, val/test metrics (from MLflow), MLflow run id, error."""
        study = self.optuna_study(create=False)
        mlflow_client = tracking.client(self.tracking_uri)
        rows = []
        for trial in study.get_trials(deepcopy=False):
            row = self._row(trial)
            run_id = trial.user_attrs.get(ATTR_MLFLOW_RUN)
            if run_id:
                with storage_mod.translate_errors(self.tracking_uri):
                    run = mlflow_client.get_run(run_id)
                row.update({k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(("val/", "test/"))})
            rows.append(row)
        return rows

    def _row(self, trial) -> dict[str, Any]:
        row: dict[str, Any] = {
            "number": trial.number,
            "state": trial.state.name,
            **{f"objective/{name}": v for name, v in zip(self.objectives, trial.values or [None] * len(self.objectives))},
            **{f"param/{k}": v for k, v in trial.params.items()},
            **{k: v for k, v in sorted(trial.user_attrs.items()) if k.startswith("test/")},
            "mlflow_run_id": trial.user_attrs.get(ATTR_MLFLOW_RUN),
            "error": trial.user_attrs.get(ATTR_ERROR),
        }
        return row

    def where_to_look(self) -> list[str]:
        uri = self.tracking_uri
        return [
            f"mlflow ui --backend-store-uri {uri}   (or: eeopt ui {self.path or 'STUDY.yaml'})",
            f"optuna-dashboard {storage_mod.mask_url(self.storage_url)}   (or: eeopt dashboard {self.path or 'STUDY.yaml'})",
        ]


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    """Every study in an Optuna storage with its trial counts and directions."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_mod.open_storage(storage_url, heartbeat=False)
    with storage_mod.translate_errors(storage_url):
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        rows = []
        for s in summaries:
            trials = storage.get_all_trials(s._study_id, deepcopy=False)
            rows.append({
                "name": s.study_name,
                "directions": [d.name.lower() for d in s.directions],
                "objectives": s.user_attrs.get("objectives"),
                "complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
                "running": sum(t.state == TrialState.RUNNING for t in trials),
                "trials": len(trials),
                "started": s.datetime_start.isoformat(timespec="seconds") if s.datetime_start else None,
            })
    return rows


def _best_trials(study) -> list:
    from optuna.trial import TrialState

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.number)


def _hashable(value: Any) -> Any:
    # Optuna categorical choices must be None, bool, int, float or str.
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _check_names(config: StudyConfig) -> None:
    """Registry names (dataset, backbone, calibrator, score) checked before Ray starts, for every sampled choice."""
    from eeopt.training.checks import check_train_config

    check_train_config(config.train_config(), source="study file")
    for path, dist in config.search_space.items():
        if isinstance(dist, CategoricalDistribution):
            for choice in dist.choices:
                check_train_config(config.train_config({path: choice}), source=f"search_space.{path}")


class _Reporter:
    """Progress of a study on stderr, one timestamped line per event (trial started, epoch, done, failed)."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console

        self.enabled = enabled
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.t0 = time.time()

    def line(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[{time.time() - self.t0:6.0f}s] {text}", markup=False)
