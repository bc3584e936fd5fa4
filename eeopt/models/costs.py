"""FLOP counting with `torch.utils.flop_counter.FlopCounterMode`, per sample (a batch of 1).

FLOPs are torch's count: 2 x multiply-accumulates of convolutions and matrix products. BatchNorm, activations,
pooling, softmax and additions are not counted (they are a small share of a ResNet).

Counting runs a forward pass. In train mode that pass would update BatchNorm's running statistics (NOTES.md: a
network treated that way fell from 86 % to 15-20 % accuracy), so everything here counts on a deep copy in eval mode
under `torch.no_grad()`, and `count_exit_costs` checks the original's buffers and training flags are unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from eeopt.models.multi_exit import MultiExitModel

__all__ = ["count_backbone_flops", "count_block_flops", "count_exit_costs", "count_flops"]


def count_flops(module_or_fn: nn.Module | Callable[..., object], inputs: Tensor | tuple[Tensor, ...]) -> int:
    """FLOPs of one call `module_or_fn(*inputs)` (a module runs as an eval-mode deep copy; a plain function runs
    as is, so it is the caller's job to make it side-effect free)."""
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    fn = _eval_copy(module_or_fn) if isinstance(module_or_fn, nn.Module) else module_or_fn
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return int(counter.get_total_flops())


def count_block_flops(backbone: nn.Module, input_shape: tuple[int, int, int]) -> np.ndarray:
    """FLOPs of each backbone block for one input [C, H, W], the stem counted with the first block: float64
    [num_blocks]; its cumulative sum is the cost of the backbone up to each block."""
    with _unchanged(backbone):
        net = _eval_copy(backbone)
        x = _dummy(net, input_shape)
        flops = np.zeros(len(net.blocks))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            h = net.stem(x)
            for i, block in enumerate(net.blocks):
                h = block(h)
                flops[i] = counter.get_total_flops()
    return np.diff(flops, prepend=0.0)


def count_exit_costs(model: MultiExitModel, input_shape: tuple[int, int, int]) -> np.ndarray:
    """Cumulative per-sample FLOPs of reaching each exit in early-exit inference, float64 [K].

    Cost of exit k = the stem and blocks up to exit k's block + every exit head (and failure head) of exits 0..k,
    i.e. `model.forward_until(x, k)`; the last equals a full `model(x)`. Strictly increasing when every block
    does some convolution.

    Raises:
        RuntimeError: the original model's buffers or training flags changed (they must not; see module doc).
    """
    parts = _count_parts(model, input_shape)
    return np.cumsum(parts["blocks"] + parts["heads"] + parts["failure"])


def count_backbone_flops(model: MultiExitModel, input_shape: tuple[int, int, int]) -> float:
    """Per-sample FLOPs of the same network without early exits: stem, all blocks and the final head."""
    parts = _count_parts(model, input_shape)
    return float(parts["blocks"].sum() + parts["heads"][-1])


def _count_parts(model: MultiExitModel, input_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """One counted pass through the exits: FLOPs of each exit's new blocks, head and failure head, [K] each."""
    k_exits = model.num_exits
    parts = {name: np.zeros(k_exits) for name in ("blocks", "heads", "failure")}
    with _unchanged(model):
        net = _eval_copy(model)
        x = _dummy(net, input_shape)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            done = 0.0

            def mark(name: str, k: int) -> None:
                nonlocal done
                total = float(counter.get_total_flops())
                parts[name][k] = total - done
                done = total

            h, previous = x, None
            for k in range(k_exits):
                h = net.run_blocks(k, h)
                mark("blocks", k)
                logits = net.run_head(k, h, previous)
                mark("heads", k)
                net.run_failure_head(k, h, logits)
                mark("failure", k)
                previous = logits
    return parts


def _eval_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).eval()


def _dummy(module: nn.Module, input_shape: tuple[int, int, int]) -> Tensor:
    p = next(module.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    return torch.zeros((1, *input_shape), device=device, dtype=dtype)


@contextmanager
def _unchanged(module: nn.Module) -> Iterator[None]:
    """Check that the body leaves `module`'s buffers (BatchNorm running stats) and training flags bit-identical."""
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    flags = [m.training for m in module.modules()]
    yield
    changed = [name for name, b in module.named_buffers() if not torch.equal(buffers[name], b)]
    if changed or flags != [m.training for m in module.modules()]:
        what = f"buffers {', '.join(changed[:3])}" if changed else "training flags"
        raise RuntimeError(f"counting FLOPs changed the model's {what}; it must count on an eval-mode copy")
