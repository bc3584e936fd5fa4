"""The Ray Tune run of a study: Ray set-up, the scheduler (early stopping), the `tune.Tuner` that pairs the
`StudySearcher` on the driver with `run_trial_on_worker` on the workers, and what happens on Ctrl-C.

`ray_session` starts a local Ray (with a watchdog that ends it if this driver is killed) or joins the cluster at
`study.ray.address`, and checks that some node can run a trial; `run_tune` runs the trials, with two upkeep
threads (Optuna: heartbeats, dead workers' trials failed and their slots freed; MLflow: the parent run's heartbeat,
runs left to close) so that neither store's slowness delays the other's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console tables would drown eeopt's progress lines

from ray import tune  # noqa: E402

from eeopt.config import RayConfig, ResourcesConfig  # noqa: E402
from eeopt.errors import ConfigError  # noqa: E402
from eeopt.stores import Stores, mask_secrets  # noqa: E402
from eeopt.study.cluster import is_cluster, join_location  # noqa: E402
from eeopt.study.progress import Reporter  # noqa: E402
from eeopt.study.records import EPOCH_METRIC, TrialReport  # noqa: E402
from eeopt.study.searcher import SearchPlan, StudySearcher, heartbeat_every  # noqa: E402
from eeopt.study.tracking import StudyRuns  # noqa: E402
from eeopt.study.trials import TrialStore  # noqa: E402
from eeopt.study.worker import run_trial_on_worker  # noqa: E402


@dataclasses.dataclass(frozen=True)
class TuneOutcome:
    """How the Tune run ended: interrupted (Ctrl-C; running trials were requeued), stopped by failures, or by a
    store that stopped answering."""

    interrupted: bool
    failures: int
    too_many_failures: bool
    last_error: str | None
    storage_failed: bool = False

    @property
    def state(self) -> str:
        """The run's end as its MLflow parent run records it: KILLED, FAIL or COMPLETE."""
        if self.interrupted:
            return "KILLED"
        return "FAIL" if self.too_many_failures or self.storage_failed else "COMPLETE"


def run_tune(plan: SearchPlan, store: TrialStore, runs: StudyRuns, reporter: Reporter, stores: Stores,
             objective_fn: Callable | None = None) -> TuneOutcome:
    """Run trials until the study holds `study.trials` finished ones, time or failures run out, or Ctrl-C, on the
    Ray that `ray_session` started or joined. Trials still running at the end (Ctrl-C) are requeued.

    `stores` reach the workers through Ray's object store, never through Tune's files (their URLs may hold a
    password). The trials' plots are drawn by one `plotter.PlotWriter` beside them, waited for at the end.
    """
    from eeopt.study.plotter import drain_plot_writer, start_plot_writer

    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    stopped: set[str] = set()
    searcher = StudySearcher(plan, store, runs, reporter, stopped)
    plot_writer = start_plot_writer(stores)
    tuner = _tuner(plan, searcher, _scheduler(plan.settings.pruner, stopped), objective_fn, stores, plot_writer)
    resources = plan.settings.resources
    reporter.line(f"study {store.name}: {store.counts().occupied} of {plan.settings.trials} trials done or running; "
                  f"running up to {resources.max_concurrent} at once")
    interrupted = False
    every = heartbeat_every(plan.settings.heartbeat_grace)
    upkeep = [_UpkeepThread(searcher.upkeep_optuna, searcher.reporter, every, "eeopt-optuna-upkeep"),
              _UpkeepThread(searcher.upkeep_mlflow, searcher.reporter, every, "eeopt-mlflow-upkeep")]
    for thread in upkeep:
        thread.start()
    try:
        with reporter.showing():
            tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for thread in upkeep:
            thread.stop()
        if searcher.running:
            interrupted = True
            searcher.requeue_all()
        if searcher.unclosed:
            searcher.upkeep_mlflow()  # a last try at the runs the tracking store did not take
        drain_plot_writer(plot_writer, reporter, expected=searcher.plots_sent)
    return TuneOutcome(
        interrupted=interrupted,
        failures=searcher.failures,
        too_many_failures=searcher.stop_reason == "failures",
        last_error=searcher.last_error,
        storage_failed=searcher.stop_reason == "storage",
    )


@contextlib.contextmanager
def ray_session(settings: RayConfig, resources: ResourcesConfig, reporter: Reporter) -> Iterator[None]:
    """Start (or join) Ray unless it is up, check that one of its nodes can run a trial, and shut down a Ray this
    call started when done. A local Ray gets a watchdog (`reaper.Reaper`) that ends its processes should this
    driver be killed.

    Raises:
        ConfigError: no node has the CPUs or GPUs one trial asks for (`study.resources`).
    """
    import ray

    reaper = None
    started = not ray.is_initialized()
    if started:
        from eeopt.study import reaper as reaper_mod

        before = reaper_mod.children()
        reporter.line(f"joining the Ray cluster at {settings.address}" if is_cluster(settings.address)
                      else "starting a local Ray")
        _init_ray(settings)
        if not is_cluster(settings.address):
            reaper = reaper_mod.Reaper.for_new_children(before)
    try:
        _check_resources(resources, settings.address)
        yield
    finally:
        if started:
            ray.shutdown()
        if reaper is not None:
            reaper.release()


