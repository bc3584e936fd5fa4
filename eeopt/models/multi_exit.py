"""`MultiExitModel`: a backbone with an exit head after chosen blocks, and `build_model` from a `ModelConfig`.

Exit k (0-based) sits after block `exit_blocks[k]`; the last block always carries the final exit. The network is
a chain of K segments; segment k runs the blocks after exit k-1 up to exit k's block (segment 0 starts with the
stem), then exit k's head and, with failure heads, exit k's failure head. `forward` runs every segment;
`forward_until(x, k)` runs segments 0..k, which is exactly what early-exit inference computes to reach exit k
(heads on the way are evaluated to decide whether to exit there) and what `costs[k]` counts. `exit_step` runs one
segment so that inference code can drop finished samples between segments.

Between segments the model carries the backbone's *state* (a map, tokens or multi-scale maps; see
`eeopt.models.registry`); heads read `backbone.head_input(state)`. Nothing here depends on the family.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from eeopt.config import FlopShares, ModelConfig
from eeopt.errors import ConfigError
from eeopt.models.costs import count_backbone_flops, count_block_flops, count_exit_costs
from eeopt.models.heads import HEAD_TYPES, FailureHead, make_exit_head
from eeopt.models.registry import create_backbone
from eeopt.models.state import index_state

__all__ = ["ExitForward", "MultiExitModel", "build_model", "resolve_exit_blocks"]


class ExitForward(NamedTuple):
    """logits: [K, B, C]; failure: [K, B] raw logits of "this exit is correct", or None without failure heads."""

    logits: Tensor
    failure: Tensor | None


class MultiExitModel(nn.Module):
    """A backbone with K exits.

    Args:
        backbone: see `eeopt.models.registry` (stem, blocks, head_input, in_channels, image_size).
        exit_blocks: 0-based, strictly increasing block indices after which an exit sits; the last block is
            added when missing (it always carries the final exit).
        head: 'linear', 'sdn', 'conv' or 'msdnet' (see `eeopt.models.heads`); the backbone's `head_options`
            (a dict by head type, optional) gives that type's settings for this family.
        cascade: early heads after the first also take the previous head's logits (Zero Time Waste).
        failure_head: add one failure head per exit.
        num_classes: C.
        input_shape: [C_in, H, W] used to probe feature-map sizes; default (backbone.in_channels,
            *backbone.image_size).

    Attributes:
        num_exits (K), exit_blocks, num_classes, head_type, cascade, has_failure_heads, input_shape;
        heads, failure_heads (nn.ModuleList, empty without failure heads);
        costs: float64 [K] cumulative per-sample FLOPs of reaching each exit, and backbone_flops: FLOPs of the
            backbone + final head alone; both set by `build_model` (None until counted, see
            `eeopt.models.costs`).

    Raises:
        ValueError: bad exit_blocks, head type (or one that needs a map on a family whose heads read vectors) or
            num_classes.
    """

    def __init__(
        self,
        backbone: nn.Module,
        exit_blocks: Sequence[int],
        head: str,
        cascade: bool,
        failure_head: bool,
        num_classes: int,
        *,
        input_shape: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        n_blocks = len(backbone.blocks)
        blocks = [int(b) for b in exit_blocks]
        if any(b < 0 or b >= n_blocks for b in blocks):
            raise ValueError(f"exit_blocks {blocks} out of range for a backbone with {n_blocks} blocks")
        if any(a >= b for a, b in zip(blocks, blocks[1:])):
            raise ValueError(f"exit_blocks must be strictly increasing, got {blocks}")
        if not blocks or blocks[-1] != n_blocks - 1:
            blocks.append(n_blocks - 1)
        if head not in HEAD_TYPES:
            raise ValueError(f"unknown head type {head!r} (choose from {', '.join(HEAD_TYPES)})")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if input_shape is None:
            input_shape = (int(backbone.in_channels), *map(int, backbone.image_size))
        self.backbone = backbone
        self.exit_blocks = blocks
        self.num_exits = len(blocks)
        self.num_classes = num_classes
        self.head_type = head
        self.cascade = bool(cascade)
        self.has_failure_heads = bool(failure_head)
        self.input_shape = tuple(input_shape)

        shapes = head_input_shapes(backbone, self.input_shape)
        k_last = self.num_exits - 1
        options = dict(getattr(backbone, "head_options", {}).get(head, {}))
        self.heads = nn.ModuleList(
            make_exit_head(
                head,
                shapes[b][0],
                num_classes,
                shapes[b][1:],
                takes_previous=self.cascade and 0 < k < k_last,  # the final head stays the plain classifier
                **options,
            )
            for k, b in enumerate(blocks)
        )
        self.failure_heads = nn.ModuleList(
            FailureHead(shapes[b][0], num_classes) for b in (blocks if failure_head else [])
        )
        self.costs: np.ndarray | None = None
        self.backbone_flops: float | None = None

    # ----------------------------------------------------------------------------------------------- segments
    def run_blocks(self, k: int, h: Any) -> Any:
        """Segment k's blocks: the input image -> exit 0's block state (k=0, stem included), else exit k-1's
        block state -> exit k's block state."""
        start = 0 if k == 0 else self.exit_blocks[k - 1] + 1
        if k == 0:
            h = self.backbone.stem(h)
        for i in range(start, self.exit_blocks[k] + 1):
            h = self.backbone.blocks[i](h)
        return h

    def run_head(self, k: int, h: Any, previous: Tensor | None = None) -> Tensor:
        """Exit k's logits [B, C] from its block's state; `previous` (exit k-1's logits) is used by cascade heads."""
        return self._head(k, self.backbone.head_input(h), previous)

    def run_failure_head(self, k: int, h: Any, logits: Tensor) -> Tensor | None:
        """Exit k's failure logit [B] from its block's state (None without failure heads)."""
        return self.failure_heads[k](self.backbone.head_input(h), logits) if self.has_failure_heads else None

    def _head(self, k: int, z: Tensor, previous: Tensor | None) -> Tensor:
        head = self.heads[k]
        return head(z, previous if head.takes_previous else None)

    def exit_step(self, k: int, h: Any, previous: Tensor | None = None) -> tuple[Any, Tensor, Tensor | None]:
        """Run segment k: `h` is the input image (k=0) or the state returned by step k-1; `previous` is step
        k-1's logits. Returns (state, logits [B, C], failure [B] | None). The head input is read once."""
        h = self.run_blocks(k, h)
        z = self.backbone.head_input(h)
        logits = self._head(k, z, previous)
        failure = self.failure_heads[k](z, logits) if self.has_failure_heads else None
        return h, logits, failure

    @staticmethod
    def keep_samples(h: Any, index: Tensor) -> Any:
        """The state `h` of the samples `index` only (int64 [B'], on the state's device): batch compaction."""
        return index_state(h, index)

    def iter_exits(self, x: Tensor, until: int | None = None) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Yield (logits [B, C], failure [B] | None) of exits 0..until (default: all), computing lazily."""
        last = self.num_exits - 1 if until is None else self._exit_index(until)
        h, previous = x, None
        for k in range(last + 1):
            h, previous, failure = self.exit_step(k, h, previous)
            yield previous, failure

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> ExitForward:
        """[B, C_in, H, W] -> ExitForward(logits [K, B, C], failure [K, B] | None)."""
        outs = list(self.iter_exits(x))
        logits = torch.stack([o[0] for o in outs])
        failure = torch.stack([o[1] for o in outs]) if self.has_failure_heads else None
        return ExitForward(logits, failure)

    def forward_until(self, x: Tensor, k: int) -> tuple[Tensor, Tensor | None]:
        """Exit k's (logits [B, C], failure [B] | None), computing segments 0..k only (negative k counts from
        the end). Raises IndexError for k outside [-K, K)."""
        out = None
        for out in self.iter_exits(x, until=k):
            pass
        return out

    def _exit_index(self, k: int) -> int:
        if not -self.num_exits <= k < self.num_exits:
            raise IndexError(f"exit {k} out of range for a model with {self.num_exits} exits")
        return k % self.num_exits

    # ----------------------------------------------------------------------------------------------- parameters
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint groups covering every parameter: 'backbone' (all backbone parameters: stem and blocks),
        'final_head' (the last exit's head), 'early_heads' (heads of exits 0..K-2), 'failure_heads' (empty
        without failure heads)."""
        return {
            "backbone": list(self.backbone.parameters()),
            "final_head": list(self.heads[-1].parameters()),
            "early_heads": [p for head in self.heads[:-1] for p in head.parameters()],
            "failure_heads": list(self.failure_heads.parameters()),
        }


