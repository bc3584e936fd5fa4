"""Train a multi-exit network from a `TrainConfig` and produce its exit outputs on val and test.

Read top to bottom: how the modes become stages, the losses of a stage, one epoch, `train` itself, and the files a
run leaves behind. A training run is a list of stages, each with its own optimizer and learning-rate schedule:

| training.mode | stages                                                                                  |
| ------------- | --------------------------------------------------------------------------------------- |
| joint         | joint: every parameter, all exits' losses, `epochs` epochs                               |
| frozen        | backbone: backbone + final head on the last exit's CE, `backbone_epochs` epochs          |
|               | (or loaded from `backbone_checkpoint`), then heads: only the early exit heads and failure|
|               | heads for `epochs` epochs; backbone and final head stay bit-identical                    |
| two_stage     | backbone as above, then joint for `epochs` epochs                                        |

`joint` ignores `backbone_epochs` and `backbone_checkpoint` (so a study can search over the mode with them fixed).
Parameters a stage does not train get `requires_grad=False`, and the modules holding only such parameters stay in
eval mode, so their BatchNorm statistics do not move either.

With an `output_dir`, each finished epoch writes `checkpoint.pt` (atomically); a rerun with the same config resumes
from it and finishes with the same weights as an uninterrupted run (given `training.deterministic`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eeopt.config import ModelConfig, TrainConfig, TrainingConfig
from eeopt.data import iterate_batches, load_dataset
from eeopt.errors import ConfigError, TrainingDiverged
from eeopt.models import build_model
from eeopt.outputs import ExitOutputs
from eeopt.training.checkpoint import (
    atomic_save_outputs,
    capture_rng_state,
    load_checkpoint,
    read_model_file,
    restore_rng_state,
    save_checkpoint,
    save_model_file,
    write_json,
    write_yaml,
)
from eeopt.training.losses import distillation_loss, exit_loss, exit_weights, failure_loss

GROUPS = ("backbone", "final_head", "early_heads", "failure_heads")


# ------------------------------------------------------------------------------------------------ stages
@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of training: which parameter groups it updates, on which loss, for how many epochs."""

    name: str  # 'backbone', 'heads' or 'joint'
    epochs: int
    trains: tuple[str, ...]  # parameter groups the optimizer updates
    objective: str  # 'final': the last exit's CE only; 'exits': weighted exit CEs + failure + distillation losses


def plan_stages(tc: TrainingConfig) -> list[Stage]:
    """The stages of `training.mode`, without the ones that have no epochs.

    `TrainingConfig` guarantees frozen/two_stage have exactly one way to get a trained backbone.
    """
    if tc.mode == "joint":
        stages = [Stage("joint", tc.epochs, GROUPS, "exits")]
    else:
        stages = []
        if tc.backbone_checkpoint is None:
            stages.append(Stage("backbone", tc.backbone_epochs, ("backbone", "final_head"), "final"))
        if tc.mode == "frozen":
            stages.append(Stage("heads", tc.epochs, ("early_heads", "failure_heads"), "exits"))
        else:
            stages.append(Stage("joint", tc.epochs, GROUPS, "exits"))
    return [stage for stage in stages if stage.epochs > 0]


def stage_loss(forward, labels: torch.Tensor, stage: Stage, tc: TrainingConfig, progress: float) -> torch.Tensor:
    """The scalar a stage minimises; `progress` is the share of the stage done (for the sdn exit weights)."""
    logits = forward.logits
    if stage.objective == "final":
        return F.cross_entropy(logits[-1], labels, label_smoothing=tc.label_smoothing)
    weights = exit_weights(tc.exit_weights, logits.shape[0], progress).to(logits.device)
    loss = exit_loss(logits, labels, weights, tc.label_smoothing)
    if tc.failure_loss != "none":
        loss = loss + tc.failure_weight * failure_loss(tc.failure_loss, forward.failure, logits, labels)
    if tc.distillation > 0:
        loss = loss + tc.distillation * distillation_loss(logits, tc.distill_temperature)
    return loss