def _init_ray(settings: RayConfig) -> None:
    """Start a local Ray or join a cluster. Workers of a local Ray get this process's working folder and
    PYTHONPATH, so a custom objective importable here is importable there; a cluster's nodes have eeopt
    installed (their own PYTHONPATH). A local Ray is always a new one (`address="local"`): with `None`, Ray would
    join whatever `ray start` last started on this machine or `RAY_ADDRESS` names, and then refuse `num_cpus`."""
    import ray

    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                  configure_logging=True)
    if not is_cluster(settings.address):
        kwargs["num_cpus"] = settings.num_cpus
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            [str(Path.cwd()), *filter(None, [os.environ.get("PYTHONPATH")])])}}
    ray.init(address=settings.address if is_cluster(settings.address) else "local", **kwargs)


def _check_resources(resources: ResourcesConfig, address: str | None) -> None:
    """Raise `ConfigError` unless some alive node has `cpus_per_trial` CPUs and `gpus_per_trial` GPUs (a fraction
    of a GPU is fine: Ray shares it); Tune would otherwise wait forever."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    where = f"the Ray cluster at {address}" if is_cluster(address) else "this machine's Ray"
    for key, field, asked in (("CPU", "cpus_per_trial", resources.cpus_per_trial),
                              ("GPU", "gpus_per_trial", resources.gpus_per_trial)):
        most = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if asked > most:
            raise ConfigError(f"study.resources.{field}: a trial asks for {asked:g} {key}s, but no node of {where} "
                              f"has that many (the largest has {most:g})")


def _scheduler(pruner: str, stopped: set[str]):
    """Tune's scheduler for `study.pruner`, recording in `stopped` the trials it stops before their end.

    Time counts in epochs (`time_attr="epoch"`): progress reports within an epoch carry no epoch, so the schedulers
    pass over them (Tune's own `training_iteration` counts every report)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

    base = {"asha": ASHAScheduler, "median": MedianStoppingRule, "none": FIFOScheduler}[pruner]

    class _Recording(base):  # type: ignore[misc, valid-type]
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and TrialReport.from_result(result) is None:
                stopped.add(trial.trial_id)
            return decision

    if pruner == "asha":
        return _Recording(time_attr="epoch", metric=EPOCH_METRIC, mode="max", max_t=10_000, grace_period=1,
                          reduction_factor=2)
    if pruner == "median":
        return _Recording(time_attr="epoch", metric=EPOCH_METRIC, mode="max", grace_period=1,
                          min_samples_required=2)
    return _Recording()


class _WorkerErrors(tune.Callback):
    """The error text of a Ray worker that died, for the trial's FAIL record."""

    def __init__(self, searcher: StudySearcher):
        self.searcher = searcher

    def on_trial_error(self, iteration, trials, trial, **info):
        self.searcher.errors[trial.trial_id] = _error_text(trial)


class _UpkeepThread(threading.Thread):
    """Calls `task()` every `every` seconds, independent of Tune's loop (which can block for long: waiting for a
    trial, or on a slow store)."""

    def __init__(self, task: Callable[[], None], reporter: Reporter, every: float, name: str):
        super().__init__(name=name, daemon=True)
        self.task = task
        self.reporter = reporter
        self.every = every
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.every):
            try:
                self.task()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next round; the thread must live
                self.reporter.line(f"upkeep: {type(exc).__name__}: {mask_secrets(str(exc))[:300]}")

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=60)


def _tuner(plan: SearchPlan, searcher: StudySearcher, scheduler, objective_fn: Callable | None,
           stores: Stores, plot_writer) -> tune.Tuner:
    settings = plan.settings
    resources = settings.resources
    trainable = tune.with_resources(
        tune.with_parameters(run_trial_on_worker, objective_fn=objective_fn, stores=stores, plot_writer=plot_writer),
        {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial},
    )
    return tune.Tuner(
        trainable,
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
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",  # workers may start in the same second
            storage_path=join_location(plan.runs_dir, "ray"),
            verbose=0,
            callbacks=[_WorkerErrors(searcher)],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _error_text(trial) -> str:
    """The last line of a failed Ray trial's error file (the exception), or a generic text."""
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).exists():
            lines = [ln for ln in Path(path).read_text().strip().splitlines() if ln.strip()]
            return lines[-1][:500] if lines else "the Ray worker failed"
    except OSError:
        pass
    return "the Ray worker failed"
