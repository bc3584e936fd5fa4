"""The worker side of a study: the Tune trainable that runs one trial on a Ray worker, the records it exchanges with
the driver, the folder it writes and the writer that draws its plots.

`run_trial_on_worker` receives a `TrialSpec`, runs the trial pipeline (`eeopt.pipeline.run_trial`) with MLflow
logging into the trial's run, reports each epoch as an `EpochReport` (for early stopping, Optuna's intermediate
values and progress lines), where it stands within an epoch every `PROGRESS_EVERY` seconds as a `ProgressReport`
(for the live view), and the outcome as a `TrialReport`. Every error becomes a FAIL report: the trial is recorded as
failed and the study goes on. The trial trains on the GPU (or share of one) Ray gave it, else the CPU
(`pin_to_trial_resources`); the run records the node (and GPUs) it ran on (`node_tags`).

Records: each turns into the dict Tune carries, and back, here and nowhere else. Tune flattens nested result dicts,
so a record travels as one JSON string under one key; only the numbers Tune's schedulers watch (`epoch`,
`EPOCH_METRIC`) stay top-level. A `ProgressReport` carries no `epoch`, so the schedulers (which count time in
epochs) pass over it.

The trial's folder (`TrialFolder`): a folder every node mounts at the same path, written in place, or a URI
(``s3://``, ``gs://``, ``file://``, any filesystem pyarrow knows; `study.ray.storage_path` on a Ray cluster) that it
is staged from and synced to after every epoch.

Plots: drawing a trial's four plots takes longer than everything else eeopt adds to a trial, so the worker hands
them to the study's `PlotWriter`, a Ray actor that holds none of the trials' CPUs, and returns: the trial's slot
goes to the next trial while its plots are drawn and logged to its MLflow run (`plots/` artifacts and MLflow
images) and, where the trial's folder is a path, written there too. The driver waits until the writer has handled
every trial that sent it plots (`drain_plot_writer`), so no plot is lost to a finished study; a plot that cannot be
written is reported as a warning, never as a failed trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from eeopt.config import TrainConfig
from eeopt.environment import environment
from eeopt.names import exit_key, split_key, train_key
from eeopt.pipeline import LATENCY_FILE, METRICS_TABLE, PLOT_DIR, POLICY_DIR, run_trial
from eeopt.stores import Stores, TrialRun, mask_secrets
from eeopt.stores.urls import is_uri
from eeopt.study import tracking


#: Files of a trial's output folder logged as MLflow artifacts.
TRIAL_ARTIFACTS = ("val.npz", "test.npz", "config.yaml", "pareto.json", "metrics.json", METRICS_TABLE, "history.json",
                   "model.pt", LATENCY_FILE)


def run_trial_on_worker(config: dict[str, Any], objective_fn=None, stores=None, plot_writer=None) -> None:
    """What a Ray worker runs for one trial; `config` carries a `TrialSpec`, `objective_fn` a custom objective
    given as a callable to `Study.run` (a 'module:function' objective travels in the spec), `stores` the study's
    `eeopt.stores.Stores` (through `tune.with_parameters`: its URLs may hold a password, the spec is written to
    files). Every MLflow write goes through the trial's `TrialRun`, under the study's retry policy: an outage of
    the tracking store delays the trial, it does not fail it. The plots go to `plot_writer` (`PlotWriter`, off the
    trial's critical path), or are drawn here without one; none with `study.plots: false` (`TrialSpec.plots`)."""
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
    from eeopt.training.runtime import resolve_device  # torch: imported here, not by the driver or the plot writer
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
        plots=spec.plots and plot_writer is None,
    )
    run.log_metrics(tracking.run_metrics(result.metrics))  # every metric: metrics.json
    _log_trial_artifacts(run, result)
    if spec.plots and plot_writer is not None and not _hand_plots_over(plot_writer, run, result, folder):
        from eeopt.plots import save_trial_plots

        plot_writer = None  # the writer did not take them: drawn here after all
        _log_trial_artifacts(run, dataclasses.replace(result, plots=save_trial_plots(result, folder.path / PLOT_DIR)),
                             plots_only=True)
    k = result.test.num_exits
    headline = {name: result.metrics[name] for name in (*HEADLINE_METRICS, split_key("test", exit_key(k, "accuracy")))}
    run.set_note_section("summary", tracking.trial_note(
        dict(zip(spec.objectives, values)), headline, (METRICS_TABLE, "metrics.json")))
    return TrialReport.complete(values, headline, last_acc[0])


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


