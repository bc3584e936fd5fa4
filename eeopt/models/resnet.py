"""ResNets as early-exit backbones: blocks, stage, model, factory, variants (timm's file order).

`width` is the channel count of the first stage for every variant; later stages scale from it by the variant's
`channel_multipliers`. So `resnet20` with width 16 is He et al.'s CIFAR ResNet-20 (16-32-64), `resnet18` with
width 64 is the standard ResNet-18 (64-128-256-512), and `resnet50` with width 64 has bottleneck planes 64-...-512
(outputs 256-...-2048). With eeopt's default width 16 every variant is a 4x thinner, CPU-friendly version.

Stems: ``small`` is a 3x3 stride-1 convolution without max-pool (CIFAR, MNIST-sized inputs); ``imagenet`` is the
7x7 stride-2 convolution plus 3x3 stride-2 max-pool; ``auto`` (the default) picks ``imagenet`` when the shorter
image side is at least 128 pixels, else ``small``.

`model.backbone_kwargs` may override: depths, strides, channel_multipliers, channels (absolute per-stage channels,
which replace width * multipliers), block ('basic' | 'bottleneck'), stem ('auto' | 'small' | 'imagenet'),
zero_init_last (start each residual branch at zero via its last BatchNorm's weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from eeopt.errors import ConfigError
from eeopt.models.init import he_init
from eeopt.models.registry import Backbone, register_backbone

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "make_stage"]


# --------------------------------------------------------------------------------------------------- blocks
def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_ch)]


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    # Projection (option B) whenever the shape changes; identity otherwise.
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU. `planes` is the output channel count."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_channels, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, out, 3)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out, stride)
        self.out_channels = out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as in ResNet v1.5), 1x1 expand to 4 * `planes`, plus shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_channels, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, out, 1)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out, stride)
        self.out_channels = out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(y + self.shortcut(x))


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


# --------------------------------------------------------------------------------------------------- stage
def make_stage(block: str, in_channels: int, planes: int, depth: int, stride: int) -> list[nn.Module]:
    """`depth` blocks of type `block`; the first carries the stride. Returned as a list, not a Sequential: the
    backbone keeps one flat `blocks` list because exits attach after individual blocks, not stages."""
    cls = _BLOCKS[block]
    blocks: list[nn.Module] = []
    for i in range(depth):
        blocks.append(cls(in_channels, planes, stride if i == 0 else 1))
        in_channels = planes * cls.expansion
    return blocks


# --------------------------------------------------------------------------------------------------- model
class ResNet(Backbone):
    """A ResNet whose residual blocks are exposed one by one for early exits.

    Args:
        in_channels, image_size: the input the network is built for ([in_channels, H, W]).
        depths: blocks per stage.
        channels: per-stage channels (the bottleneck planes for 'bottleneck'; outputs are 4x that).
        strides: the stride of each stage's first block.
        block: 'basic' or 'bottleneck'.
        stem: 'auto', 'small' or 'imagenet' (see the module docstring).
        zero_init_last: zero the last BatchNorm weight of every residual branch.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        depths: Sequence[int],
        channels: Sequence[int],
        strides: Sequence[int],
        block: str = "basic",
        stem: str = "auto",
        zero_init_last: bool = False,
    ):
        super().__init__()
        assert len(depths) == len(channels) == len(strides), "depths, channels and strides need one entry per stage"
        self.in_channels = in_channels
        self.image_size = tuple(image_size)
        if stem == "auto":
            stem = "imagenet" if min(image_size) >= 128 else "small"
        stem_channels = channels[0]
        if stem == "small":
            self.stem = nn.Sequential(*_conv_bn(in_channels, stem_channels, 3), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                *_conv_bn(in_channels, stem_channels, 7, 2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        self.stem_type = stem
        blocks: list[nn.Module] = []
        stage_of_block: list[int] = []
        width = stem_channels
        for stage, (depth, planes, stride) in enumerate(zip(depths, channels, strides)):
            stage_blocks = make_stage(block, width, planes, depth, stride)
            blocks += stage_blocks
            stage_of_block += [stage] * depth
            width = stage_blocks[-1].out_channels if stage_blocks else width
        self.blocks = nn.ModuleList(blocks)
        self.block_channels = [b.out_channels for b in blocks]
        self.block_stages = stage_of_block
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        he_init(self)
        if zero_init_last:
            for b in self.blocks:
                b.zero_init_last()


# --------------------------------------------------------------------------------------------------- factory
_KWARGS = ("depths", "strides", "channel_multipliers", "channels", "block", "stem", "zero_init_last")


def _create_resnet(
    variant: str, in_channels: int, image_size: tuple[int, int], width: int, arch: dict[str, Any], **kwargs: Any
) -> ResNet:
    """Merge the variant's architecture `arch` with the caller's `kwargs` (the caller wins) and build the model.

    Raises:
        ConfigError: unknown or inconsistent `kwargs` (named as `model.backbone_kwargs`).
    """
    unknown = sorted(set(kwargs) - set(_KWARGS))
    if unknown:
        raise ConfigError(
            f"model.backbone_kwargs: unknown key {unknown[0]!r} for {variant} (expected one of {', '.join(_KWARGS)})"
        )
    args = {"stem": "auto", "zero_init_last": False, **arch, **kwargs}
    if width < 1:
        raise ConfigError(f"model.width: must be >= 1, got {width}")
    channels = args.pop("channels", None)
    multipliers = args.pop("channel_multipliers")
    if channels is None:
        channels = [max(1, round(width * m)) for m in multipliers]
    depths, strides = list(args.pop("depths")), list(args.pop("strides"))
    if not len(depths) == len(channels) == len(strides):
        raise ConfigError(
            f"model.backbone_kwargs: {variant} needs one entry per stage in depths ({len(depths)}), "
            f"channels/channel_multipliers ({len(channels)}) and strides ({len(strides)})"
        )
    if any(int(d) < 0 for d in depths) or sum(depths) < 1 or any(int(s) < 1 for s in strides):
        raise ConfigError(f"model.backbone_kwargs: {variant} needs depths >= 0 (at least one block) and strides >= 1")
    if any(int(c) < 1 for c in channels):
        raise ConfigError(f"model.backbone_kwargs: {variant} channels must be >= 1, got {list(channels)}")
    if args["block"] not in _BLOCKS:
        raise ConfigError(f"model.backbone_kwargs: block must be one of {', '.join(_BLOCKS)}, got {args['block']!r}")
    if args["stem"] not in ("auto", "small", "imagenet"):
        raise ConfigError(f"model.backbone_kwargs: stem must be auto, small or imagenet, got {args['stem']!r}")
    return ResNet(
        in_channels,
        image_size,
        depths=[int(d) for d in depths],
        channels=[int(c) for c in channels],
        strides=[int(s) for s in strides],
        block=args["block"],
        stem=args["stem"],
        zero_init_last=bool(args["zero_init_last"]),
    )


# --------------------------------------------------------------------------------------------------- variants
def _cifar(n: int) -> dict[str, Any]:
    # He et al. 2016, section 4.2: 6n+2 layers, 3 stages of n basic blocks at 16-32-64 channels.
    return dict(depths=(n, n, n), channel_multipliers=(1, 2, 4), strides=(1, 2, 2), block="basic")


def _imagenet(depths: tuple[int, ...], block: str) -> dict[str, Any]:
    return dict(depths=depths, channel_multipliers=(1, 2, 4, 8), strides=(1, 2, 2, 2), block=block)


@register_backbone("tinyresnet")
def tinyresnet(in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any) -> ResNet:
    """5 basic blocks, 16-32-32-64-64 channels at width 16, strides 1-2-1-2-1: the fast model for CPU runs."""
    arch = dict(depths=(1, 1, 1, 1, 1), channel_multipliers=(1, 2, 2, 4, 4), strides=(1, 2, 1, 2, 1), block="basic")
    return _create_resnet("tinyresnet", in_channels, image_size, width, arch, **kwargs)


@register_backbone("resnet20")
def resnet20(in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any) -> ResNet:
    return _create_resnet("resnet20", in_channels, image_size, width, _cifar(3), **kwargs)


@register_backbone("resnet32")
def resnet32(in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any) -> ResNet:
    return _create_resnet("resnet32", in_channels, image_size, width, _cifar(5), **kwargs)


@register_backbone("resnet56")
def resnet56(in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any) -> ResNet:
    return _create_resnet("resnet56", in_channels, image_size, width, _cifar(9), **kwargs)


@register_backbone("resnet110")
def resnet110(in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any) -> ResNet:
    return _create_resnet("resnet110", in_channels, image_size, width, _cifar(18), **kwargs)


@register_backbone("resnet18")
def resnet18(in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any) -> ResNet:
    return _create_resnet("resnet18", in_channels, image_size, width, _imagenet((2, 2, 2, 2), "basic"), **kwargs)


@register_backbone("resnet34")
def resnet34(in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any) -> ResNet:
    return _create_resnet("resnet34", in_channels, image_size, width, _imagenet((3, 4, 6, 3), "basic"), **kwargs)


@register_backbone("resnet50")
def resnet50(in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any) -> ResNet:
    return _create_resnet(
        "resnet50", in_channels, image_size, width, _imagenet((3, 4, 6, 3), "bottleneck"), **kwargs
    )
