"""The worker side of a study: the Tune trainable that runs one trial on a Ray worker.

It receives a `TrialSpec`, runs `run_trial` (train -> evaluate -> search) with MLflow logging into the trial's run,
reports each epoch as an `EpochReport` (for early stopping, Optuna's intermediate values and progress lines), where
it stands within an epoch every `PROGRESS_EVERY` seconds as a `ProgressReport` (for the live view), and the outcome
as a `TrialReport`.
Every error becomes a FAIL report: the trial is recorded as failed and the study goes on. The trial trains on
the GPU (or share of one) Ray gave it, else the CPU (`pin_to_trial_resources`); the run records the node (and
GPUs) it ran on; the trial's folder may be a URI, synced after every epoch (`cluster.TrialFolder`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any

from eeopt.config import TrainConfig
from eeopt.stores import TrialRun, mask_secrets
from eeopt.names import exit_key, split_key, train_key
from eeopt.study import tracking
from eeopt.study.cluster import node_tags, trial_folder
from eeopt.study.progress import batch_report_due
from eeopt.study.records import HEADLINE_METRICS, EpochReport, ProgressReport, TrialReport, TrialSpec
from eeopt.pipeline import LATENCY_FILE, METRICS_TABLE, PLOT_DIR, POLICY_DIR, run_trial
from eeopt.environment import environment
from eeopt.training.runtime import resolve_device

#: Files of a trial's output folder logged as MLflow artifacts.
TRIAL_ARTIFACTS = ("val.npz", "test.npz", "config.yaml", "pareto.json", "metrics.json", METRICS_TABLE, "history.json",
                   "model.pt", LATENCY_FILE)


def run_trial_on_worker(config: dict[str, Any], objective_fn=None, stores=None, plot_writer=None) -> None:
    """What a Ray worker runs for one trial; `config` carries a `TrialSpec`, `objective_fn` a custom objective
    given as a callable to `Study.run` (a 'module:function' objective travels in the spec), `stores` the study's
    `eeopt.stores.Stores` (through `tune.with_parameters`: its URLs may hold a password, the spec is written to
    files). Every MLflow write goes through the trial's `TrialRun`, under the study's retry policy: an outage of
    the tracking store delays the trial, it does not fail it. The plots go to `plot_writer` (`plotter.PlotWriter`,
    off the trial's critical path), or are drawn here without one."""
    from ray import tune

    last_acc = [math.nan]
    try:
        spec = TrialSpec.from_config(config)
        with trial_folder(spec.output_dir) as folder:
            report = _run(spec, stores.run(spec.mlflow_run_id), folder, objective_fn, last_acc, plot_writer)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the trial, the study goes on
        report = TrialReport.fail(mask_secrets(f"{type(exc).__name__}: {exc}"), last_acc[0])
    tune.report(report.to_result())


def _run(spec: TrialSpec, run: TrialRun, folder, objective_fn, last_acc: list[float], plot_writer) -> TrialReport:
    from ray import tune

    progress = _ProgressSender(resumed=(folder.path / "checkpoint.pt").exists())
    # a wait for the tracking store shows on the driver's progress lines
    run = dataclasses.replace(run, policy=dataclasses.replace(run.policy, on_wait=progress.store_wait))
    run.open_in_background()  # while the trial's config, torch and the environment below are loaded
    cfg = pin_to_trial_resources(TrainConfig.model_validate(spec.train_config), _trial_resources())
    progress.plan(cfg)
    run.set_tags({**node_tags(), tracking.TAG_COST: cfg.policy.cost_unit,
                  **environment(resolve_device(cfg.training.device), cfg.training.deterministic)})
    run.log_params(tracking.params_from_config(spec.train_config, spec.sampled))

    def on_epoch(epoch: int, row: dict[str, Any]) -> None:
        numeric = {train_key(k): float(v) for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
        run.log_metrics(numeric, step=epoch)
        accs = [v for k, v in sorted(row.items(), key=lambda kv: _exit_index(kv[0])) if k.startswith("val_acc_exit")]
        last_acc[0] = float(accs[-1]) if accs else math.nan
        folder.sync()  # the epoch's checkpoint reaches the study's storage before Tune hears of the epoch
        tune.report(EpochReport(epoch, last_acc[0]).to_result())
        progress.epoch_done(epoch, last_acc[0])

    result, values = run_trial(
        cfg, output_dir=folder.path, on_epoch=on_epoch, objectives=list(spec.objectives),
        objective=objective_fn or spec.objective_ref, on_batch=progress.batch_done,
        source={"model_dir": spec.output_dir, "trial": spec.trial_number, "run_id": run.run_id},
        plots=plot_writer is None,
    )
    run.log_metrics(tracking.run_metrics(result.metrics))  # every metric: metrics.json
    _log_trial_artifacts(run, result)
    if plot_writer is not None and not _hand_plots_over(plot_writer, run, result, folder):
        from eeopt.plots import save_trial_plots

        plot_writer = None  # the writer did not take them: drawn here after all
        _log_trial_artifacts(run, dataclasses.replace(result, plots=save_trial_plots(result, folder.path / PLOT_DIR)),
                             plots_only=True)
    k = result.test.num_exits
    headline = {name: result.metrics[name] for name in (*HEADLINE_METRICS, split_key("test", exit_key(k, "accuracy")))}
    run.set_note_section("summary", tracking.trial_note(
        dict(zip(spec.objectives, values)), headline, (METRICS_TABLE, "metrics.json")))
    return TrialReport.complete(values, headline, last_acc[0], plots_sent=plot_writer is not None)


def pin_to_trial_resources(cfg: TrainConfig, resources: Mapping[str, float]) -> TrainConfig:
    """`cfg` on the resources Ray gave the trial (`{"CPU": cpus_per_trial, "GPU": gpus_per_trial}`).

    `training.device: auto` becomes cuda when the trial has a GPU or a share of one (Ray sets CUDA_VISIBLE_DEVICES
    to that GPU, so it is cuda:0 here, shared with the other trials on it when `gpus_per_trial` is a fraction), else
    the CPU: a trial never uses a GPU it was not given. (`training.threads` already is `cpus_per_trial` when the
    study file leaves it unset: `SearchPlan.trial_spec`; the DataLoader workers default from it.) The device is not
    part of the checkpoint fingerprint: a requeued trial resumes wherever it lands.
    """
    if not resources or cfg.training.device != "auto":
        return cfg  # outside a Tune trial, or a device the study file names: as configured
    device = "cuda" if resources.get("GPU", 0) > 0 else "cpu"
    return cfg.model_copy(update={"training": cfg.training.model_copy(update={"device": device})})


def _trial_resources() -> dict[str, float]:
    """What Tune reserved for this trial (`study.resources`), or {} outside a Tune trial."""
    from ray import tune

    try:
        return dict(tune.get_context().get_trial_resources().required_resources)
    except Exception:  # noqa: BLE001 - outside Tune there is nothing to pin to
        return {}


class _ProgressSender:
    """Sends `ProgressReport`s: after the first batch, then every `PROGRESS_EVERY` seconds within an epoch or at each
    quarter of a shorter epoch (`batch_report_due`; each `tune.report` waits for the driver), and one as soon as
    training is over (the evaluation that follows takes a while)."""

    def __init__(self, resumed: bool):
        self.epochs = 0  # until `plan`
        self.epoch = 0 if resumed else 1  # the epoch under way; unknown (0) until a resumed run finishes one
        self.val_acc = math.nan
        self.last_sent = -math.inf

    def plan(self, cfg: TrainConfig) -> None:
        """The trial's epoch count, from its config."""
        from eeopt.training.stages import plan_stages

        self.epochs = sum(stage.epochs for stage in plan_stages(cfg.training))

    def batch_done(self, done: int, total: int) -> None:
        now = time.monotonic()
        if batch_report_due(done, total, now - self.last_sent):
            self._send(ProgressReport(self.epoch, self.epochs, done, total, "train", self.val_acc))

    def epoch_done(self, epoch: int, val_acc: float) -> None:
        self.epoch, self.val_acc = epoch + 1, val_acc
        if epoch >= self.epochs:
            self._send(ProgressReport(epoch, self.epochs, 0, 0, "evaluate", val_acc))

    def store_wait(self, what: str, waited: float) -> None:
        """The trial waits for a store (`RetryPolicy.on_wait`): say so on the driver's progress lines."""
        self._send(ProgressReport(self.epoch, self.epochs, 0, 0, "store", self.val_acc, what, waited))

    def _send(self, report: ProgressReport) -> None:
        from ray import tune

        self.last_sent = time.monotonic()
        tune.report(report.to_result())


def _exit_index(key: str) -> int:
    digits = "".join(ch for ch in key if ch.isdigit())
    return int(digits) if digits else -1


def _hand_plots_over(plot_writer, run: TrialRun, result, folder) -> bool:
    """Queue the trial's plots on the study's writer (drawn and logged while the next trial runs); False when the
    writer does not take them within a minute."""
    import ray

    try:
        ray.get(plot_writer.write.remote(run.run_id, result.evaluation.primary,
                                         None if folder.remote else str(folder.path)), timeout=60)
        return True
    except Exception:  # noqa: BLE001 - a plot never fails a trial
        return False


def _log_trial_artifacts(run: TrialRun, result, plots_only: bool = False) -> None:
    out = result.output_dir
    if out is None:
        return
    if not plots_only:
        run.log_artifacts([out / name for name in TRIAL_ARTIFACTS])
        run.log_artifacts(sorted(result.policies.values()), artifact_path=POLICY_DIR)
    if result.plots:
        run.log_artifacts(result.plots.values(), artifact_path=PLOT_DIR)
        run.log_images(result.plots, prefix=tracking.PLOT_KEY_PREFIX)