def batch_report_due(done: int, total: int, since_last: float) -> bool:
    """Whether a worker sends where it stands after batch `done` of an epoch's `total`: after the first batch (its
    start-up is over), then every `PROGRESS_EVERY` seconds; an epoch shorter than that still shows its batches
    move: a report at each quarter of it, at most one per `PROGRESS_MIN_GAP` seconds."""
    if done == 1 or since_last >= PROGRESS_EVERY:
        return True
    quarter = max(1, total // 4)
    return since_last >= PROGRESS_MIN_GAP and done % quarter == 0


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


# ----------------------------------------------------------------------------------------------------
# What the driver and a worker say to each other about one trial, as typed records
#: What early stopping watches: the last exit's validation accuracy after each epoch (a top-level Tune metric).
EPOCH_METRIC = "val_acc_last"
#: Test numbers the worker reports beside the objectives; they are kept on the Optuna trial as user attributes
#: for summaries and the dashboard. The last exit's test accuracy (`test/exit{K}/accuracy`) is added to them.
HEADLINE_METRICS = ("test/acc_cost_auc", "test/acc_at_50", "test/acc_at_100", "test/mean/ece", "test/mean/auroc",
                    "test/mean/eefp")
#: Seconds between two `ProgressReport`s of one trial (each costs a round trip to the driver).
PROGRESS_EVERY = 5.0
#: Within an epoch shorter than `PROGRESS_EVERY`, a worker still reports at each quarter of it, at most this often.
PROGRESS_MIN_GAP = 0.5

_SPEC_KEY = "eeopt_trial"
_REPORT_KEY = "eeopt_report"
_PROGRESS_KEY = "eeopt_progress"


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to run one trial, from the searcher on the driver.

    Attributes:
        train_config: the resolved `TrainConfig` as JSON-ready data (`model_dump(mode="json")`).
        sampled: the sampled parameters by dotted config path, decoded (`model.exits: [2, 4]`, not its JSON text).
        objective_ref: a custom objective as 'package.module:function', or None for the named metrics.
        output_dir: where the trial writes: a folder, or a URI its folder is synced to (`cluster.TrialFolder`).
        plots: whether the trial's plots are drawn (`study.plots`).

    The spec is written into Ray Tune's files (params.json, params.pkl): it carries no secret. The tracking URI,
    which may hold a password, reaches the worker through `tune.with_parameters` (Ray's object store) instead.
    """

    trial_number: int
    train_config: dict[str, Any]
    sampled: dict[str, Any]
    output_dir: str
    mlflow_run_id: str
    objectives: tuple[str, ...]
    objective_ref: str | None
    plots: bool = True

    def to_config(self) -> dict[str, str]:
        """The Tune trial config that carries this spec (what `Searcher.suggest` returns)."""
        return {_SPEC_KEY: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialSpec:
        data = json.loads(config[_SPEC_KEY])
        return cls(**{**data, "objectives": tuple(data["objectives"])})


@dataclasses.dataclass(frozen=True)
class EpochReport:
    """One finished epoch of a running trial (what schedulers such as ASHA decide on)."""

    epoch: int
    val_acc_last: float

    def to_result(self) -> dict[str, float]:
        return {"epoch": self.epoch, EPOCH_METRIC: self.val_acc_last}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> EpochReport | None:
        """The epoch report in a Tune result; None for a trial's final result, a progress report, or a result
        without an epoch."""
        if _REPORT_KEY in result or _PROGRESS_KEY in result or "epoch" not in result:
            return None
        return cls(int(result["epoch"]), float(result.get(EPOCH_METRIC, math.nan)))


@dataclasses.dataclass(frozen=True)
class ProgressReport:
    """Where a running trial stands: epoch `epoch` of `epochs` (from 1), `batch` of `batches` optimizer steps done in
    it, or `phase` "evaluate" once training is over (calibrators, metrics, threshold search), or "store" while it
    waits for a store that does not answer (`waited` seconds so far, `store` says which). `val_acc_last` is the
    last finished epoch's `EPOCH_METRIC` (NaN before the first); `epoch` is 0 while a resumed trial has not yet
    finished an epoch here (the checkpoint's epoch is not known before)."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    phase: Literal["train", "evaluate", "store"] = "train"
    val_acc_last: float = math.nan
    store: str = ""
    waited: float = 0.0

    @property
    def fraction(self) -> float:
        """Share of the training done, in [0, 1] (1 while evaluating; 0 when unknown)."""
        if self.phase == "evaluate":
            return 1.0
        if self.epoch < 1 or self.epochs < 1:
            return 0.0
        within = self.batch / self.batches if self.batches else 0.0
        return min(1.0, (self.epoch - 1 + within) / self.epochs)

    def to_result(self) -> dict[str, Any]:
        """A Tune result without `epoch` (schedulers skip it), with `EPOCH_METRIC` (Tune wants it in every result)."""
        return {EPOCH_METRIC: self.val_acc_last, _PROGRESS_KEY: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None) -> ProgressReport | None:
        """The progress report in a Tune result; None for any other result."""
        if not result or _PROGRESS_KEY not in result:
            return None
        return cls(**json.loads(result[_PROGRESS_KEY]))


@dataclasses.dataclass(frozen=True)
class TrialReport:
    """How a trial ended on its worker: COMPLETE with objective values and headline test metrics, or FAIL with
    the error. `val_acc_last` is the last epoch's value of `EPOCH_METRIC` (NaN before the first epoch)."""

    status: Literal["COMPLETE", "FAIL"]
    values: tuple[float, ...] = ()
    headline: dict[str, float | None] = dataclasses.field(default_factory=dict)
    error: str | None = None
    val_acc_last: float = math.nan

    @classmethod
    def complete(cls, values, headline: Mapping[str, float], val_acc_last: float) -> TrialReport:
        """A finished trial; NaN headline metrics (undefined on this trial) become None."""
        clean = {k: None if v is None or math.isnan(v) else float(v) for k, v in headline.items()}
        return cls("COMPLETE", tuple(float(v) for v in values), clean, None, val_acc_last)

    @classmethod
    def fail(cls, error: str, val_acc_last: float = math.nan) -> TrialReport:
        return cls("FAIL", error=error, val_acc_last=val_acc_last)

    def to_result(self) -> dict[str, Any]:
        """The final Tune result: the record as JSON, plus `EPOCH_METRIC` (Tune expects a scheduler's metric in
        every result)."""
        return {EPOCH_METRIC: self.val_acc_last, _REPORT_KEY: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None) -> TrialReport | None:
        """The report in a Tune result; None for an epoch result, or when the trial never reported its end."""
        if not result or _REPORT_KEY not in result:
            return None
        data = json.loads(result[_REPORT_KEY])
        return cls(**{**data, "values": tuple(data["values"])})


# ----------------------------------------------------------------------------------------------------
# Where a trial writes and runs: its folder (a path, or a URI synced after every epoch) and its node
class TrialFolder:
    """The folder a trial writes, on this node. A plain folder is written in place; for a URI the trial works in a
    local copy (fetched first, so a requeued trial resumes from its checkpoint) that `sync` uploads.

    Attributes:
        path: the local folder to write into.
    """

    def __init__(self, location: str):
        self.location = location
        self.remote = is_uri(location)
        if not self.remote:
            self.path = Path(location)
            return
        digest = hashlib.sha256(location.encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / "eeopt-trials" / digest
        self.path.mkdir(parents=True, exist_ok=True)
        self._copy(to_local=True)

    def sync(self) -> None:
        """Upload the local copy (a URI location); nothing for a plain folder."""
        if self.remote:
            self._copy(to_local=False)

    def _copy(self, to_local: bool) -> None:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(self.location)
        local = pyarrow.fs.LocalFileSystem()
        if to_local:
            if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
                pyarrow.fs.copy_files(path, str(self.path), source_filesystem=fs, destination_filesystem=local)
            return
        fs.create_dir(path, recursive=True)
        pyarrow.fs.copy_files(str(self.path), path, source_filesystem=local, destination_filesystem=fs)


@contextlib.contextmanager
def trial_folder(location: str) -> Iterator[TrialFolder]:
    """A `TrialFolder` for `location`, synced once more when the trial ends (however it ends); the local copy of
    a URI location is removed once synced (the node's disk is not the study's storage)."""
    folder = TrialFolder(location)
    try:
        yield folder
    finally:
        folder.sync()
        if folder.remote:
            shutil.rmtree(folder.path, ignore_errors=True)


def node_tags() -> dict[str, str]:
    """Where this process runs, as MLflow tags: the Ray node id and IP (when under Ray), the host name, and the
    GPUs Ray gave it (with their names), else 'none'."""
    tags = {"eeopt.host": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            tags["eeopt.node_id"] = ctx.get_node_id()
            tags["eeopt.node_ip"] = ray.util.get_node_ip_address()
            gpu_ids = [str(g) for g in ray.get_gpu_ids()]
            tags["eeopt.gpus"] = ",".join(gpu_ids) if gpu_ids else "none"
    except Exception:  # noqa: BLE001 - where a trial ran is worth recording, not worth failing the trial for
        pass
    tags.setdefault("eeopt.gpus", os.environ.get("CUDA_VISIBLE_DEVICES") or "none")
    if tags["eeopt.gpus"] != "none":
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                tags["eeopt.gpu_name"] = torch.cuda.get_device_name(0)
    return tags


# ----------------------------------------------------------------------------------------------------
# The trials' plots, drawn and logged off their critical path
class PlotWriter:
    """Draws and logs trial plots, one trial after another, on a thread of the process it lives in: `write` only
    queues a trial's plots, so the worker that sends them waits milliseconds, not seconds (and a worker that Tune
    ends right after its trial has handed them over: a call still in flight from a process that ends is lost)."""

    def __init__(self, stores: Stores):
        import queue
        import threading

        self.stores = stores
        self.queued = 0  # a worker waits for `write` before its trial reports: every sent trial is counted here
        self.written = 0
        self.failed: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, name="eeopt-plots", daemon=True).start()

    def write(self, run_id: str, variant: Any, folder: str | None) -> None:
        """Queue the plots of an assessed model (`eeopt.assess.Variant`), to be drawn into `folder/plots` (a path;
        a URI or None: a temporary folder) and logged to MLflow run `run_id`."""
        self.queued += 1
        self._queue.put((run_id, variant, folder))

    def _work(self) -> None:
        self._warm_up()
        while True:
            self._write(*self._queue.get())

    def _warm_up(self) -> None:
        """Pay the one-time costs while the first trial's worker starts up (seconds, when the writer is idle)
        rather than after the first trial: matplotlib and the plot modules imported, a figure drawn (fonts), the
        MLflow store opened (on SQLite, MLflow reads its migration scripts to check the schema: about 2 s)."""
        with contextlib.suppress(Exception):  # a failure here shows, if it lasts, on the first trial's plots
            import io

            from eeopt.plots.base import figure

            with figure(io.BytesIO(), (1, 1), layout=None) as fig:
                fig.add_subplot().set_title("warm-up")
            self.stores.mlflow_client().search_experiments(max_results=1)

    def _write(self, run_id: str, variant: Any, folder: str | None) -> None:
        from eeopt.plots import save_variant_plots

        try:
            local = folder is not None and not is_uri(folder)
            with contextlib.nullcontext(folder) if local else tempfile.TemporaryDirectory() as where:
                plots = save_variant_plots(variant, Path(where) / PLOT_DIR)
                run = self.stores.run(run_id)
                run.log_artifacts(plots.values(), artifact_path=PLOT_DIR)
                run.log_images(plots, prefix=tracking.PLOT_KEY_PREFIX)
            self.written += 1
        except Exception as exc:  # noqa: BLE001 - a plot never fails a trial; the driver reports it
            self.failed.append(f"run {run_id}: {type(exc).__name__}: {mask_secrets(str(exc))[:300]}")

    def done(self) -> tuple[int, int, list[str]]:
        """(trials whose plots were written or failed, trials whose plots were queued, the failures)."""
        return self.written + len(self.failed), self.queued, list(self.failed)


def start_plot_writer(stores: Stores):
    """The study's `PlotWriter` as a Ray actor with no CPU of its own (it never takes a trial's slot)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=1)(PlotWriter).remote(stores)


def drain_plot_writer(writer, reporter, timeout: float = 600.0) -> None:
    """Wait until `writer` has handled every trial's plots it queued (or `timeout` s), then end it; say what failed
    or is missing. Once the trials have ended, every trial whose plots were sent is queued: its worker waited for
    `write` before it reported. Without a writer (`study.plots: false`) there is nothing to wait for."""
    import ray

    if writer is None:
        return
    deadline, said, failed, handled, queued = time.monotonic() + timeout, False, [], 0, 0
    try:
        while True:
            handled, queued, failed = ray.get(writer.done.remote(), timeout=60)
            if handled >= queued or time.monotonic() > deadline:
                break
            if not said:
                reporter.line(f"writing the last trials' plots ({queued - handled} to go)")
                said = True
            time.sleep(0.25)
    except Exception as exc:  # noqa: BLE001 - plots are display: the study's outcome stands
        reporter.line(f"the trial plots were not all written: {type(exc).__name__}: {mask_secrets(str(exc))[:300]}")
    finally:
        with contextlib.suppress(Exception):
            ray.kill(writer)
    for line in failed:
        reporter.line(f"plots not written for {line}")
    if handled < queued:
        reporter.line(f"the plots of {queued - handled} trials were not written within {timeout:g} s")
