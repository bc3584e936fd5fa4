"""The Ray Tune side of a study: a searcher that asks/tells the Optuna study in storage, the trainable that runs
one trial on a worker, and the loop that ties them to MLflow and the progress display.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console tables would drown eeopt's progress lines

from ray.tune.search import Searcher  # noqa: E402

from eeopt.study import storage as storage_mod
from eeopt.study import tracking
from eeopt.study.runner import ATTR_ERROR, ATTR_MLFLOW_RUN, ATTR_RAY_TRIAL

HEARTBEAT_EVERY = 10.0  # seconds between heartbeats of this driver's running trials
EPOCH_METRIC = "val_acc_last"  # what early stopping watches: the last exit's val accuracy after each epoch
#: Test numbers kept on the Optuna trial (user attributes) beside the objectives, for summaries and the dashboard;
#: the last exit's test accuracy is added as `test/exit{K}/accuracy`.
HEADLINE = ("test/acc_cost_auc", "test/acc_at_50", "test/acc_at_100")


@dataclasses.dataclass
class TuneOutcome:
    interrupted: bool
    failures: int
    too_many_failures: bool
    last_error: str | None


class StudySearcher(Searcher):
    """Tune searcher backed by an Optuna study in persistent storage.

    Before each trial it counts finished + running trials over the whole storage (so reruns and other workers
    share `study.trials`), asks Optuna (WAITING, i.e. requeued, trials come first), creates the MLflow child run and
    hands the trial its resolved config. On completion it tells Optuna COMPLETE, PRUNED or FAIL and closes the run.
    """

    def __init__(self, study, optuna_study, mlflow_client, experiment_id, parent_run_id, objective, reporter,
                 stopped_by_scheduler: set[str]):
        super().__init__(metric=None, mode=None)
        self.study = study
        self.optuna_study = optuna_study
        self.storage = optuna_study._storage
        self.mlflow = mlflow_client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.objective = objective
        self.reporter = reporter
        self.stopped_by_scheduler = stopped_by_scheduler
        self.distributions = study.distributions()
        self.running: dict[str, tuple[Any, str]] = {}  # tune trial id -> (optuna trial, mlflow run id)
        self.errors: dict[str, str] = {}
        self.failures = 0
        self.last_error: str | None = None
        self.stop_reason: str | None = None
        self.best = self._best_so_far()
        self.finished_before = self._finished()  # COMPLETE + PRUNED in storage when this run started
        self.finished_here = 0
        self._last_heartbeat = 0.0

    # Tune pickles its search algorithm to snapshot the experiment. eeopt never restores a Tune run (the Optuna
    # storage is the study's state), so the snapshot carries nothing: no database handles, no locks.
    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -------------------------------------------------------------------------------------------- quota
    def _best_so_far(self) -> float | None:
        """Best value of the first objective over the study's completed trials (earlier runs included)."""
        from optuna.trial import TrialState

        with storage_mod.translate_errors(self.study.storage_url):
            done = self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [t.values[0] for t in done if t.values]
        if not values:
            return None
        return max(values) if self.study.directions[0] == "maximize" else min(values)

    def _finished(self) -> int:
        from optuna.trial import TrialState

        with storage_mod.translate_errors(self.study.storage_url):
            return len(self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def progress(self) -> str:
        """'[3/8 done, 2 running, 1 failed]': the study's finished trials, this run's running and failed ones."""
        done = self.finished_before + self.finished_here
        return f"[{done}/{self.study.config.study.trials} done, {len(self.running)} running, {self.failures} failed]"

    def _occupied(self, up_to: int | None = None) -> int:
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        with storage_mod.translate_errors(self.study.storage_url):
            trials = self.optuna_study.get_trials(deepcopy=False, states=states)
        return sum(1 for t in trials if up_to is None or t.number <= up_to)

    def suggest(self, trial_id: str):
        from optuna.trial import TrialState

        settings = self.study.config.study
        if self.stop_reason is None and self.failures and self.failures >= settings.max_failures:
            self.stop_reason = "failures"
        if self.stop_reason is not None or self._occupied() >= settings.trials:
            return Searcher.FINISHED if not self.running else None
        with storage_mod.translate_errors(self.study.storage_url), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize": we beat it
            trial = self.optuna_study.ask(self.distributions)
        if self._occupied(up_to=trial.number) > settings.trials:
            # Another worker took the last slot between our count and our ask: give the trial back to the queue.
            self.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
            return Searcher.FINISHED if not self.running else None
        self.storage.record_heartbeat(trial._trial_id)
        params = dict(trial.params)
        requeued = ATTR_MLFLOW_RUN in trial.user_attrs  # an interrupted trial: same number, params, output folder
        run_id = tracking.start_child_run(
            self.mlflow, self.experiment_id, self.parent_run_id, self.study.name, trial.number,
            tags={"ray.trial_id": trial_id},
        )
        trial.set_user_attr(ATTR_MLFLOW_RUN, run_id)
        trial.set_user_attr(ATTR_RAY_TRIAL, trial_id)
        try:
            train_cfg = self.study.config.train_config(params)
        except Exception as exc:  # a sampled combination the schema rejects: a failed trial, not a crashed study
            self._finish(trial, run_id, "FAIL", error=str(exc))
            return None
        resources = settings.resources
        if train_cfg.training.threads is None:
            train_cfg = train_cfg.model_copy(
                update={"training": train_cfg.training.model_copy(update={"threads": max(1, int(resources.cpus_per_trial))})}
            )
        self.running[trial_id] = (trial, run_id)
        what = "resumed (requeued; continues from its checkpoint)" if requeued else "started"
        self.reporter.line(f"trial {trial.number} {what}  {_fmt_params(params)}")
        return {
            "eeopt": {
                "trial_number": trial.number,
                "train_config": train_cfg.model_dump(mode="json"),
                "sampled": params,
                "output_dir": str(self.study.runs_dir / f"trial-{trial.number}"),
                "tracking_uri": self.study.tracking_uri,
                "run_id": run_id,
                "objectives": self.study.objectives,
                "objective": self.objective,
                "seed": settings.seed + trial.number,
            }
        }

    # -------------------------------------------------------------------------------------------- results
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        entry = self.running.get(trial_id)
        if entry is not None and "epoch" in result and result.get("eeopt_status") is None:
            self.reporter.line(
                f"trial {entry[0].number} epoch {result['epoch']}: val acc (last exit) {result.get(EPOCH_METRIC, float('nan')):.4f}"
            )

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        entry = self.running.pop(trial_id, None)
        if entry is None:
            return
        trial, run_id = entry
        result = result or {}
        status = result.get("eeopt_status")
        if status == "COMPLETE":
            values = [float(result[f"objective_{i}"]) for i in range(len(self.study.objectives))]
            with storage_mod.translate_errors(self.study.storage_url):
                for key, value in result.items():
                    if key.startswith("headline:"):
                        trial.set_user_attr(key.removeprefix("headline:"), None if value != value else float(value))
            self._finish(trial, run_id, "COMPLETE", values=values)
        elif status == "FAIL":
            self._finish(trial, run_id, "FAIL", error=result.get("eeopt_error"))
        elif trial_id in self.stopped_by_scheduler:
            self._finish(trial, run_id, "PRUNED")
        elif error:
            self._finish(trial, run_id, "FAIL", error=self.errors.get(trial_id, "the Ray worker running it failed"))
        else:  # stopped from outside (Ctrl-C): back to the queue, re-run first next time
            self.requeue(trial, run_id)

    def _finish(self, trial, run_id: str, state: str, values=None, error: str | None = None) -> None:
        from optuna.trial import TrialState

        with storage_mod.translate_errors(self.study.storage_url):
            if error:
                trial.set_user_attr(ATTR_ERROR, error[:2000])
            if state == "COMPLETE":
                self.optuna_study.tell(trial, values)
            else:
                self.optuna_study.tell(trial, state=TrialState.PRUNED if state == "PRUNED" else TrialState.FAIL)
        tracking.finish_run(self.mlflow, run_id, state, error)
        if state == "FAIL":
            self.failures += 1
            self.last_error = error
            self.reporter.line(f"trial {trial.number} FAILED: {error}  {self.progress()}")
        elif state == "PRUNED":
            self.finished_here += 1
            self.reporter.line(f"trial {trial.number} pruned  {self.progress()}")
        else:
            self.finished_here += 1
            first = values[0]
            better = self.best is None or (first > self.best if self.study.directions[0] == "maximize" else first < self.best)
            if better:
                self.best = first
            shown = ", ".join(f"{n}={v:.4f}" for n, v in zip(self.study.objectives, values))
            self.reporter.line(
                f"trial {trial.number} done: {shown}  (best {self.study.objectives[0]} {self.best:.4f})  {self.progress()}"
            )

    def requeue(self, trial, run_id: str) -> None:
        from optuna.trial import TrialState

        with storage_mod.translate_errors(self.study.storage_url):
            self.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
        tracking.finish_run(self.mlflow, run_id, "KILLED", "interrupted; the trial was requeued")
        self.reporter.line(f"trial {trial.number} interrupted: requeued, it runs first next time")

    def requeue_all(self) -> int:
        entries = list(self.running.values())
        self.running.clear()
        for trial, run_id in entries:
            self.requeue(trial, run_id)
        return len(entries)

    def heartbeat(self) -> None:
        now = time.time()
        if now - self._last_heartbeat < HEARTBEAT_EVERY:
            return
        self._last_heartbeat = now
        for trial, _ in self.running.values():
            self.storage.record_heartbeat(trial._trial_id)


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# ------------------------------------------------------------------------------------------------------ trainable
def trainable(config: dict) -> None:
    """What a Ray worker runs: one eeopt trial, logging into its MLflow run; errors become a FAIL result."""
    from ray import tune

    from eeopt.config import TrainConfig

    p = config["eeopt"]
    last_acc = [math.nan]
    client = None
    try:
        client = tracking.client(p["tracking_uri"])
        run_id = p["run_id"]
        cfg = TrainConfig.model_validate(p["train_config"])
        tracking.log_params(client, run_id, tracking.params_from_config(p["train_config"], p["sampled"]))

        def on_epoch(epoch: int, row: dict[str, Any]) -> None:
            numeric = {f"train/{k}": float(v) for k, v in row.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
            tracking.log_metrics(client, run_id, numeric, step=epoch)
            accs = [v for k, v in sorted(row.items(), key=lambda kv: _exit_index(kv[0])) if k.startswith("val_acc_exit")]
            last_acc[0] = float(accs[-1]) if accs else math.nan
            tune.report({"epoch": epoch, EPOCH_METRIC: last_acc[0]})

        from eeopt.study.trial import run_trial

        result, values = run_trial(
            cfg, output_dir=p["output_dir"], on_epoch=on_epoch, objectives=p["objectives"],
            objective=p["objective"], seed=p["seed"],
        )
        tracking.log_metrics(client, run_id, result.metrics)
        _log_trial_artifacts(client, run_id, result)
        k = result.test.num_exits
        headline = {name: result.metrics[name] for name in (*HEADLINE, f"test/exit{k}/accuracy")}
        final = {"eeopt_status": "COMPLETE", EPOCH_METRIC: last_acc[0],
                 **{f"headline:{name}": v for name, v in headline.items()},  # flat: Tune flattens nested dicts
                 **{f"objective_{i}": v for i, v in enumerate(values)}}
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the trial, the study goes on
        final = {"eeopt_status": "FAIL", "eeopt_error": f"{type(exc).__name__}: {exc}", EPOCH_METRIC: last_acc[0]}
    tune.report(final)


def _exit_index(key: str) -> int:
    digits = "".join(ch for ch in key if ch.isdigit())
    return int(digits) if digits else -1


def _log_trial_artifacts(client, run_id: str, result) -> None:
    out = result.output_dir
    if out is None:
        return
    files = [out / name for name in ("val.npz", "test.npz", "config.yaml", "pareto.json", "metrics.json",
                                      "history.json", "model.pt")]
    tracking.log_artifacts(client, run_id, files)
    try:
        from eeopt.plots import save_trial_plots

        plots = save_trial_plots(result, out / "plots")
        tracking.log_artifacts(client, run_id, plots, artifact_path="plots")
    except ImportError:
        pass


# ------------------------------------------------------------------------------------------------------ the loop
def run_with_tune(study, optuna_study, mlflow_client, experiment_id, parent_run_id, *, objective, reporter) -> TuneOutcome:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

    settings = study.config.study
    started_ray = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                      configure_logging=True)
        if settings.ray.address is None:
            kwargs["num_cpus"] = settings.ray.num_cpus
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                [str(Path.cwd()), *filter(None, [os.environ.get("PYTHONPATH")])])}}
        ray.init(address=settings.ray.address, **kwargs)
        started_ray = True
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    stopped: set[str] = set()
    scheduler_cls = {"asha": ASHAScheduler, "median": MedianStoppingRule, "none": FIFOScheduler}[settings.pruner]

    class _Recording(scheduler_cls):  # type: ignore[misc, valid-type]
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and result.get("eeopt_status") is None:
                stopped.add(trial.trial_id)
            return decision

    if settings.pruner == "asha":
        scheduler = _Recording(metric=EPOCH_METRIC, mode="max", max_t=10_000, grace_period=1, reduction_factor=2)
    elif settings.pruner == "median":
        scheduler = _Recording(metric=EPOCH_METRIC, mode="max", grace_period=1, min_samples_required=2)
    else:
        scheduler = _Recording()

    searcher = StudySearcher(study, optuna_study, mlflow_client, experiment_id, parent_run_id, objective, reporter,
                             stopped)

    class _Callbacks(tune.Callback):
        def on_step_end(self, iteration, trials, **info):
            searcher.heartbeat()

        def on_trial_error(self, iteration, trials, trial, **info):
            searcher.errors[trial.trial_id] = _error_text(trial)

    resources = settings.resources
    trainable_with_resources = tune.with_resources(
        trainable, {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable_with_resources,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=-1,
            max_concurrent_trials=resources.max_concurrent,
            reuse_actors=True,  # a warm worker skips ~8 s of imports (torch, MLflow) per trial
            time_budget_s=settings.timeout,
            trial_name_creator=lambda t: f"trial-{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial-{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(study.runs_dir / "ray"),
            verbose=0,
            callbacks=[_Callbacks()],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    reporter.line(
        f"study {study.name}: {searcher._occupied()} of {settings.trials} trials done or running; "
        f"running up to {resources.max_concurrent} at once"
    )
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if searcher.running:
            interrupted = True
            searcher.requeue_all()
        if started_ray:
            ray.shutdown()
    return TuneOutcome(
        interrupted=interrupted,
        failures=searcher.failures,
        too_many_failures=searcher.stop_reason == "failures",
        last_error=searcher.last_error,
    )


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).exists():
            lines = [ln for ln in Path(path).read_text().strip().splitlines() if ln.strip()]
            return lines[-1][:500] if lines else "the Ray worker failed"
    except OSError:
        pass
    return "the Ray worker failed"
