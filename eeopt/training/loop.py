"""`train`: a multi-exit network from a `TrainConfig`, with its exit outputs on val and test.

Read top to bottom: `train` starts (or resumes) a run, runs its stages (`eeopt.training.stages`) epoch by epoch,
then collects the exit outputs and writes the run's files. With an `output_dir`, each finished epoch writes
`checkpoint.pt` (atomically); a rerun with the same config resumes from it and finishes with the same weights as an
uninterrupted run (given `training.deterministic`). The checkpoint is deleted once everything else is on disk.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eeopt.config import TrainConfig
from eeopt.data import Dataset, load_dataset
from eeopt.environment import environment
from eeopt.errors import ConfigError
from eeopt.models import MultiExitModel, load_pretrained
from eeopt.models.external import pretrained_data
from eeopt.names import IMAGES_PER_S
from eeopt.core.outputs import ExitOutputs
from eeopt.training.checkpoint import (
    atomic_save_outputs,
    capture_rng_state,
    config_fingerprint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_model_file,
    write_json,
    write_yaml,
)
from eeopt.training.checks import check_output_dir
from eeopt.training.epoch import collect_exit_outputs, exit_accuracy, steps_per_epoch, train_epoch
from eeopt.training.model_files import build_model_for, load_backbone
from eeopt.training.runtime import (
    Precision,
    compiled_for_training,
    configure_process,
    prepare_for_device,
    rng_untouched,
    training_precision,
)
from eeopt.training.stages import (
    Stage,
    check_parameter_groups,
    check_stages,
    freeze_all_but,
    make_optimizer,
    make_scheduler,
    plan_stages,
    set_train_mode,
)

EpochCallback = Callable[[int, dict[str, Any]], None]
BatchCallback = Callable[[int, int], None]


@dataclasses.dataclass
class TrainResult:
    """What `train` returns; with an output_dir the same things are on disk (model.pt, val.npz, test.npz, ...)."""

    model: torch.nn.Module
    val: ExitOutputs
    test: ExitOutputs
    history: list[dict[str, Any]]
    config: TrainConfig
    dataset_info: dict[str, Any]
    output_dir: Path | None


def train(
    cfg: TrainConfig,
    output_dir: str | Path | None = None,
    *,
    progress: bool = True,
    callback: EpochCallback | None = None,
    dataset: Dataset | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainResult:
    """Train the model of `cfg` and return it with its exit outputs on the val and test splits.

    `callback(epoch, row)` runs after every epoch (epochs count from 1 across stages) with that epoch's history
    row; whatever it raises propagates (after the epoch's checkpoint is written). `on_batch(done, total)` runs
    after every optimizer step with the steps done in the current epoch and the epoch's total (for a live
    display; keep it cheap). `dataset` replaces `load_dataset(cfg.data, cfg.seed)` (tests, or a study that loads
    the data once).

    Raises:
        ConfigError: `output_dir` is a file, an invalid combination of settings, or a checkpoint in `output_dir`
            from a different config.
        DataError: the dataset's files are missing or malformed.
        TrainingDiverged: the loss became NaN or infinite.
    """
    out = check_output_dir(output_dir)
    run = _start_or_resume(cfg, out, dataset)
    with _Display(enabled=progress) as display:
        for index in range(run.start_stage, len(run.stages)):
            _run_stage(run, index, display, callback, on_batch)
    val, test = _exit_outputs(run)
    if out is not None:
        _write_outputs(run, out, val, test)
    return TrainResult(run.model, val, test, run.history, cfg, dict(run.dataset.info), out)


# ------------------------------------------------------------------------------------------------ start
@dataclasses.dataclass
class _Run:
    """What the stages of one run share. A resumed run starts at epoch `start_epoch` of stage `start_stage`."""

    cfg: TrainConfig
    stages: list[Stage]
    dataset: Dataset
    model: MultiExitModel
    groups: dict[str, list[torch.nn.Parameter]]
    device: torch.device
    generator: torch.Generator  # shuffling and augmentation
    precision: Precision  # of the training steps (with fp16's gradient scaler, kept across stages and resumes)
    stepper: torch.nn.Module  # what training steps call: the model, or torch.compile of it
    checkpoint: Path | None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    resumed: dict[str, Any] | None = None  # the checkpoint resumed from (its stage's optimizer and scheduler)
    start_stage: int = 0
    start_epoch: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.dataset.train.y), self.cfg.training.batch_size)


def _start_or_resume(cfg: TrainConfig, out: Path | None, dataset: Dataset | None) -> _Run:
    """Set up the process, load the data, build the model; resume from `out`'s checkpoint when there is one,
    else load a trained backbone (or pretrained weights) if the config asks for one."""
    tc = cfg.training
    stages = plan_stages(tc, pretrained=bool(cfg.model.pretrained))
    device = configure_process(tc, cfg.seed)
    if dataset is None:
        with rng_untouched():  # the initial weights do not depend on how the data was loaded
            data_cfg, stats = pretrained_data(cfg.model, cfg.data)  # a timm/torchvision backbone's weights' needs
            dataset = load_dataset(data_cfg, cfg.seed, pretrained_stats=stats, pin_memory=device.type == "cuda")
    precision = training_precision(tc.precision, device)
    model = prepare_for_device(build_model_for(cfg, dataset), device)
    groups = check_parameter_groups(model)
    check_stages(stages, groups, tc.mode)
    generator = torch.Generator().manual_seed(cfg.seed)
    checkpoint = out / "checkpoint.pt" if out is not None else None
    run = _Run(cfg, stages, dataset, model, groups, device, generator, precision,
               compiled_for_training(model, tc.compile), checkpoint)
    if checkpoint is not None and checkpoint.exists():
        _resume(run, checkpoint)
    elif tc.backbone_checkpoint is not None and tc.mode != "joint":
        load_backbone(model, tc.backbone_checkpoint)
    elif cfg.model.pretrained:
        load_pretrained(model.backbone, cfg.model.pretrained)  # the library's weights (timm / torchvision)
    return run


def _resume(run: _Run, path: Path) -> None:
    resumed = load_checkpoint(path)
    if resumed.get("fingerprint") != config_fingerprint(run.cfg):
        raise ConfigError(f"{path}: a checkpoint of a different config; use another --output-dir or delete it")
    run.model.load_state_dict(resumed["model"])
    run.history = list(resumed["history"])
    stage, epoch = resumed["stage_index"], resumed["stage_epoch"]
    if stage < len(run.stages) and epoch >= run.stages[stage].epochs:
        stage, epoch = stage + 1, 0  # the checkpoint ended a stage
    restore_rng_state(resumed["rng"], run.generator)
    if run.precision.scaler is not None and resumed.get("scaler"):
        run.precision.scaler.load_state_dict(resumed["scaler"])  # fp16: the loss scale it had reached
    run.resumed, run.start_stage, run.start_epoch = resumed, stage, epoch
    total = sum(s.epochs for s in run.stages)
    print(f"resuming from {path}: {len(run.history)} of {total} epochs done", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ stages
def _run_stage(
    run: _Run, index: int, display: _Display, callback: EpochCallback | None, on_batch: BatchCallback | None
) -> None:
    """Train stage `index` epoch by epoch (from where a resumed run stopped), with a checkpoint after each."""
    stage, tc = run.stages[index], run.cfg.training
    trainable, frozen = freeze_all_but(run.model, run.groups, stage)
    optimizer = make_optimizer(trainable, tc)
    scheduler = make_scheduler(optimizer, tc.schedule, stage.epochs * run.steps_per_epoch)
    first_epoch = 0
    if run.resumed is not None and index == run.start_stage and run.start_epoch > 0:
        optimizer.load_state_dict(run.resumed["optimizer"])
        scheduler.load_state_dict(run.resumed["scheduler"])
        first_epoch = run.start_epoch
    for stage_epoch in range(first_epoch, stage.epochs):
        set_train_mode(run.model, frozen)
        row = _run_epoch(run, stage, stage_epoch, optimizer, scheduler, display, on_batch)
        if run.checkpoint is not None:
            save_checkpoint(
                run.checkpoint, fingerprint=config_fingerprint(run.cfg), model=run.model.state_dict(),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                stage_index=index, stage_epoch=stage_epoch + 1, history=run.history,
                rng=capture_rng_state(run.generator),
                scaler=run.precision.scaler.state_dict() if run.precision.scaler is not None else None,
            )
        display.epoch_done(row, total_epochs=sum(s.epochs for s in run.stages))
        if callback is not None:
            callback(row["epoch"], row)


def _run_epoch(
    run: _Run, stage: Stage, stage_epoch: int, optimizer, scheduler, display: _Display,
    on_batch: BatchCallback | None,
) -> dict[str, Any]:
    """One epoch of `stage`, then the exits' accuracy on val; returns (and appends) its history row."""
    epoch, started, n_steps = len(run.history) + 1, time.perf_counter(), run.steps_per_epoch
    display.epoch_started(f"{stage.name} {stage_epoch + 1}/{stage.epochs}", n_steps)

    def on_step(done: int, mean_loss: float | None) -> None:
        display.advance(mean_loss)
        if on_batch is not None:
            on_batch(done, n_steps)

    stats = train_epoch(
        run.stepper, run.dataset, stage, run.cfg.training, optimizer, scheduler, run.generator, run.device,
        epoch=epoch, first_step=stage_epoch * n_steps, total_steps=stage.epochs * n_steps, on_step=on_step,
        precision=run.precision,
    )
    display.epoch_ended()
    accuracy = exit_accuracy(run.model, run.dataset.val, run.cfg.training.batch_size)
    row: dict[str, Any] = {"epoch": epoch, "stage": stage.name, "train_loss": stats.loss}
    row.update({f"val_acc_exit{k + 1}": acc for k, acc in enumerate(accuracy)})
    row.update({"lr": stats.lr, "seconds": time.perf_counter() - started, IMAGES_PER_S: stats.images_per_s})
    run.history.append(row)
    return row


