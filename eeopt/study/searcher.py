"""The driver side of a study under Ray Tune: a Tune `Searcher` that takes its trials from the Optuna study in
storage and records how they end.

Before each trial it claims a slot of the study's total over the whole storage (so reruns and other workers share
`study.trials`; requeued trials come first), opens the trial's MLflow child run and hands the worker a `TrialSpec`.
While it runs, each epoch's validation accuracy becomes the Optuna trial's intermediate value (what Tune's
schedulers decide on, so optuna-dashboard and the pruners see the same numbers) and the worker's progress goes to the
`Reporter`. When the trial ends it reads the worker's `TrialReport` and tells Optuna COMPLETE, PRUNED or FAIL, or
requeues a trial that was stopped from outside (Ctrl-C), and closes the MLflow run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ray.tune.search import Searcher

from eeopt.config import StudySettings
from eeopt.study.progress import Reporter, StudyHeader
from eeopt.study.records import EpochReport, ProgressReport, TrialReport, TrialSpec
from eeopt.study.space import SearchSpace
from eeopt.study.tracking import StudyRuns
from eeopt.study.trials import ATTR_MLFLOW_RUN, ATTR_MLFLOW_URL, ATTR_RAY_TRIAL, TrialStore, TrialTicket

HEARTBEAT_EVERY = 10.0  # seconds between heartbeats of this driver's running trials


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """What the searcher needs from the study file: its settings and search space, its objectives (names and
    directions, or a custom objective's 'module:function'), and where trials write."""

    settings: StudySettings
    space: SearchSpace
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    objective_ref: str | None
    runs_dir: Path
    tracking_uri: str

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
            output_dir=str(self.runs_dir / f"trial-{ticket.number}"),
            tracking_uri=self.tracking_uri,
            mlflow_run_id=mlflow_run_id,
            objectives=self.objectives,
            objective_ref=self.objective_ref,
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
        self._last_heartbeat = 0.0
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
        ticket = None if self.stop_reason else self.store.claim(self.distributions, settings.trials)
        if ticket is None:
            return Searcher.FINISHED if not self.running else None
        run_id = self.runs.start_trial(ticket.number, tags={"ray.trial_id": trial_id})
        url = self.runs.run_url(run_id)
        self.store.set_attrs(ticket, {ATTR_MLFLOW_RUN: run_id, ATTR_MLFLOW_URL: url, ATTR_RAY_TRIAL: trial_id})
        self.store.set_note(ticket, f"MLflow run: [{run_id}]({url})  \nIts metrics, plots and files "
                                    f"(serve the MLflow UI with `eeopt ui STUDY.yaml`).")
        try:
            spec = self.plan.trial_spec(ticket, run_id)
        except Exception as exc:  # noqa: BLE001 - a sampled combination the schema rejects: a failed trial, not a crashed study
            self._fail(_Running(ticket, run_id), str(exc))
            return None
        self.running[trial_id] = _Running(ticket, run_id)
        self.reporter.trial_started(ticket.number, spec.sampled, ticket.requeued)
        return spec.to_config()

    # -------------------------------------------------------------------------------------------- results
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        entry = self.running.get(trial_id)
        if entry is None:
            return
        progress = ProgressReport.from_result(result)
        if progress is not None:
            self.reporter.trial_progress(entry.ticket.number, progress)
            return
        epoch = EpochReport.from_result(result)
        if epoch is not None:
            self.store.report(entry.ticket, epoch.epoch, epoch.val_acc_last)
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
        self.store.complete(entry.ticket, report.values, attrs=report.headline)
        self.runs.finish_trial(entry.run_id, "COMPLETE")
        self.finished_here += 1
        first = report.values[0]
        maximize = self.plan.directions[0] == "maximize"
        if self.best is None or (first > self.best if maximize else first < self.best):
            self.best = first
        shown = " ".join(f"{n}={v:.4f}" for n, v in zip(self.plan.objectives, report.values))
        self.reporter.trial_ended(entry.ticket.number, "done", shown, best=self.best)
        self.runs.log_summary(self.store)

    def _fail(self, entry: _Running, error: str | None) -> None:
        self.store.fail(entry.ticket, error)
        self.runs.finish_trial(entry.run_id, "FAIL", error)
        self.failures += 1
        self.last_error = error
        self.reporter.trial_ended(entry.ticket.number, "failed", error or "")
        self.runs.log_summary(self.store)

    def _prune(self, entry: _Running) -> None:
        self.store.prune(entry.ticket)
        self.runs.finish_trial(entry.run_id, "PRUNED")
        self.finished_here += 1
        self.reporter.trial_ended(entry.ticket.number, "pruned")
        self.runs.log_summary(self.store)

    def _requeue(self, entry: _Running) -> None:
        self.store.requeue(entry.ticket)
        self.runs.finish_trial(entry.run_id, "KILLED", "interrupted; the trial was requeued")
        self.reporter.trial_ended(entry.ticket.number, "requeued", "interrupted; it runs first next time")

    # -------------------------------------------------------------------------------------------- upkeep
    def requeue_all(self) -> int:
        """Requeue every trial still running (after Ctrl-C or a crash of the loop); returns how many."""
        entries = list(self.running.values())
        self.running.clear()
        for entry in entries:
            self._requeue(entry)
        return len(entries)

    def heartbeat(self) -> None:
        """Beat for this driver's running trials, at most every `HEARTBEAT_EVERY` seconds (called every step)."""
        now = time.time()
        if now - self._last_heartbeat < HEARTBEAT_EVERY:
            return
        self._last_heartbeat = now
        self.store.heartbeat(entry.ticket for entry in self.running.values())
