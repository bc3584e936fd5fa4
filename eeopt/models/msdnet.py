"""MSDNet (Huang et al., "Multi-Scale Dense Networks for Resource Efficient Image Classification", ICLR 2018) as
an early-exit backbone: layers, blocks, model, factory, variants (timm's file order).

The network keeps S feature maps at once, one per scale (fine to coarse, each half the previous resolution). Every
layer adds `growth_rate * growth_factor[s]` channels to scale s (dense connectivity): a 3x3 convolution of the
same scale's map, and, where the next finer map is an input of the layer, a stride-2 3x3 convolution of it (each
then gives half the new channels). As depth grows, the finest scales are dropped ("prune", the authors' `max` or
`min` schedule) and 1x1 transition layers compress the channels by `reduction`. A block is a run of such layers
(`steps`: `base` layers in the first, then `step` each for `even`, `step * i + 1` for `lin_grow`); one classifier
reads the coarsest scale after every block. This follows the authors' PyTorch code (kalviny/MSDNet-PyTorch,
models/msdnet.py) layer for layer, parameters in the same order: with their settings the parameter counts are
theirs exactly (tests/test_msdnet.py), and their weights loaded position by position give bit-identical logits
at every exit (checked against their code outside this repository).

State between blocks: a list of maps [B, C_s, H_s, W_s], one per scale still in use (the finest dropped first).
`head_input` is the coarsest one, as the authors' classifiers read. `model.width` is the authors' nChannels (the
stem's channels at scale 0; scale s has `width * growth_factor[s]`).

Stem and classifier (the authors choose both by dataset): ``stem: small`` is a 3x3 stride-1 convolution (CIFAR,
MNIST-sized inputs) and goes with the CIFAR classifier (128 hidden channels, `head_options`); ``stem: imagenet``
is the 7x7 stride-2 convolution plus 3x3 stride-2 max-pool and goes with the ImageNet classifier (keeps the
coarsest scale's channels). ``stem: auto`` (the default) picks ``imagenet`` when the shorter image side is at
least 128 pixels, else ``small``, as for ResNets. The number of scales is `len(growth_factor)`: 3 for the
authors' CIFAR models, 4 for ImageNet.

`model.backbone_kwargs` (defaults: the authors' CIFAR-100 anytime model, `CIFAR_ANYTIME`): blocks, step_mode
('even' | 'lin_grow'), step, base, growth_rate, growth_factor (a list, one entry per scale), bn_factor (bottleneck
width factor per scale, same length), prune ('max' | 'min'), reduction (0 for no transitions), bottleneck (bool),
stem ('auto' | 'small' | 'imagenet'). The authors' ImageNet model is `IMAGENET` with width 32 at 224x224.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from eeopt.errors import ConfigError
from eeopt.models.init import he_init
from eeopt.models.registry import Backbone, register_backbone

__all__ = [
    "CIFAR_ANYTIME", "CIFAR_BUDGET", "IMAGENET", "LayerPlan", "MSDLayer", "MSDNet", "MultiScaleStem", "ScaleConv",
    "Transition", "block_steps", "plan_layers",
]


# --------------------------------------------------------------------------------------------------- layers
def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ScaleConv(nn.Sequential):
    """[B, in_ch, H, W] -> [B, out_ch, H / stride, W / stride]: with `bottleneck`, a 1x1 conv-BN-ReLU to
    min(in_ch, bn_factor * out_ch) channels first (DenseNet-BC), then a 3x3 conv-BN-ReLU with `stride` 1 or 2."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, bottleneck: bool, bn_factor: int):
        inner = min(in_ch, bn_factor * out_ch) if bottleneck else in_ch
        layers = list(_conv_bn_relu(in_ch, inner, 1)) if bottleneck else []
        super().__init__(*layers, *_conv_bn_relu(inner, out_ch, 3, stride))