def head_input_shapes(backbone: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """The head input's shape after every block for one input: [C, H, W] for maps, [D] for vectors; from an
    eval-mode, no-grad pass (BatchNorm statistics are read, not updated); training flags are restored."""
    p = next(backbone.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    flags = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    shapes = []
    try:
        with torch.no_grad():
            h = backbone.stem(torch.zeros((1, *input_shape), device=device, dtype=dtype))
            for block in backbone.blocks:
                h = block(h)
                shapes.append(tuple(backbone.head_input(h).shape[1:]))
    finally:
        for m, training in flags:
            m.training = training
    return shapes


# --------------------------------------------------------------------------------------------------- building
def resolve_exit_blocks(
    exits: object, backbone: nn.Module, input_shape: tuple[int, int, int], backbone_name: str = "the backbone"
) -> list[int]:
    """0-based blocks carrying an exit, increasing, the last block always included.

    `exits`: 'every_block'; 1-based block numbers; or `FlopShares`, which picks for each share the block whose
    cumulative backbone FLOPs (stem included, heads excluded) divided by the whole backbone's is closest to it (the
    earlier block on a tie), duplicates dropped. Only `FlopShares` runs the backbone (to count FLOPs).
    `backbone_name` is how the message names the backbone ("tinyresnet").

    Raises:
        ConfigError: a block number beyond the backbone's blocks, or an unrecognised `exits` value.
    """
    n = len(backbone.blocks)
    if exits == "every_block":
        chosen = list(range(n))
    elif isinstance(exits, FlopShares):
        cumulative = np.cumsum(count_block_flops(backbone, input_shape))
        share = cumulative / cumulative[-1]
        chosen = [int(np.argmin(np.abs(share - s))) for s in exits.flops]
    elif isinstance(exits, (list, tuple)) and all(isinstance(b, int) and not isinstance(b, bool) for b in exits):
        bad = [b for b in exits if not 1 <= b <= n]
        if bad:
            raise ConfigError(
                f"model.exits: block {bad[0]} does not exist ({backbone_name} has {n} blocks; use numbers 1..{n})"
            )
        chosen = [b - 1 for b in exits]
    else:
        raise ConfigError(f"model.exits: expected 'every_block', block numbers or {{flops: [...]}}, got {exits!r}")
    return sorted(set(chosen) | {n - 1})


def build_model(
    cfg: ModelConfig, num_classes: int, in_channels: int, image_size: tuple[int, int] | int
) -> MultiExitModel:
    """The multi-exit model `cfg` describes, for inputs [in_channels, *image_size], with `costs` and
    `backbone_flops` counted.

    Raises:
        ConfigError: unknown backbone, bad backbone_kwargs, exits beyond the backbone's blocks, or bad head.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    input_shape = (int(in_channels), *image_size)
    backbone = create_backbone(cfg.backbone, in_channels, image_size, cfg.width, **cfg.backbone_kwargs)
    exit_blocks = resolve_exit_blocks(cfg.exits, backbone, input_shape, cfg.backbone)
    if cfg.head not in HEAD_TYPES:
        raise ConfigError(f"model.head: expected one of {', '.join(HEAD_TYPES)}, got {cfg.head!r}")
    if num_classes < 1:
        raise ConfigError(f"the dataset has {num_classes} classes; a classifier needs at least one")
    try:
        model = MultiExitModel(
            backbone, exit_blocks, cfg.head, cfg.cascade, cfg.failure_head, num_classes, input_shape=input_shape
        )
    except ValueError as exc:
        raise ConfigError(f"model.head: {cfg.backbone}: {exc}") from None
    model.costs = count_exit_costs(model, input_shape)
    model.backbone_flops = count_backbone_flops(model, input_shape)
    return model
