"""Backbone registry: `register_backbone` / `create_backbone` / `list_backbones` (timm's `register_model` pattern).

A backbone is a stem plus a chain of blocks; exits attach after blocks. What passes from one block to the next is
the family's *state*: a feature map [B, C, H, W] (ResNets), a token sequence [B, N, D] (ViTs), a list of maps at
several scales (MSDNet), or any nesting of tensors whose first dimension is the batch. A backbone provides:

- ``stem``: input [B, C_in, H, W] -> the first block's input state;
- ``blocks``: an `nn.ModuleList`, one entry per block (state -> state). Blocks are the unit of exit placement
  (numbered from 1 in configs, indexed from 0 in code);
- ``head_input(state)``: what an exit head reads from a block's state: a map [B, C, H, W] (pooled by the head) or a
  vector [B, D] (a class token, a mean token). `Backbone` returns the state itself; MSDNet reads its coarsest
  scale, a ViT its final norm's class token;
- ``in_channels`` and ``image_size``: the input it was built for (used to probe head-input shapes and count FLOPs);
- ``forward(x)``: stem then every block; returns the last block's head input.

Batch compaction in early-exit inference keeps the running samples of every tensor in a state
(`eeopt.models.state.index_state`), so a family never implements indexing. `block_channels` (per-block head-input
channels) is optional: `MultiExitModel` probes the shapes it needs.

`Backbone` below implements ``forward``, ``head_input`` and ``num_features``; subclass it (or provide the same
attributes). A new family is one `@register_backbone` factory.

A whole library of networks is one `register_backbone_library(prefix, factory)`: ``model.backbone: prefix:name``
then calls ``factory(prefix, name, in_channels, image_size, width, **kwargs)`` (eeopt.models.external registers
``timm`` and ``torchvision`` this way). Library names are not listed by `list_backbones`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from eeopt.errors import ConfigError
from eeopt.registry import Registry

BackboneFactory = Callable[..., nn.Module]
LibraryFactory = Callable[..., nn.Module]


class _BackboneRegistry(Registry[BackboneFactory]):
    """Registered backbone names, plus library prefixes: `get("timm:vit_small_patch16_224")` is the timm
    factory bound to that model name (after the library's own check, e.g. that it is installed)."""

    def __init__(self) -> None:
        super().__init__("backbone")
        self.libraries: dict[str, tuple[LibraryFactory, Callable[[str, str], None] | None]] = {}

    def get(self, name: str, where: str = "") -> BackboneFactory:
        prefix, sep, model = name.partition(":") if isinstance(name, str) else ("", "", "")
        if not sep or prefix not in self.libraries:
            return super().get(name, where)
        if not model:
            raise ConfigError(f"{where + ': ' if where else ''}{name!r} names no model (write {prefix}:<model name>)")
        factory, check = self.libraries[prefix]
        if check is not None:
            check(prefix, model)
        return functools.partial(factory, prefix, model)

    def unknown(self, name: object) -> str:
        libraries = ", ".join(f"{p}:<name>" for p in sorted(self.libraries))
        return super().unknown(name)[:-1] + (f"; or {libraries})" if libraries else ")")


BACKBONES = _BackboneRegistry()


class Backbone(nn.Module):
    """Base class of early-exit backbones; subclasses set `stem`, `blocks`, `in_channels` and `image_size` in
    `__init__` (and `block_channels` where they know them), and override `head_input` when heads do not read the
    state as it is."""

    stem: nn.Module
    blocks: nn.ModuleList
    block_channels: list[int]
    in_channels: int
    image_size: tuple[int, int]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_features(self) -> int:
        """Channels of the last block's head input."""
        return self.block_channels[-1]

    def head_input(self, state: Any) -> Tensor:
        """What exit heads read from a block's state: [B, C, H, W] or [B, D]. Default: the state itself."""
        return state

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> the last block's head input ([B, C, H', W'] or [B, D])."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head_input(x)


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register `fn(in_channels, image_size, width, **kwargs) -> backbone` under `name`.

    `name` is the stable snake_case key used in YAML (`model.backbone`) and MLflow.

    Raises:
        ValueError: `name` is already registered.
    """
    return BACKBONES.register(name)


def register_backbone_library(
    prefix: str, factory: LibraryFactory, check: Callable[[str, str], None] | None = None
) -> None:
    """Register a library of networks: `model.backbone: {prefix}:{name}` builds
    `factory(prefix, name, in_channels, image_size, width, **kwargs)`. `check(prefix, name)`, if given, runs when
    the name is looked up (before anything is built) and raises `ConfigError` when the library cannot serve it.

    Raises:
        ValueError: `prefix` is already registered, empty, or contains ':'.
    """
    if not prefix or ":" in prefix or prefix in BACKBONES.libraries:
        raise ValueError(f"backbone library prefix {prefix!r} is empty, has ':' or is already registered")
    BACKBONES.libraries[prefix] = (factory, check)


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return BACKBONES.names()


def create_backbone(
    name: str, in_channels: int, image_size: tuple[int, int] | int, width: int, **kwargs: Any
) -> nn.Module:
    """Build the registered backbone `name` (or `prefix:model` of a registered library, e.g. timm:resnet18) for
    inputs [in_channels, *image_size]; `kwargs` go to its factory (`model.backbone_kwargs` in a config) and
    override the variant's own architecture settings.

    Raises:
        UnknownNameError: unknown name (the message lists the registered ones).
        ConfigError: settings the factory rejects.
        TypeError: the factory returned something without the backbone interface (a bug in that factory).
    """
    factory = BACKBONES.get(name, where="model.backbone")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    if in_channels < 1 or min(image_size) < 1:
        raise ConfigError(f"model.backbone: {name} needs a positive input shape, got {in_channels}x{image_size}")
    backbone = factory(in_channels, image_size, width, **kwargs)
    _check_interface(name, backbone)
    return backbone


def _check_interface(name: str, backbone: Any) -> None:
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone factory {name!r} returned {type(backbone).__name__}, not an nn.Module")
    for attr in ("stem", "blocks", "head_input", "in_channels", "image_size"):
        if not hasattr(backbone, attr):
            raise TypeError(f"backbone {name!r} has no `{attr}` attribute (see eeopt.models.registry)")
    if not isinstance(backbone.blocks, nn.ModuleList) or len(backbone.blocks) == 0:
        raise TypeError(f"backbone {name!r}: `blocks` must be a non-empty nn.ModuleList")
    if hasattr(backbone, "block_channels") and len(backbone.block_channels) != len(backbone.blocks):
        raise TypeError(
            f"backbone {name!r}: {len(backbone.block_channels)} block_channels for {len(backbone.blocks)} blocks"
        )