class ScaleOutput(nn.Module):
    """One scale's output of an MSD layer: its input map with the new features concatenated after it.

    Without a finer input the new `growth` channels come from a 3x3 conv of the same scale; with one, half come
    from a stride-2 conv of the finer map and half from the same scale (the authors' concatenation order: input,
    finer, same).
    """

    def __init__(self, same_ch: int, finer_ch: int | None, growth: int, bottleneck: bool, bn_same: int,
                 bn_finer: int | None):
        super().__init__()
        if finer_ch is None:
            self.down = None
            self.same = ScaleConv(same_ch, growth, 1, bottleneck, bn_same)
        else:
            self.down = ScaleConv(finer_ch, growth // 2, 2, bottleneck, int(bn_finer))
            self.same = ScaleConv(same_ch, growth // 2, 1, bottleneck, bn_same)

    def forward(self, same: Tensor, finer: Tensor | None = None) -> Tensor:
        if self.down is None:
            return torch.cat([same, self.same(same)], dim=1)
        return torch.cat([same, self.down(finer), self.same(same)], dim=1)


class MSDLayer(nn.Module):
    """One multi-scale dense layer: `in_scales` maps in (the coarsest of the S scales), `out_scales` maps out
    (in_scales or one fewer: the finest is dropped and only feeds the next scale's strided conv). As in the
    authors' code every output scale is computed, even a finer one that no later layer or classifier reads (only
    where a schedule ends on a layer with several scales; the authors' settings end on the coarsest alone).

    Args:
        channels: input channels of every scale, [S] (unused scales ignored).
        growth: new channels of every scale, [S].
        bn_factor: bottleneck factors, [S].
    """

    def __init__(self, channels: Sequence[int], growth: Sequence[int], bn_factor: Sequence[int], bottleneck: bool,
                 in_scales: int, out_scales: int):
        super().__init__()
        n_scales = len(channels)
        assert 1 <= out_scales <= in_scales <= n_scales and in_scales - out_scales <= 1, (in_scales, out_scales)
        self.first_in, self.first_out = n_scales - in_scales, n_scales - out_scales
        self.outputs = nn.ModuleList()
        for s in range(self.first_out, n_scales):
            finer = s - 1 >= self.first_in
            self.outputs.append(ScaleOutput(
                channels[s], channels[s - 1] if finer else None, growth[s], bottleneck, bn_factor[s],
                bn_factor[s - 1] if finer else None,
            ))

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        out = []
        for i, unit in enumerate(self.outputs):
            j = i + self.first_out - self.first_in  # this scale's position in `maps`
            out.append(unit(maps[j], maps[j - 1] if unit.down is not None else None))
        return out


class Transition(nn.Module):
    """Per-scale 1x1 conv-BN-ReLU compressing channels (`in_channels[s]` -> `out_channels[s]`), resolution kept."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]):
        super().__init__()
        self.convs = nn.ModuleList(_conv_bn_relu(i, o, 1) for i, o in zip(in_channels, out_channels))

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [conv(x) for conv, x in zip(self.convs, maps)]


class MultiScaleStem(nn.Module):
    """[B, C_in, H, W] -> S maps: the first convolution (3x3, or 7x7/2 + max-pool for `imagenet`) gives scale 0,
    then a stride-2 3x3 conv-BN-ReLU gives each coarser scale from the previous one."""

    def __init__(self, in_channels: int, channels: Sequence[int], kind: str):
        super().__init__()
        if kind == "small":
            first = _conv_bn_relu(in_channels, channels[0], 3)
        else:  # the authors' ImageNet stem convolution has a bias
            first = nn.Sequential(nn.Conv2d(in_channels, channels[0], 7, 2, 3), nn.BatchNorm2d(channels[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        self.scales = nn.ModuleList([first])
        self.scales.extend(_conv_bn_relu(a, b, 3, 2) for a, b in zip(channels, channels[1:]))

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for conv in self.scales:
            x = conv(x)
            maps.append(x)
        return maps


# --------------------------------------------------------------------------------------------------- blocks
class LayerPlan(NamedTuple):
    """One MSD layer of the network: its input and output scale counts and whether a transition follows it."""

    in_scales: int
    out_scales: int
    transition: bool


def block_steps(blocks: int, step_mode: str, step: int, base: int) -> list[int]:
    """MSD layers per block: `base` in the first, then `step` (`even`) or `step * i + 1` (`lin_grow`) in block i."""
    return [base] + [step if step_mode == "even" else step * i + 1 for i in range(1, blocks)]


def plan_layers(steps: Sequence[int], n_scales: int, prune: str, reduction: float) -> list[list[LayerPlan]]:
    """Scales in and out of every layer, by block, and where transitions go (the authors' schedules).

    `max`: the L layers fall into S equal runs (ceil(L / S) layers); the finest scale is dropped at the start of
    each run after the first, and a transition follows each layer that drops one. `min`: a scale is only dropped
    when the remaining layers could no longer reach the coarsest scale from it; transitions follow layers
    floor(L / 3) and floor(2L / 3). No transitions when `reduction` is 0.
    """
    total = sum(steps)
    interval = math.ceil(total / n_scales)
    plan, layer = [], 0
    for n in steps:
        block = []
        for _ in range(n):
            layer += 1
            if prune == "max":
                in_scales = n_scales - max(0, layer - 2) // interval
                out_scales = n_scales - (layer - 1) // interval
                transition = in_scales > out_scales
            else:
                in_scales = min(n_scales, total - layer + 2)
                out_scales = min(n_scales, total - layer + 1)
                transition = layer in (total // 3, (2 * total) // 3)
            block.append(LayerPlan(in_scales, out_scales, transition and reduction > 0))
        plan.append(block)
    return plan


# --------------------------------------------------------------------------------------------------- model
class MSDNet(Backbone):
    """MSDNet whose blocks (each a run of MSD layers) are exposed one by one for exits.

    Args:
        in_channels, image_size: the input the network is built for ([in_channels, H, W]).
        width: channels of scale 0 after the stem (the authors' nChannels).
        blocks, step_mode, step, base: how many blocks and MSD layers per block (`block_steps`).
        growth_rate, growth_factor: scale s gains growth_rate * growth_factor[s] channels per layer; S =
            len(growth_factor).
        bn_factor: per-scale bottleneck width factor, [S].
        prune: 'max' or 'min' (`plan_layers`).
        reduction: transitions keep floor(reduction * n) of the n base channels (scale s has n * growth_factor[s]).
        bottleneck: 1x1 bottleneck before every 3x3 conv of a layer.
        stem: 'small' or 'imagenet' (the module docstring); sets the classifier style in `head_options` too.

    Attributes:
        block_channels: channels of the coarsest scale after every block, [blocks].
        steps: MSD layers per block; plan: `plan_layers`' output.
        head_options: {"msdnet": {"hidden": 128}} (CIFAR classifier) or {"msdnet": {"hidden": None}} (ImageNet).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        width: int,
        blocks: int,
        step_mode: str,
        step: int,
        base: int,
        growth_rate: int,
        growth_factor: Sequence[int],
        bn_factor: Sequence[int],
        prune: str,
        reduction: float,
        bottleneck: bool,
        stem: str,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.image_size = tuple(image_size)
        self.stem_type = stem
        gf, n_scales = list(growth_factor), len(growth_factor)
        growth = [growth_rate * g for g in gf]
        self.steps = block_steps(blocks, step_mode, step, base)
        self.plan = plan_layers(self.steps, n_scales, prune, reduction)
        self.stem = MultiScaleStem(in_channels, [width * g for g in gf], stem)

        n = width  # base channels; scale s has n * growth_factor[s]
        built: list[nn.Module] = []
        self.block_channels = []
        for block_plan in self.plan:
            layers: list[nn.Module] = []
            for p in block_plan:
                layers.append(MSDLayer([n * g for g in gf], growth, bn_factor, bottleneck, p.in_scales, p.out_scales))
                n += growth_rate
                if p.transition:
                    kept = gf[n_scales - p.out_scales:]
                    layers.append(Transition([n * g for g in kept], [math.floor(reduction * n) * g for g in kept]))
                    n = math.floor(reduction * n)
            built.append(nn.Sequential(*layers))
            self.block_channels.append(n * gf[-1])
        self.blocks = nn.ModuleList(built)
        self.head_options = {"msdnet": {"hidden": 128 if stem == "small" else None}}
        self._init_weights()

    def _init_weights(self) -> None:
        he_init(self)  # the authors': He-normal convolutions (fan-out), BatchNorm at 1 / 0; heads keep their own

    def head_input(self, state: list[Tensor]) -> Tensor:
        """The coarsest scale [B, C, H_S, W_S]: what the authors' classifiers read."""
        return state[-1]


# --------------------------------------------------------------------------------------------------- factory
_KWARGS = ("blocks", "step_mode", "step", "base", "growth_rate", "growth_factor", "bn_factor", "prune", "reduction",
           "bottleneck", "stem")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model.backbone_kwargs: {name} must be an integer >= 1, got {value!r}")
    return value


def _factors(name: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"model.backbone_kwargs: {name} must be a non-empty list of integers >= 1, got {value!r}")
    return [_positive_int(name, v) for v in value]


def _create_msdnet(
    variant: str, in_channels: int, image_size: tuple[int, int], width: int, arch: dict[str, Any], **kwargs: Any
) -> MSDNet:
    """Merge the variant's architecture `arch` with the caller's `kwargs` (the caller wins) and build the model.

    Raises:
        ConfigError: unknown or invalid `kwargs` (named as `model.backbone_kwargs`), or a bad `model.width`.
    """
    unknown = sorted(set(kwargs) - set(_KWARGS))
    if unknown:
        raise ConfigError(
            f"model.backbone_kwargs: unknown key {unknown[0]!r} for {variant} (expected one of {', '.join(_KWARGS)})"
        )
    args = {"stem": "auto", **arch, **kwargs}
    if width < 1:
        raise ConfigError(f"model.width: must be >= 1, got {width}")
    for name in ("blocks", "step", "base", "growth_rate"):
        _positive_int(name, args[name])
    gf, bn = _factors("growth_factor", args["growth_factor"]), _factors("bn_factor", args["bn_factor"])
    if len(bn) != len(gf):
        raise ConfigError(f"model.backbone_kwargs: bn_factor needs one entry per scale like growth_factor ({len(gf)}),"
                          f" got {bn}")
    odd = [g for g in gf[1:] if args["growth_rate"] * g % 2]
    if odd:  # scales past the first split their new channels between two convolutions
        raise ConfigError(f"model.backbone_kwargs: growth_rate * growth_factor must be even at every scale after the "
                          f"first, got growth_rate {args['growth_rate']} with growth_factor {gf}")
    choices = {"step_mode": ("even", "lin_grow"), "prune": ("max", "min"), "stem": ("auto", "small", "imagenet")}
    for name, allowed in choices.items():
        if args[name] not in allowed:
            raise ConfigError(f"model.backbone_kwargs: {name} must be {' or '.join(allowed)}, got {args[name]!r}")
    reduction = args["reduction"]
    if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or not 0 <= reduction <= 1:
        raise ConfigError(f"model.backbone_kwargs: reduction must be a number in [0, 1], got {reduction!r}")
    if not isinstance(args["bottleneck"], bool):
        raise ConfigError(f"model.backbone_kwargs: bottleneck must be true or false, got {args['bottleneck']!r}")
    stem = args["stem"]
    if stem == "auto":
        stem = "imagenet" if min(image_size) >= 128 else "small"
    steps = block_steps(args["blocks"], args["step_mode"], args["step"], args["base"])
    plan = plan_layers(steps, len(gf), args["prune"], reduction)
    n = width
    for p in (p for block in plan for p in block):
        n += args["growth_rate"]
        if p.transition:
            n = math.floor(reduction * n)
            if n < 1:
                raise ConfigError(f"model.backbone_kwargs: reduction {reduction} leaves no channels after a "
                                  "transition; raise it, or model.width / growth_rate")
    return MSDNet(in_channels, image_size, width, args["blocks"], args["step_mode"], args["step"], args["base"],
                  args["growth_rate"], gf, bn, args["prune"], float(reduction), args["bottleneck"], stem)


# --------------------------------------------------------------------------------------------------- variants
#: The authors' CIFAR-100 anytime-prediction model (width 16): 7 blocks, 3 scales, 3,067,960 parameters with their
#: classifiers for 100 classes.
CIFAR_ANYTIME: dict[str, Any] = dict(
    blocks=7, step_mode="even", step=2, base=4, growth_rate=6, growth_factor=[1, 2, 4], bn_factor=[1, 2, 4],
    prune="max", reduction=0.5, bottleneck=True,
)
#: Their CIFAR-100 budgeted-batch model (width 16): 5 blocks growing linearly, 2,078,924 parameters (100 classes).
CIFAR_BUDGET: dict[str, Any] = {**CIFAR_ANYTIME, "blocks": 5, "step_mode": "lin_grow", "step": 1, "base": 1}
#: Their ImageNet model (width 32, 224x224): 5 blocks of 4 layers, 4 scales, 23,958,440 parameters (1,000 classes).
IMAGENET: dict[str, Any] = {**CIFAR_ANYTIME, "blocks": 5, "step": 4, "base": 4, "growth_rate": 16,
                            "growth_factor": [1, 2, 4, 4], "bn_factor": [1, 2, 4, 4]}


@register_backbone("msdnet")
def msdnet(in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any) -> MSDNet:
    """MSDNet; without `kwargs` the authors' CIFAR-100 anytime model (`CIFAR_ANYTIME`, width 16)."""
    return _create_msdnet("msdnet", in_channels, image_size, width, CIFAR_ANYTIME, **kwargs)
