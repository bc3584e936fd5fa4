"""The Ray Tune run of a study: Ray set-up, the scheduler (early stopping), the `tune.Tuner` that pairs the
`StudySearcher` on the driver with `run_trial_on_worker` on the workers, and what happens on Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console tables would drown eeopt's progress lines

from ray import tune  # noqa: E402

from eeopt.config import RayConfig  # noqa: E402
from eeopt.study.progress import Reporter  # noqa: E402
from eeopt.study.records import EPOCH_METRIC, TrialReport  # noqa: E402
from eeopt.study.searcher import SearchPlan, StudySearcher  # noqa: E402
from eeopt.study.tracking import StudyRuns  # noqa: E402
from eeopt.study.trials import TrialStore  # noqa: E402
from eeopt.study.worker import run_trial_on_worker  # noqa: E402


@dataclasses.dataclass(frozen=True)
class TuneOutcome:
    """How the Tune run ended: interrupted (Ctrl-C; running trials were requeued) or stopped by failures."""

    interrupted: bool
    failures: int
    too_many_failures: bool
    last_error: str | None


def run_tune(plan: SearchPlan, store: TrialStore, runs: StudyRuns, reporter: Reporter,
             objective_fn: Callable | None = None) -> TuneOutcome:
    """Run trials until the study holds `study.trials` finished ones, time or failures run out, or Ctrl-C.

    Starts a local Ray (or joins `study.ray.address`) unless one is up, and shuts down only a Ray it started.
    Trials still running at the end (Ctrl-C) are requeued.
    """
    import ray

    if not ray.is_initialized():
        address = plan.settings.ray.address
        reporter.line("starting a local Ray" if address is None else f"joining the Ray cluster at {address}")
    started_ray = _start_ray(plan.settings.ray)
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    stopped: set[str] = set()
    searcher = StudySearcher(plan, store, runs, reporter, stopped)
    tuner = _tuner(plan, searcher, _scheduler(plan.settings.pruner, stopped), objective_fn)
    resources = plan.settings.resources
    reporter.line(f"study {store.name}: {store.counts().occupied} of {plan.settings.trials} trials done or running; "
                  f"running up to {resources.max_concurrent} at once")
    interrupted = False
    try:
        with reporter.showing():
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


def _start_ray(settings: RayConfig) -> bool:
    """Start (or join) Ray unless it is up; True when this call started it. Workers get this process's working
    folder and PYTHONPATH, so a custom objective importable here is importable there."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                  configure_logging=True)
    if settings.address is None:
        kwargs["num_cpus"] = settings.num_cpus
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            [str(Path.cwd()), *filter(None, [os.environ.get("PYTHONPATH")])])}}
    ray.init(address=settings.address, **kwargs)
    return True


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


class _Upkeep(tune.Callback):
    """Heartbeats of running trials on every step; the error text of a Ray worker that died."""

    def __init__(self, searcher: StudySearcher):
        self.searcher = searcher

    def on_step_end(self, iteration, trials, **info):
        self.searcher.heartbeat()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.searcher.errors[trial.trial_id] = _error_text(trial)


def _tuner(plan: SearchPlan, searcher: StudySearcher, scheduler, objective_fn: Callable | None) -> tune.Tuner:
    settings = plan.settings
    resources = settings.resources
    trainable = tune.with_resources(
        tune.with_parameters(run_trial_on_worker, objective_fn=objective_fn),
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
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(plan.runs_dir / "ray"),
            verbose=0,
            callbacks=[_Upkeep(searcher)],
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