# ------------------------------------------------------------------------------------------------ optimisation
def make_optimizer(params: list[torch.nn.Parameter], tc: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum); weight decay on weight matrices and kernels only, not biases or norms."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr)
    return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, nesterov=tc.momentum > 0)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at `step` of a stage of `total_steps` steps (updated every step).

    cosine: from 1 down to 0 at the end of the stage; step: x0.1 at 50 % and again at 75 %; constant: 1.
    """
    t = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01
    return 1.0


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    # Batches of a single sample are skipped (BatchNorm cannot train on one sample).
    full, rest = divmod(num_samples, batch_size)
    return full + (1 if rest >= 2 else 0)


# ------------------------------------------------------------------------------------------------ model helpers
def check_parameter_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    groups = model.parameter_groups()
    assert set(groups) == set(GROUPS), f"parameter_groups() must return {GROUPS}, got {sorted(groups)}"
    ids = [id(p) for name in GROUPS for p in groups[name]]
    assert len(ids) == len(set(ids)), "parameter_groups() lists a parameter twice"
    assert set(ids) == {id(p) for p in model.parameters()}, "parameter_groups() must partition model.parameters()"
    return groups


def modules_within(model: torch.nn.Module, params: set[int]) -> list[torch.nn.Module]:
    """The largest submodules whose parameters (at least one) all have their id in `params`, in model order."""
    chosen: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if any(prefix == "" or name.startswith(prefix + ".") for prefix, _ in chosen):
            continue
        own = list(module.parameters())
        if own and all(id(p) in params for p in own):
            chosen.append((name, module))
    return [module for _, module in chosen]


def set_train_mode(model: torch.nn.Module, frozen: set[int]) -> None:
    """Train mode, except modules holding only frozen parameters (their BatchNorm statistics must not move)."""
    model.train()
    for module in modules_within(model, frozen):
        module.eval()


def load_backbone(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Copy the backbone and final head (parameters and buffers) of a previous run's model.pt into `model`.

    The two models may have different early exits: tensors are matched in order within each parameter group.

    Raises:
        ConfigError: the file is not a model.pt, or its backbone or final head does not match this model.
    """
    source = load_model(path)
    where = f"training.backbone_checkpoint: {path}"
    src_groups, dst_groups = source.parameter_groups(), model.parameter_groups()
    for group in ("backbone", "final_head"):
        src_params, dst_params = src_groups[group], dst_groups[group]
        src = list(src_params) + _buffers_within(source, {id(p) for p in src_params})
        dst = list(dst_params) + _buffers_within(model, {id(p) for p in dst_params})
        if len(src) != len(dst):
            raise ConfigError(f"{where}: its {group} has {len(src)} tensors, this model's has {len(dst)}")
        for i, (s, d) in enumerate(zip(src, dst)):
            if s.shape != d.shape:
                raise ConfigError(
                    f"{where}: its {group} tensor {i} has shape {tuple(s.shape)}, this model needs "
                    f"{tuple(d.shape)}; train it with the same data, model.backbone and model.width"
                )
        with torch.no_grad():
            for s, d in zip(src, dst):
                d.copy_(s)


def _buffers_within(model: torch.nn.Module, params: set[int]) -> list[torch.Tensor]:
    return [b for module in modules_within(model, params) for b in module.buffers()]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name} requested but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


