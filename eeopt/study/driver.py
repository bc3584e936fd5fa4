"""The driver side of a study under Ray Tune: Ray set-up, the searcher that takes trials from the Optuna study in
storage, the scheduler (early stopping), the `tune.Tuner` that pairs them with `run_trial_on_worker` on the
workers, and what happens on Ctrl-C.

`ray_session` starts a local Ray (with a watchdog that ends it if this driver is killed) or joins the cluster at
`study.ray.address`, and checks that some node can run a trial; `run_tune` runs the trials, with two upkeep
threads (Optuna: heartbeats, dead workers' trials failed and their slots freed; MLflow: the parent run's heartbeat,
runs left to close) so that neither store's slowness delays the other's.

`StudySearcher` (a Tune `Searcher`): before each trial it claims a slot of the study's total over the whole storage
(so reruns and other workers share `study.trials`; requeued trials come first), opens the trial's MLflow child run
and hands the worker a `TrialSpec`. While it runs, each epoch's validation accuracy becomes the Optuna trial's
intermediate value (what Tune's schedulers decide on, so optuna-dashboard and the pruners see the same numbers) and
the worker's progress goes to the `Reporter`. When the trial ends it reads the worker's `TrialReport` and tells
Optuna COMPLETE, PRUNED or FAIL, or requeues a trial that was stopped from outside (Ctrl-C), and closes the MLflow
run.

A worker stops only when the study holds `study.trials` finished trials (or failures or time run out): while the
other slots are held by trials running elsewhere it waits, saying so, and takes over the slots of trials whose
process died (`upkeep_optuna` fails them once their heartbeat is `study.heartbeat_grace` seconds old;
`upkeep_mlflow` closes their runs). A store that does not answer delays trials (`retrying`) and, after a while,
ends the run cleanly.
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
from ray.tune.search import Searcher  # noqa: E402

from eeopt.config import RayConfig, ResourcesConfig, StudySettings  # noqa: E402
from eeopt.errors import ConfigError, StorageError  # noqa: E402
from eeopt.stores import Stores, mask_secrets  # noqa: E402
from eeopt.stores.urls import join_location  # noqa: E402
from eeopt.study.progress import Reporter, StudyHeader  # noqa: E402
from eeopt.study.tracking import StudyRuns  # noqa: E402
from eeopt.study.trials import (  # noqa: E402
    ATTR_MLFLOW_RUN, ATTR_MLFLOW_URL, ATTR_RAY_TRIAL, DEAD_TRIAL_REASON, SearchSpace, TrialStore, TrialTicket,
)
from eeopt.study.worker import (  # noqa: E402
    EPOCH_METRIC, EpochReport, ProgressReport, TrialReport, TrialSpec, run_trial_on_worker,
)


# ----------------------------------------------------------------------------------------------------
# The Ray Tune run: Ray set-up, the scheduler, the tuner, upkeep threads, Ctrl-C
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
             plot_writer, objective_fn: Callable | None = None) -> TuneOutcome:
    """Run trials until the study holds `study.trials` finished ones, time or failures run out, or Ctrl-C, on the
    Ray that `ray_session` started or joined. Trials still running at the end (Ctrl-C) are requeued.

    `stores` reach the workers through Ray's object store, never through Tune's files (their URLs may hold a
    password). The trials' plots go to `plot_writer` (`start_plot_writer`; None with `study.plots: false`), which
    the caller waits for (`drain_plot_writer`) once it has closed the study's run: it draws the last plots
    meanwhile.
    """
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    stopped: set[str] = set()
    searcher = StudySearcher(plan, store, runs, reporter, stopped)
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
    return TuneOutcome(
        interrupted=interrupted,
        failures=searcher.failures,
        too_many_failures=searcher.stop_reason == "failures",
        last_error=searcher.last_error,
        storage_failed=searcher.stop_reason == "storage",
    )


def is_cluster(address: str | None) -> bool:
    """Whether `study.ray.address` names a Ray cluster (whose nodes may be other machines) or a local Ray."""
    return address not in (None, "", "local")


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
    join whatever `ray start` last started on this machine or `RAY_ADDRESS` names, and then refuse `num_cpus`.

    The PYTHONPATH reaches a local Ray's workers through the environment its processes start with, not through a
    `runtime_env`: workers with a runtime environment of their own cannot use the ones Ray starts ahead (measured:
    two actors ready 1.2 s sooner, and two Python processes fewer started per study)."""
    import ray

    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                  configure_logging=True)
    if is_cluster(settings.address):
        ray.init(address=settings.address, **kwargs)
        return
    path = os.pathsep.join([str(Path.cwd()), *filter(None, [os.environ.get("PYTHONPATH")])])
    with _environment(PYTHONPATH=path):  # the raylet, and so every worker, starts with it
        ray.init(address="local", num_cpus=settings.num_cpus, **kwargs)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """This process's environment with `values` set, restored after."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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


# ----------------------------------------------------------------------------------------------------
# The searcher: trials from the Optuna study in storage, and how they end
#: Seconds between two looks at the storage while this worker has no slot (Tune asks about every second).
LOOK_EVERY = 2.0


def heartbeat_every(grace: float) -> float:
    """Seconds between heartbeats for a heartbeat grace of `grace` seconds: four beats per grace, at most 10 s."""
    return max(0.25, min(10.0, grace / 4))


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """What the searcher needs from the study file: its settings and search space, its objectives (names and
    directions, or a custom objective's 'module:function'), and where trials write."""

    settings: StudySettings
    space: SearchSpace
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    objective_ref: str | None
    runs_dir: str

    def trial_spec(self, ticket: TrialTicket, mlflow_run_id: str) -> TrialSpec:
        """What the worker gets for a claimed trial.

        Raises:
            ConfigError: the sampled combination does not validate.
        """
        threads = max(1, int(self.settings.resources.cpus_per_trial))
        cfg = self.space.train_config(ticket.params, threads=threads)
        return TrialSpec(
            trial_number=ticket.number,
            train_config=cfg.model_dump(mode="json"),
            sampled=self.space.decode(ticket.params),
            output_dir=join_location(self.runs_dir, f"trial-{ticket.number}"),
            mlflow_run_id=mlflow_run_id,
            objectives=self.objectives,
            objective_ref=self.objective_ref,
            plots=self.settings.plots,
        )


@dataclasses.dataclass(frozen=True)
class _Running:
    ticket: TrialTicket
    run_id: str


class StudySearcher(Searcher):
    """Tune searcher backed by a `TrialStore` (an Optuna study in persistent storage).

    Args:
        stopped_by_scheduler: Tune trial ids the scheduler stopped (filled by the loop's scheduler): they end PRUNED.
    """

    def __init__(self, plan: SearchPlan, store: TrialStore, runs: StudyRuns, reporter: Reporter,
                 stopped_by_scheduler: set[str]):
        super().__init__(metric=None, mode=None)
        self.plan = plan
        self.store = store
        self.runs = runs
        self.reporter = reporter
        self.stopped_by_scheduler = stopped_by_scheduler
        self.distributions = plan.space.distributions()
        self.running: dict[str, _Running] = {}  # by Tune trial id
        self.errors: dict[str, str] = {}  # by Tune trial id: what the Ray worker died of
        self.failures = 0
        self.last_error: str | None = None
        self.stop_reason: str | None = None
        self.best = store.best_value()
        self.finished_before = store.counts().finished  # COMPLETE + PRUNED in storage when this run started
        self.finished_here = 0
        self._next_look = 0.0  # monotonic time before which `suggest` does not ask the storage again
        self._waiting_for: tuple[int, ...] = ()
        self._trouble_since: float | None = None  # when the stores stopped answering (None: they answer)
        self.unclosed: list[tuple[str, str, str | None]] = []  # MLflow runs to close: (run id, state, error)
        self.starting: TrialTicket | None = None  # claimed, its MLflow run being opened
        reporter.begin(StudyHeader(store.name, plan.settings.trials, self.finished_before,
                                   plan.settings.resources.max_concurrent, plan.objectives[0],
                                   plan.directions[0] == "maximize", self.best))

    # Tune pickles its search algorithm to snapshot the experiment. eeopt never restores a Tune run (the Optuna
    # storage is the study's state), so the snapshot carries nothing: no database handles, no locks.
    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -------------------------------------------------------------------------------------------- start
    def suggest(self, trial_id: str) -> dict | None:
        settings = self.plan.settings
        if self.stop_reason is None and self.failures and self.failures >= settings.max_failures:
            self.stop_reason = "failures"
        if self.stop_reason:
            return Searcher.FINISHED if not self.running else None
        if time.monotonic() < self._next_look:
            return None
        try:
            ticket = self.store.claim(self.distributions, settings.trials)
            config = self._no_slot() if ticket is None else self._start(trial_id, ticket)
        except StorageError as exc:
            self._store_trouble(exc)
            return None
        self._trouble_since = None
        return config

    def _start(self, trial_id: str, ticket: TrialTicket) -> dict | None:
        """Open the trial's MLflow run and hand Tune its spec (a trial whose MLflow run cannot be opened goes back
        to the queue). Until it runs, the ticket beats with the running ones (`starting`): a slow tracking server
        must not make this driver's own trial look dead."""
        self.starting = ticket
        try:
            try:
                run_id = self.runs.start_trial(ticket.number, tags={"ray.trial_id": trial_id,
                                                                    "eeopt.origin": ticket.origin})
            except StorageError:
                self.store.requeue(ticket)
                raise
            url = self.runs.run_url(run_id)
            if not self.store.set_attrs(ticket, {ATTR_MLFLOW_RUN: run_id, ATTR_MLFLOW_URL: url,
                                                 ATTR_RAY_TRIAL: trial_id}):
                self._close_run(run_id, "FAIL", DEAD_TRIAL_REASON)  # failed as dead meanwhile: not ours any more
                return None
            self.store.set_note(ticket, f"MLflow run: [{run_id}]({url})  \nIts metrics, plots and files "
                                        f"(serve the MLflow UI with `eeopt ui STUDY.yaml`).")
            try:
                spec = self.plan.trial_spec(ticket, run_id)
            except Exception as exc:  # noqa: BLE001 - a sampled combination the schema rejects: a failed trial
                self._fail(_Running(ticket, run_id), str(exc))
                return None
            self.running[trial_id] = _Running(ticket, run_id)
        finally:
            self.starting = None
        self.reporter.trial_started(ticket.number, spec.sampled, ticket.requeued)
        return spec.to_config()

    def _no_slot(self) -> str | None:
        """No slot left: FINISHED when the study holds its total, else wait (None) for the trials that hold the
        other slots: this run's, other workers', or a killed driver's (failed once silent for the grace)."""
        self._next_look = time.monotonic() + LOOK_EVERY
        if self.running:
            return None
        if self.store.counts().finished >= self.plan.settings.trials:
            return Searcher.FINISHED
        others = tuple(self.store.waiting_on(own=()))
        if others and others != self._waiting_for:
            grace = self.plan.settings.heartbeat_grace
            self.reporter.line(
                f"waiting for trial{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}, running "
                f"elsewhere: another worker's, or a killed run's (a trial silent for {grace:g} s, "
                f"study.heartbeat_grace, is failed and its slot taken)  {self.reporter.status()}")
        self._waiting_for = others
        return None

    def _store_trouble(self, exc: StorageError) -> None:
        """A store did not answer: say so once, look again later, and stop starting trials after a while."""
        now = time.monotonic()
        if self._trouble_since is None:
            self._trouble_since = now
            self.reporter.line(f"{exc}; trying again  {self.reporter.status()}")
        self.last_error = str(exc)
        self._next_look = now + LOOK_EVERY
        if now - self._trouble_since > 2 * self.store.retry_for:
            self.stop_reason = "storage"

    # -------------------------------------------------------------------------------------------- results
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        entry = self.running.get(trial_id)
        if entry is None:
            return
        progress = ProgressReport.from_result(result)
        if progress is not None:
            if progress.phase == "store":
                self.reporter.line(f"trial {entry.ticket.number}: its worker waits for the {progress.store} "
                                   f"({progress.waited:.0f} s so far; retried for up to "
                                   f"{self.plan.settings.store_retry_s:g} s, study.store_retry_s)  "
                                   f"{self.reporter.status()}")
            self.reporter.trial_progress(entry.ticket.number, progress)
            return
        epoch = EpochReport.from_result(result)
        if epoch is not None:
            try:
                self.store.report(entry.ticket, epoch.epoch, epoch.val_acc_last)
            except StorageError as exc:  # an intermediate value lost; the trial goes on
                self.reporter.line(f"trial {entry.ticket.number} epoch {epoch.epoch}: not recorded in Optuna ({exc})")
            self.reporter.trial_epoch(entry.ticket.number, epoch.epoch, epoch.val_acc_last)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        entry = self.running.pop(trial_id, None)
        if entry is None:
            return
        report = TrialReport.from_result(result)
        if report is not None and report.status == "COMPLETE":
            self._complete(entry, report)
        elif report is not None:
            self._fail(entry, report.error)
        elif trial_id in self.stopped_by_scheduler:
            self._prune(entry)
        elif error:
            self._fail(entry, self.errors.get(trial_id, "the Ray worker running it failed"))
        else:  # stopped from outside (Ctrl-C): back to the queue, re-run first next time
            self._requeue(entry)

    def _complete(self, entry: _Running, report: TrialReport) -> None:
        if not self._record(entry, "COMPLETE", lambda: self.store.complete(entry.ticket, report.values,
                                                                           attrs=report.headline)):
            return
        self.finished_here += 1
        first = report.values[0]
        maximize = self.plan.directions[0] == "maximize"
        if self.best is None or (first > self.best if maximize else first < self.best):
            self.best = first
        shown = " ".join(f"{n}={v:.4f}" for n, v in zip(self.plan.objectives, report.values))
        self.reporter.trial_ended(entry.ticket.number, "done", shown, best=self.best)
        self.runs.log_summary(self.store)

    def _fail(self, entry: _Running, error: str | None) -> None:
        self.failures += 1
        self.last_error = error
        if self._record(entry, "FAIL", lambda: self.store.fail(entry.ticket, error), error):
            self.reporter.trial_ended(entry.ticket.number, "failed", error or "")
            self.runs.log_summary(self.store)

    def _prune(self, entry: _Running) -> None:
        if self._record(entry, "PRUNED", lambda: self.store.prune(entry.ticket)):
            self.finished_here += 1
            self.reporter.trial_ended(entry.ticket.number, "pruned")
            self.runs.log_summary(self.store)

    def _requeue(self, entry: _Running) -> None:
        try:
            self.store.requeue(entry.ticket)
        except StorageError as exc:
            self.reporter.trial_ended(entry.ticket.number, "interrupted", f"not requeued ({exc}); it is failed once "
                                      "its heartbeat is study.heartbeat_grace old")
            return
        self._close_run(entry.run_id, "KILLED", "interrupted; the trial was requeued")
        self.reporter.trial_ended(entry.ticket.number, "requeued", "interrupted; it runs first next time")

    def _record(self, entry: _Running, state: str, tell, error: str | None = None) -> bool:
        """Tell Optuna (`tell()`) and close the MLflow run as `state`. False, with a line, when the trial was
        failed as dead meanwhile (this driver was silent for the grace) or the stores could not be written: the
        trial then counts as failed, and the study goes on."""
        number = entry.ticket.number
        try:
            told = tell()
        except StorageError as exc:
            self.reporter.trial_ended(number, "failed", f"its end ({state}) could not be recorded: {exc}; it is "
                                      "failed once its heartbeat is study.heartbeat_grace old")
            return False
        self._close_run(entry.run_id, state if told else "FAIL", error if told else DEAD_TRIAL_REASON)
        if not told:
            self.reporter.trial_ended(number, "failed", f"it ended ({state}) after another worker had failed it as "
                                      f"dead ({DEAD_TRIAL_REASON})")
        return told

    # -------------------------------------------------------------------------------------------- upkeep
    def requeue_all(self) -> int:
        """Requeue every trial still running (after Ctrl-C or a crash of the loop); returns how many."""
        entries = list(self.running.values())
        self.running.clear()
        for entry in entries:
            self._requeue(entry)
        return len(entries)

    def _close_run(self, run_id: str, state: str, error: str | None) -> None:
        """Close an MLflow run; one the tracking store does not take now is kept and closed by `upkeep_mlflow`."""
        try:
            self.runs.finish_trial(run_id, state, error)
        except StorageError as exc:
            self.reporter.line(f"MLflow run {run_id} not closed yet ({exc}); trying again")
            self.unclosed.append((run_id, state, error))

    def upkeep_optuna(self) -> None:
        """Heartbeats for this driver's running trials; then the trials of dead processes (never this driver's)
        are failed, their slots free, their MLflow runs left to `upkeep_mlflow`. Called by a thread every
        `heartbeat_every(grace)` seconds, apart from MLflow's upkeep so that a slow tracking server never delays
        a heartbeat; a storage that does not answer is reported and tried again next time, never raised."""
        try:
            mine = [entry.ticket for entry in list(self.running.values())] + [t for t in [self.starting] if t]
            self.store.heartbeat(mine)
            for dead in self.store.fail_dead_trials(exclude={t.trial_id for t in mine}):
                self.reporter.line(f"trial {dead.number}: marked failed, {DEAD_TRIAL_REASON}")
                if dead.mlflow_run_id:
                    self.unclosed.append((dead.mlflow_run_id, "FAIL", DEAD_TRIAL_REASON))
        except StorageError as exc:
            every = heartbeat_every(self.plan.settings.heartbeat_grace)
            self.reporter.line(f"upkeep: {exc}; trying again in {every:g} s")

    def upkeep_mlflow(self) -> None:
        """The MLflow parent run's heartbeat; the runs still to close (dead trials', and this driver's that the
        store did not take); the runs killed drivers left open. Reported and tried again next time, never raised."""
        try:
            self.runs.beat()
            while self.unclosed:
                run_id, state, error = self.unclosed[0]
                self.runs.finish_trial(run_id, state, error)
                self.unclosed.pop(0)
            self.runs.close_dead_runs(self.plan.settings.heartbeat_grace)
        except StorageError as exc:
            self.reporter.line(f"upkeep: {exc}; trying again")
