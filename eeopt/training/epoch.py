"""One training epoch, and running a model over a split: its exit logits, per-exit accuracy, `ExitOutputs`."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from eeopt.config import TrainingConfig
from eeopt.data import iterate_batches
from eeopt.errors import TrainingDiverged
from eeopt.outputs import ExitOutputs
from eeopt.training.stages import Stage, stage_loss


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: batches of a single sample are skipped (BatchNorm cannot train on one)."""
    full, rest = divmod(num_samples, batch_size)
    return full + (1 if rest >= 2 else 0)


def train_epoch(
    model, dataset, stage: Stage, tc: TrainingConfig, optimizer, scheduler, generator: torch.Generator,
    device: torch.device, *, epoch: int, first_step: int, total_steps: int,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[float, float]:
    """One pass over the shuffled training split, one optimizer and scheduler step per batch.

    Returns (mean training loss, learning rate of the last step). `first_step` is the number of steps this stage
    took before this epoch (for the sdn exit weights); `on_step(steps done this epoch, running mean loss)` follows
    each step.

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
            on_step(count, running / count)
    return running / max(count, 1), lr


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
