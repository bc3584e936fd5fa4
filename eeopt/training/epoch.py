"""One training epoch, and running a model over a split: its exit logits, per-exit accuracy, `ExitOutputs`.

A training step never waits for the device: the losses stay on it (a window of the last `training.check_every`
step losses), and the host reads them only at a check (every `check_every` steps and at the epoch's end), where a
NaN or infinite loss stops training with `TrainingDiverged`. The GPU therefore runs ahead of Python, the data of the
next batch is prepared while the last one computes, and an epoch costs one wait per `check_every` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from eeopt.config import TrainingConfig
from eeopt.data import iterate_batches
from eeopt.errors import TrainingDiverged
from eeopt.core.outputs import ExitOutputs
from eeopt.training.runtime import Precision, compile_errors, input_memory_format, training_precision
from eeopt.training.stages import Stage, stage_loss


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: batches of a single sample are skipped (BatchNorm cannot train on one)."""
    full, rest = divmod(num_samples, batch_size)
    return full + (1 if rest >= 2 else 0)


class EpochStats(NamedTuple):
    """What one epoch of `train_epoch` did: its mean loss, the learning rate of its last step, the images it trained
    on and the seconds that took (the steps, the data they read and the final check; no evaluation)."""

    loss: float
    lr: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan


def train_epoch(
    model, dataset, stage: Stage, tc: TrainingConfig, optimizer, scheduler, generator: torch.Generator,
    device: torch.device, *, epoch: int, first_step: int, total_steps: int,
    on_step: Callable[[int, float | None], None] | None = None, precision: Precision | None = None,
) -> EpochStats:
    """One pass over the shuffled training split, one optimizer and scheduler step per batch.

    `model` is what the steps call (the model, or `torch.compile` of it). `first_step` is the number of steps this
    stage took before this epoch (for the sdn exit weights). `precision` runs the forward pass and loss under
    autocast (fp16 with its gradient scaler); None: `training.precision` on `device`, with a scaler of its own.
    `on_step(steps done this epoch, mean loss)` follows each step; the mean loss (of the epoch's steps up to the
    last check) is None before the first check, and only a check reads it from the device.

    The loss is checked every `training.check_every` steps and after the last step, not at every step: a NaN or
    infinite loss has by then already been stepped on, so the weights are spoiled when the error is raised. The run
    stops there, before this epoch's checkpoint, so the checkpoints of earlier epochs are intact.

    Raises:
        TrainingDiverged: a loss was NaN or infinite; the message names the step and the steps the check covered.
        ConfigError: `training.compile` is set and torch.compile fails.
    """
    precision = precision or training_precision(tc.precision, device)
    memory_format = input_memory_format(model, device)
    window = torch.zeros(tc.check_every, device=device)  # the step losses since the last check
    window_lr: list[float] = []
    total, checked, count, images, lr = 0.0, 0, 0, 0, optimizer.param_groups[0]["lr"]
    mean: float | None = None
    started = time.perf_counter()
    with compile_errors(tc.compile):
        for x, y in iterate_batches(dataset.train, tc.batch_size, shuffle=True, generator=generator):
            if len(y) < 2:
                continue  # BatchNorm cannot train on a single sample
            x, y = torch.as_tensor(x), torch.as_tensor(y)
            if dataset.augment is not None:
                x = dataset.augment(x, generator)  # on the CPU, where the generator lives
            x = x.to(device, non_blocking=True, memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            lr = optimizer.param_groups[0]["lr"]
            loss = _step(model, x, y, stage, tc, optimizer, precision, (first_step + count) / max(total_steps, 1))
            scheduler.step()
            window[len(window_lr)] = loss.detach()  # stays on the device: no wait
            window_lr.append(lr)
            count, images = count + 1, images + len(y)
            if len(window_lr) == tc.check_every:
                total += _check(window, window_lr, epoch, first=checked + 1, check_every=tc.check_every)
                checked, window_lr, mean = count, [], total / count
            if on_step is not None:
                on_step(count, mean)
        if window_lr:
            total += _check(window[: len(window_lr)], window_lr, epoch, first=checked + 1,
                            check_every=tc.check_every)
    seconds = time.perf_counter() - started  # the last check waited for the device: every step is in it
    return EpochStats(total / max(count, 1), lr, images, seconds)


def _step(model, x: torch.Tensor, y: torch.Tensor, stage: Stage, tc: TrainingConfig, optimizer,
          precision: Precision, progress: float) -> torch.Tensor:
    """One optimizer step on a batch (forward and loss under `precision`'s autocast); returns the loss, on the
    device."""
    with precision.autocast():
        loss = stage_loss(model(x), y, stage, tc, progress)
    optimizer.zero_grad(set_to_none=True)
    if precision.scaler is None:
        loss.backward()
        optimizer.step()
    else:  # fp16: gradients scaled up so small ones survive; a step with inf gradients is skipped
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
    return loss


def _check(window: torch.Tensor, lrs: list[float], epoch: int, first: int, check_every: int) -> float:
    """Read the losses of steps `first`..`first + len(lrs) - 1` of an epoch (the one wait for the device) and
    return their sum.

    Raises:
        TrainingDiverged: one is NaN or infinite: names the first such step and the steps this check covered.
    """
    values = window.tolist()
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is None:
        return math.fsum(values)
    last = first + len(values) - 1
    raise TrainingDiverged(
        f"training diverged: loss {values[bad]} at epoch {epoch}, step {first + bad} (lr {lrs[bad]:.3g}; found "
        f"by the check of steps {first} to {last}, one every {check_every} steps: the weights already took the "
        "steps after it); lower training.lr"
    )


@torch.no_grad()
def predict(model: torch.nn.Module, split, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exit logits [K, N, C] and failure logits [K, N] (or None) of a split, on the CPU, in eval mode, in float32
    (never under autocast, whatever precision trained the model)."""
    model.eval()
    device = next(model.parameters()).device
    memory_format = input_memory_format(model, device)
    logits, failure = [], []
    for x, _ in iterate_batches(split, batch_size, shuffle=False):
        out = model(torch.as_tensor(x).to(device, non_blocking=True, memory_format=memory_format))
        logits.append(out.logits.float().cpu())
        if out.failure is not None:
            failure.append(out.failure.float().cpu())
    return torch.cat(logits, dim=1), (torch.cat(failure, dim=1) if failure else None)


def exit_accuracy(model: torch.nn.Module, split, batch_size: int) -> list[float]:
    """Accuracy of each exit on a split, [K] (eval mode)."""
    logits, _ = predict(model, split, batch_size)
    labels = torch.as_tensor(split.y).cpu().view(1, -1)
    return (logits.argmax(dim=-1) == labels).float().mean(dim=1).tolist()


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