def _setup_torch(tc: TrainingConfig, seed: int) -> None:
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        # cuBLAS needs this before its first use to be deterministic; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Process-wide switches: set them either way so one run's setting does not leak into the next.
    torch.use_deterministic_algorithms(tc.deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = tc.deterministic
    torch.backends.cudnn.benchmark = not tc.deterministic
    _seed_everything(seed)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def predict(model: torch.nn.Module, split, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exit logits [K, N, C] and failure logits [K, N] (or None) of a split, on the CPU, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    logits, failure = [], []
    for x, _ in iterate_batches(split, batch_size, shuffle=False):
        out = model(torch.as_tensor(x).to(device, non_blocking=True))
        logits.append(out.logits.float().cpu())
        if out.failure is not None:
            failure.append(out.failure.float().cpu())
    return torch.cat(logits, dim=1), (torch.cat(failure, dim=1) if failure else None)


def collect_exit_outputs(
    model: torch.nn.Module, split, batch_size: int, costs, source: str = "exit outputs"
) -> ExitOutputs:
    """Run `model` over a split (eval mode, no grad) -> `ExitOutputs`; scores = sigmoid(failure logits) if any."""
    logits, failure = predict(model, split, batch_size)
    return ExitOutputs(
        logits=logits.numpy(),
        labels=torch.as_tensor(split.y).cpu().numpy().astype(np.int64),
        costs=np.asarray(costs, dtype=np.float64),
        scores=None if failure is None else torch.sigmoid(failure).numpy(),
        source=source,
    )


def exit_accuracy(model: torch.nn.Module, split, batch_size: int) -> list[float]:
    logits, _ = predict(model, split, batch_size)
    labels = torch.as_tensor(split.y).cpu().view(1, -1)
    return (logits.argmax(dim=-1) == labels).float().mean(dim=1).tolist()


# ------------------------------------------------------------------------------------------------ one epoch
def train_epoch(
    model, dataset, stage: Stage, tc: TrainingConfig, optimizer, scheduler, generator: torch.Generator,
    device: torch.device, *, epoch: int, first_step: int, total_steps: int,
    on_step: Callable[[float], None] | None = None,
) -> tuple[float, float]:
    """One pass over the shuffled training split, one optimizer and scheduler step per batch.

    Returns (mean training loss, learning rate of the last step). `first_step` is the number of steps this stage
    took before this epoch (for the sdn exit weights); `on_step(running mean loss)` follows each step.

    Raises:
        TrainingDiverged: a loss is NaN or infinite (checked before its step is taken).
    """
    running, count, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
    for x, y in iterate_batches(dataset.train, tc.batch_size, shuffle=True, generator=generator):
        if len(y) < 2:
            continue  # BatchNorm cannot train on a single sample
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if dataset.augment is not None:
            x = dataset.augment(x, generator)  # on the CPU, where the generator lives
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lr = optimizer.param_groups[0]["lr"]
        loss = stage_loss(model(x), y, stage, tc, (first_step + count) / max(total_steps, 1))
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training diverged: loss {value} at epoch {epoch}, step {count + 1} (lr {lr:.3g}); "
                "lower training.lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running, count = running + value, count + 1
        if on_step is not None:
            on_step(running / count)
    return running / max(count, 1), lr


# ------------------------------------------------------------------------------------------------ train
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
    callback: Callable[[int, dict[str, float]], None] | None = None,
    dataset=None,
) -> TrainResult:
    """Train the model of `cfg` and return it with its exit outputs on the val and test splits.

    `callback(epoch, row)` runs after every epoch (epochs count from 1 across stages) with that epoch's history
    row; whatever it raises propagates (after the epoch's checkpoint is written). `dataset` replaces
    `load_dataset(cfg.data, cfg.seed)` (tests, or a study that loads the data once).

    Raises:
        ConfigError: an invalid combination of settings, or a checkpoint in `output_dir` from a different config.
        TrainingDiverged: the loss became NaN or infinite.
    """
    tc = cfg.training
    stages = plan_stages(tc)
    out = Path(output_dir) if output_dir is not None else None
    console = Console(stderr=True)
    device = resolve_device(tc.device)
    _setup_torch(tc, cfg.seed)

    dataset = dataset if dataset is not None else load_dataset(cfg.data, cfg.seed)
    _seed_everything(cfg.seed)  # the initial weights do not depend on how the data was loaded
    model = build_model(cfg.model, dataset.num_classes, dataset.in_channels, tuple(dataset.image_size)).to(device)
    groups = check_parameter_groups(model)
    for stage in stages:
        if not any(groups[name] for name in stage.trains):
            raise ConfigError(
                f"training.mode: {tc.mode} trains {' and '.join(stage.trains)} in stage {stage.name}, "
                "but the model has none; would train nothing (add early exits in model.exits)"
            )
    generator = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation

    # Resume from this output_dir's checkpoint, or start (loading a trained backbone if asked to).
    fingerprint = config_fingerprint(cfg)
    checkpoint_path = out / "checkpoint.pt" if out is not None else None
    history: list[dict[str, Any]] = []
    start_stage, start_epoch, resumed = 0, 0, None
    if checkpoint_path is not None and checkpoint_path.exists():
        resumed = load_checkpoint(checkpoint_path)
        if resumed.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{checkpoint_path}: a checkpoint of a different config; use another --output-dir or delete it"
            )
        model.load_state_dict(resumed["model"])
        history = list(resumed["history"])
        start_stage, start_epoch = resumed["stage_index"], resumed["stage_epoch"]
        if start_stage < len(stages) and start_epoch >= stages[start_stage].epochs:
            start_stage, start_epoch = start_stage + 1, 0  # the checkpoint ended a stage
        restore_rng_state(resumed["rng"], generator)
        print(f"resuming from {checkpoint_path}: {len(history)} of {sum(s.epochs for s in stages)} epochs done",
              file=sys.stderr)
    elif tc.backbone_checkpoint is not None and tc.mode != "joint":
        load_backbone(model, tc.backbone_checkpoint)

    total_epochs = sum(stage.epochs for stage in stages)
    n_steps = steps_per_epoch(len(dataset.train.y), tc.batch_size)
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
        console=console, transient=True, disable=not progress,
    )
    with bar:
        for stage_index, stage in enumerate(stages):
            if stage_index < start_stage:
                continue
            trainable = [p for name in stage.trains for p in groups[name]]
            trainable_ids = {id(p) for p in trainable}
            frozen = {id(p) for p in model.parameters()} - trainable_ids
            for p in model.parameters():
                p.requires_grad_(id(p) in trainable_ids)
            optimizer = make_optimizer(trainable, tc)
            total_steps = stage.epochs * n_steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, functools.partial(lr_factor, tc.schedule, total_steps=total_steps)
            )
            first_epoch = 0
            if resumed is not None and stage_index == start_stage and start_epoch > 0:
                optimizer.load_state_dict(resumed["optimizer"])
                scheduler.load_state_dict(resumed["scheduler"])
                first_epoch = start_epoch

            for stage_epoch in range(first_epoch, stage.epochs):
                epoch = len(history) + 1
                started = time.perf_counter()
                set_train_mode(model, frozen)
                bar_task = bar.add_task(f"{stage.name} {stage_epoch + 1}/{stage.epochs}", total=n_steps, loss=0.0)
                train_loss, lr = train_epoch(
                    model, dataset, stage, tc, optimizer, scheduler, generator, device,
                    epoch=epoch, first_step=stage_epoch * n_steps, total_steps=total_steps,
                    on_step=lambda mean_loss: bar.update(bar_task, advance=1, loss=mean_loss),
                )
                bar.remove_task(bar_task)

                accuracy = exit_accuracy(model, dataset.val, tc.batch_size)
                row: dict[str, Any] = {"epoch": epoch, "stage": stage.name, "train_loss": train_loss}
                row.update({f"val_acc_exit{k + 1}": acc for k, acc in enumerate(accuracy)})
                row.update({"lr": lr, "seconds": time.perf_counter() - started})
                history.append(row)
                if checkpoint_path is not None:
                    save_checkpoint(
                        checkpoint_path, fingerprint=fingerprint, model=model.state_dict(),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        stage_index=stage_index, stage_epoch=stage_epoch + 1, history=history,
                        rng=capture_rng_state(generator),
                    )
                if progress:
                    accs = " ".join(f"{a:.3f}" for a in accuracy)
                    bar.console.print(
                        f"{stage.name:<8} epoch {epoch}/{total_epochs}  loss {row['train_loss']:.4f}  "
                        f"val acc {accs}  {row['seconds']:.1f} s"
                    )
                if callback is not None:
                    callback(epoch, row)

    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    costs = np.asarray(model.costs, dtype=np.float64)
    val = collect_exit_outputs(model, dataset.val, tc.batch_size, costs, source="val")
    test = collect_exit_outputs(model, dataset.test, tc.batch_size, costs, source="test")
    if out is not None:
        save_model_file(
            out / "model.pt", model, cfg.model_dump(mode="json"),
            dataset.num_classes, dataset.in_channels, tuple(dataset.image_size), costs,
        )
        atomic_save_outputs(val, out / "val.npz")
        atomic_save_outputs(test, out / "test.npz")
        write_yaml(out / "config.yaml", cfg.model_dump(mode="json"))
        write_json(out / "history.json", history)
        checkpoint_path.unlink(missing_ok=True)  # only now: everything else is on disk
    return TrainResult(model, val, test, history, cfg, dict(dataset.info), out)


def config_fingerprint(cfg: TrainConfig) -> str:
    """The config as canonical JSON, minus the settings that do not change what is trained (device, threads)."""
    tree = cfg.model_dump(mode="json")
    tree["training"].pop("device", None)
    tree["training"].pop("threads", None)
    return json.dumps(tree, sort_keys=True)


# ------------------------------------------------------------------------------------------------ model.pt
def build_model_for(cfg: TrainConfig, dataset=None):
    """The untrained multi-exit model `cfg` describes, shaped for its dataset (loaded from `cfg.data` when not
    given), with per-exit costs counted. `eeopt.build_model(cfg)` is this function."""
    dataset = dataset if dataset is not None else load_dataset(cfg.data, cfg.seed)
    return build_model(cfg.model, dataset.num_classes, dataset.in_channels, tuple(dataset.image_size))


def load_model(path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild a trained model from the model.pt a run wrote (on the CPU, in eval mode).

    Raises:
        ConfigError: the file is missing or not a model.pt written by `train`.
    """
    payload = read_model_file(path)
    model_cfg = ModelConfig.model_validate(payload["config"]["model"])
    model = build_model(model_cfg, payload["num_classes"], payload["in_channels"], tuple(payload["image_size"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()