# ------------------------------------------------------------------------------------------------ outputs
def _exit_outputs(run: _Run) -> tuple[ExitOutputs, ExitOutputs]:
    """The trained model (every parameter trainable again, eval mode) run over val and test."""
    for p in run.model.parameters():
        p.requires_grad_(True)
    run.model.eval()
    costs, batch_size = np.asarray(run.model.costs, dtype=np.float64), run.cfg.training.batch_size
    val = collect_exit_outputs(run.model, run.dataset.val, batch_size, costs, source="val")
    test = collect_exit_outputs(run.model, run.dataset.test, batch_size, costs, source="test")
    return val, test


def _write_outputs(run: _Run, out: Path, val: ExitOutputs, test: ExitOutputs) -> None:
    """model.pt, val.npz, test.npz, config.yaml, history.json and environment.json (what reproducing the run
    needs to know: `eeopt.environment`); then the checkpoint goes."""
    data = run.dataset
    save_model_file(
        out / "model.pt", run.model, run.cfg.model_dump(mode="json"),
        data.num_classes, data.in_channels, tuple(data.image_size), val.costs,
    )
    atomic_save_outputs(val, out / "val.npz")
    atomic_save_outputs(test, out / "test.npz")
    write_yaml(out / "config.yaml", run.cfg.model_dump(mode="json"))
    write_json(out / "history.json", run.history)
    write_json(out / "environment.json", environment(next(run.model.parameters()).device, run.cfg.training.deterministic))
    (out / "checkpoint.pt").unlink(missing_ok=True)  # only now: everything else is on disk


# ------------------------------------------------------------------------------------------------ display
class _Display:
    """A transient progress bar per epoch and one printed line per finished epoch, on stderr (none when off)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True, disable=not enabled,
        )
        self.task = None

    def __enter__(self) -> _Display:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.__exit__(*exc_info)

    def epoch_started(self, description: str, total: int) -> None:
        if self.enabled:
            self.task = self.bar.add_task(description, total=total, loss=0.0)

    def advance(self, mean_loss: float | None) -> None:
        """One step done; `mean_loss` is None between the checks that read it from the device."""
        if self.task is not None:
            fields = {} if mean_loss is None else {"loss": mean_loss}
            self.bar.update(self.task, advance=1, **fields)

    def epoch_ended(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None

    def epoch_done(self, row: dict[str, Any], total_epochs: int) -> None:
        if self.enabled:
            accs = " ".join(f"{v:.3f}" for k, v in row.items() if k.startswith("val_acc_exit"))
            self.bar.console.print(
                f"{row['stage']:<8} epoch {row['epoch']}/{total_epochs}  loss {row['train_loss']:.4f}  "
                f"val acc {accs}  {row['seconds']:.1f} s  {row[IMAGES_PER_S]:.0f} images/s"
            )
