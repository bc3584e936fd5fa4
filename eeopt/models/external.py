"""timm and torchvision networks as early-exit backbones: ``model.backbone: timm:<name>`` / ``torchvision:<name>``.

The library builds its own network (`timm.create_model(name, **backbone_kwargs)` or
`torchvision.models.get_model(name, **backbone_kwargs)`); eeopt then splits it into a stem and a flat chain of blocks
at the places timm's `forward_intermediates` reads features, and drops its classifier (exit heads replace it):

- ViT, DeiT (timm) and ViT (torchvision): the stem is the patch embedding, the class (and distillation / register)
  tokens, the position embedding, pos drop and (timm) patch drop + norm_pre; blocks are the transformer blocks; the
  state is tokens [B, N, D]; heads read [B, D]: the final norm, then the class token (the mean patch token where
  the model pools by mean), then timm's fc_norm.
- ResNet (both): the stem is conv1, bn1, act, max-pool; blocks are the residual blocks.
- ConvNeXt (both): the patchify stem; ConvNeXt blocks, a stage's downsampling at the start of its first block;
  timm's `norm_pre` ends the last block.
- EfficientNet (both): conv stem + BN; MBConv blocks; the 1x1 conv head + BN end the last block.

Convolutional states are maps [B, C, H, W], which heads read (and pool) as they are.

So the last exit reads exactly the network's `forward_features` (torchvision: its `features`), and the backbone's
parameters are the library model's without its classifier (`reset_classifier(0)`); the norm ConvNeXt applies
after pooling belongs to the classifier in both libraries and is dropped with it.

`model.width` is ignored (the library model fixes its widths); `model.backbone_kwargs` go to the library's
constructor and win over eeopt's defaults: the input channels (timm's `in_chans`) and, for ViTs, the image size
(timm's `img_size`, torchvision's `image_size`) follow the data. Nothing here imports timm or torchvision until such
a backbone is built, so the rest of eeopt works without them.

Pretrained weights (`model.pretrained`) are loaded by `load_pretrained` after the model is built (so that rebuilding
a trained model.pt never needs them): ``true`` reads the library's own cache, never the network (timm: the Hugging
Face hub cache, then torch hub's; torchvision: ``<torch hub dir>/checkpoints/<file>``), a path reads a state dict
of the original library model. Either goes into a fresh library model (through timm's checkpoint filter, which e.g.
resamples a ViT's position embedding to another image size) and from there into the backbone by the same split.
Backbones carry `pretrained_mean` / `pretrained_std` (the weights' input normalisation, 3 floats each);
`pretrained_data` gives the data settings the weights expect (their input size when data.image_size is unset, their
mean/std) before any model exists, which is when the training loop loads the data.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eeopt.config import DataConfig, ModelConfig
from eeopt.errors import ConfigError
from eeopt.models.registry import Backbone, register_backbone_library

__all__ = ["LIBRARIES", "MapBackbone", "TokenBackbone", "check_library", "create_external", "library_available",
           "load_pretrained", "pretrained_data", "pretrained_input_size", "pretrained_statistics", "weights_file"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The optional libraries, by `model.backbone` prefix: the module to import and the pip extra that installs it.
LIBRARIES = {"timm": "timm", "torchvision": "torchvision"}


def library_available(prefix: str) -> bool:
    """Whether the library behind `prefix` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(LIBRARIES[prefix]) is not None
    except (ImportError, ValueError):
        return False


def check_library(prefix: str, name: str) -> None:
    """Raise the one-line ConfigError of `_import` when the library is missing, without importing it."""
    if not library_available(prefix):
        _import(prefix, name)


def _import(prefix: str, name: str) -> Any:
    """The library module; a missing one is a ConfigError naming model.backbone and the pip command."""
    try:
        return importlib.import_module(LIBRARIES[prefix])
    except ImportError:
        raise ConfigError(
            f"model.backbone: {prefix}:{name} needs {LIBRARIES[prefix]}, which is not installed: "
            f'pip install "eeopt[{prefix}]"'
        ) from None


# --------------------------------------------------------------------------------------------------- backbones
class TokenBackbone(Backbone):
    """A vision transformer: the state is tokens [B, N, D]; heads read a vector [B, D].

    Args:
        stem: image [B, C, H, W] -> tokens [B, N, D] (prefix tokens first).
        blocks: transformer blocks, tokens -> tokens.
        norm: the model's final norm (applied to the tokens before pooling).
        pool: 'token' (the first, class token) or 'avg' (mean of the tokens after the `num_prefix_tokens` prefix).
        fc_norm: timm's norm after pooling (an identity where the model has none).
    """

    def __init__(
        self, stem: nn.Module, blocks: list[nn.Module], norm: nn.Module, pool: str, num_prefix_tokens: int,
        fc_norm: nn.Module, dim: int, in_channels: int, image_size: tuple[int, int],
    ):
        super().__init__()
        assert pool in ("token", "avg"), f"pool must be token or avg, got {pool!r}"
        self.stem, self.blocks = stem, nn.ModuleList(blocks)
        self.norm, self.fc_norm = norm, fc_norm
        self.pool, self.num_prefix_tokens = pool, int(num_prefix_tokens)
        self.block_channels = [int(dim)] * len(self.blocks)
        self.in_channels, self.image_size = int(in_channels), tuple(image_size)

    def head_input(self, state: Tensor) -> Tensor:
        """Tokens [B, N, D] -> [B, D]: final norm, class token or mean patch token, fc_norm."""
        x = self.norm(state)
        x = x[:, 0] if self.pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)
        return self.fc_norm(x)


class MapBackbone(Backbone):
    """A convolutional network: the state is a map [B, C, H, W], which heads read (and pool) as it is. It sets no
    `block_channels` (the library's blocks do not all say theirs): `MultiExitModel` probes the shapes."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        self.stem, self.blocks = stem, nn.ModuleList(blocks)
        self.in_channels, self.image_size = int(in_channels), tuple(image_size)


class _ViTStem(nn.Module):
    """timm's VisionTransformer up to its first block: patch embed, prefix tokens, position embedding, drops and
    norm_pre.

    Mirrors `VisionTransformer._pos_embed` (and DeiT's with a distillation token) for a fixed image size."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.patch_embed = net.patch_embed
        self.cls_token = net.cls_token  # a Parameter, or None
        self.dist_token = getattr(net, "dist_token", None)  # distilled DeiT
        self.reg_token = getattr(net, "reg_token", None)
        self.pos_embed = net.pos_embed
        self.no_embed_class = bool(getattr(net, "no_embed_class", False))
        self.pos_drop, self.patch_drop, self.norm_pre = net.pos_drop, net.patch_drop, net.norm_pre

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)  # [B, N, D]
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token)
                  if t is not None]
        if self.pos_embed is not None and self.no_embed_class:
            x = x + self.pos_embed
        x = torch.cat([*prefix, x], dim=1) if prefix else x
        if self.pos_embed is not None and not self.no_embed_class:
            x = x + self.pos_embed
        return self.norm_pre(self.patch_drop(self.pos_drop(x)))


class _TorchvisionViTStem(nn.Module):
    """torchvision's VisionTransformer up to its first encoder layer: conv patchify, class token, position
    embedding, dropout."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.conv_proj, self.class_token = net.conv_proj, net.class_token
        self.pos_embedding, self.dropout = net.encoder.pos_embedding, net.encoder.dropout

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # [B, N, D]
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


def _flat_stages(stages: list[tuple[nn.Module, list[nn.Module]]], tail: list[nn.Module]) -> list[nn.Module]:
    """One block per residual block: a stage's leading module (downsampling; None or identity for none) runs
    at the start of its first block, and `tail` (the layers after the last stage) at the end of the last block."""
    blocks: list[nn.Module] = []
    for lead, stage_blocks in stages:
        for i, block in enumerate(stage_blocks):
            parts = [lead, block] if i == 0 and lead is not None and not isinstance(lead, nn.Identity) else [block]
            blocks.append(parts[0] if len(parts) == 1 else nn.Sequential(*parts))
    tail = [m for m in tail if not isinstance(m, nn.Identity)]
    if tail:
        blocks[-1] = nn.Sequential(blocks[-1], *tail)
    return blocks


def _split_timm(net: nn.Module, name: str, in_channels: int, image_size: tuple[int, int]) -> Backbone:
    """Stem and blocks of a timm network (see the module docstring's table)."""
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(net, VisionTransformer):
        if getattr(net, "dynamic_img_size", False) or getattr(net, "attn_pool", None) is not None:
            raise ConfigError(f"model.backbone: timm:{name}: dynamic image sizes and attention pooling are not "
                              "supported (fixed-size ViTs pooling by class token or mean are)")
        pool = net.global_pool if net.global_pool in ("token", "avg") else None
        if pool is None or getattr(net, "pool_include_prefix", False):
            raise ConfigError(f"model.backbone: timm:{name} pools by {net.global_pool!r}; eeopt reads the class "
                              "token or the mean token (backbone_kwargs global_pool: token or avg)")
        return TokenBackbone(_ViTStem(net), list(net.blocks), net.norm, pool, net.num_prefix_tokens, net.fc_norm,
                             net.embed_dim, in_channels, image_size)
    if isinstance(net, ResNet):
        return _resnet_backbone(net, net.act1, in_channels, image_size)
    if isinstance(net, ConvNeXt):
        stages = [(stage.downsample, list(stage.blocks)) for stage in net.stages]
        return MapBackbone(net.stem, _flat_stages(stages, [net.norm_pre]), in_channels, image_size)
    if isinstance(net, EfficientNet):
        stages = [(None, list(stage)) for stage in net.blocks]
        return MapBackbone(nn.Sequential(net.conv_stem, net.bn1), _flat_stages(stages, [net.conv_head, net.bn2]),
                           in_channels, image_size)
    raise ConfigError(f"model.backbone: timm:{name} is a {type(net).__name__}; eeopt splits timm's "
                      "VisionTransformer (ViT, DeiT), ResNet, ConvNeXt and EfficientNet")


def _resnet_backbone(net: nn.Module, act: nn.Module, in_channels: int, image_size: tuple[int, int]) -> Backbone:
    """timm's and torchvision's ResNets have one layout (conv1, bn1, an activation, maxpool, layer1..layer4); only
    the activation's attribute name differs."""
    stem = nn.Sequential(net.conv1, net.bn1, act, net.maxpool)
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    return MapBackbone(stem, _flat_stages([(None, list(layer)) for layer in layers], []), in_channels, image_size)


def _split_torchvision(net: nn.Module, name: str, in_channels: int, image_size: tuple[int, int]) -> Backbone:
    """Stem and blocks of a torchvision network (see the module docstring's table)."""
    from torchvision.models import ConvNeXt, EfficientNet, ResNet, VisionTransformer

    if isinstance(net, VisionTransformer):
        return TokenBackbone(_TorchvisionViTStem(net), list(net.encoder.layers), net.encoder.ln, "token", 1,
                             nn.Identity(), net.hidden_dim, in_channels, image_size)
    if isinstance(net, ResNet):
        return _resnet_backbone(net, net.relu, in_channels, image_size)
    if isinstance(net, ConvNeXt):
        # features: stem, stage, downsample, stage, ...: each downsample leads the stage after it
        features = list(net.features)
        stages, lead = [], None
        for i, module in enumerate(features[1:], start=1):
            if i % 2 == 1:
                stages.append((lead, list(module)))
            else:
                lead = module
        return MapBackbone(features[0], _flat_stages(stages, []), in_channels, image_size)
    if isinstance(net, EfficientNet):
        features = list(net.features)  # stem, stages of MBConv blocks, 1x1 conv head
        stages = [(None, list(stage)) for stage in features[1:-1]]
        return MapBackbone(features[0], _flat_stages(stages, [features[-1]]), in_channels, image_size)
    raise ConfigError(f"model.backbone: torchvision:{name} is a {type(net).__name__}; eeopt splits torchvision's "
                      "ResNet, ConvNeXt, EfficientNet and VisionTransformer")


# --------------------------------------------------------------------------------------------------- factories
def _create_timm(name: str, in_channels: int, image_size: tuple[int, int], kwargs: dict[str, Any]) -> nn.Module:
    """`timm.create_model` without weights; ViTs (and DeiTs) are built for the data's image size."""
    timm = _import("timm", name)
    if not timm.is_model(name):
        raise ConfigError(f"model.backbone: timm has no model {name!r} (timm.list_models('*{name[:8]}*') lists "
                          "names)")
    args = {"in_chans": in_channels, **kwargs}
    entry = timm.models.model_entrypoint(name)
    if entry.__module__.rsplit(".", 1)[-1] in ("vision_transformer", "deit"):
        args.setdefault("img_size", image_size)
        if tuple(_pair(args["img_size"])) != tuple(image_size):
            raise ConfigError(f"model.backbone_kwargs.img_size: {args['img_size']} but the images are "
                              f"{image_size[0]}x{image_size[1]} (set data.image_size instead)")
    try:
        return timm.create_model(name, pretrained=False, **args)
    except TypeError as exc:
        raise ConfigError(f"model.backbone_kwargs: timm:{name} rejects them: {exc}") from None


def _create_torchvision(
    name: str, in_channels: int, image_size: tuple[int, int], kwargs: dict[str, Any]
) -> nn.Module:
    tv = _import("torchvision", name)
    if name not in tv.models.list_models(module=tv.models):
        raise ConfigError(f"model.backbone: torchvision has no classification model {name!r} "
                          "(torchvision.models.list_models() lists them)")
    if in_channels != 3:
        raise ConfigError(f"model.backbone: torchvision:{name} takes 3-channel images, the data has {in_channels} "
                          "(use a timm model, which takes in_chans)")
    args = dict(kwargs)
    if name.startswith("vit_"):
        if image_size[0] != image_size[1]:
            raise ConfigError(f"model.backbone: torchvision:{name} needs square images, got {image_size}")
        args.setdefault("image_size", image_size[0])
    try:
        return tv.models.get_model(name, weights=None, **args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.backbone_kwargs: torchvision:{name} rejects them: {exc}") from None


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _statistics_timm(net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return tuple(map(float, cfg.get("mean", IMAGENET_MEAN))), tuple(map(float, cfg.get("std", IMAGENET_STD)))


def pretrained_statistics(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std), 3 floats each, of the inputs the pretrained weights of `backbone` ("timm:<name>" /
    "torchvision:<name>") expect, read from the library's metadata without building the model: what the data's
    `normalization: pretrained` needs before the model exists. None for other backbones.

    Raises:
        ConfigError: the library is missing.
    """
    prefix, sep, name = backbone.partition(":")
    if not sep or prefix not in LIBRARIES:
        return None
    library = _import(prefix, name)
    if prefix == "timm":
        cfg = library.models.get_pretrained_cfg(name)
        mean, std = (cfg.mean, cfg.std) if cfg is not None else (IMAGENET_MEAN, IMAGENET_STD)
        return tuple(map(float, mean)), tuple(map(float, std))
    return _statistics_torchvision(name)


def pretrained_input_size(backbone: str, backbone_kwargs: dict[str, Any] | None = None) -> int | None:
    """The (square) image side the pretrained weights of `backbone` were trained at: timm's `img_size` kwarg or
    pretrained_cfg input size, torchvision's weights' crop size; None for other backbones."""
    prefix, sep, name = backbone.partition(":")
    if not sep or prefix not in LIBRARIES:
        return None
    kwargs = backbone_kwargs or {}
    for key in ("img_size", "image_size"):
        if key in kwargs:
            return _pair(kwargs[key])[0]
    library = _import(prefix, name)
    if prefix == "timm":
        cfg = library.models.get_pretrained_cfg(name)
        return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    weights = _torchvision_weights(name)
    crop = getattr(weights.transforms(), "crop_size", [224]) if weights is not None else [224]
    return int(crop[0])


def pretrained_data(model: ModelConfig, data: DataConfig, *, check_weights: bool = True
                    ) -> tuple[DataConfig, tuple[tuple[float, ...], tuple[float, ...]] | None]:
    """(data settings, normalisation statistics) for the data a timm/torchvision backbone's weights expect:
    with `model.pretrained` and no `data.image_size`, images are resized to the weights' input size (224 for
    ImageNet models); the weights' mean/std go to `load_dataset(pretrained_stats=)` when the model is pretrained
    or `data.normalization` is pretrained. Other backbones: (data, None). `check_weights=False` skips the check
    that the weights file is there (a trained model.pt holds them; only its data's shape and statistics matter).

    Raises:
        ConfigError: `model.pretrained` names no weights (see `weights_file`).
    """
    if model.pretrained and check_weights:
        weights_file(model.backbone, model.pretrained)  # fail now, not after loading the data
    if model.pretrained and data.image_size is None:
        size = pretrained_input_size(model.backbone, model.backbone_kwargs)
        if size is not None:
            data = data.model_copy(update={"image_size": size})
    wants_stats = bool(model.pretrained) or data.normalization == "pretrained"
    return data, (pretrained_statistics(model.backbone) if wants_stats else None)


def _torchvision_weights(name: str) -> Any:
    """The default weights enum entry of a torchvision model, or None where it has none."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def _statistics_torchvision(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    weights = _torchvision_weights(name)
    transform = weights.transforms() if weights is not None else None
    mean = getattr(transform, "mean", IMAGENET_MEAN)
    std = getattr(transform, "std", IMAGENET_STD)
    return tuple(map(float, mean)), tuple(map(float, std))


def _build(prefix: str, name: str, in_channels: int, image_size: tuple[int, int], kwargs: dict[str, Any]
           ) -> tuple[nn.Module, Backbone]:
    """(the library network, the backbone split from it; they share parameters)."""
    if prefix == "timm":
        net = _create_timm(name, in_channels, image_size, kwargs)
        backbone = _split_timm(net, name, in_channels, image_size)
        backbone.pretrained_mean, backbone.pretrained_std = _statistics_timm(net)
    else:
        net = _create_torchvision(name, in_channels, image_size, kwargs)
        backbone = _split_torchvision(net, name, in_channels, image_size)
        backbone.pretrained_mean, backbone.pretrained_std = _statistics_torchvision(name)
    return net, backbone


def create_external(
    prefix: str, name: str, in_channels: int, image_size: tuple[int, int], width: int, **kwargs: Any
) -> Backbone:
    """The backbone of library `prefix` ('timm' or 'torchvision') model `name`, randomly initialised; `width` is
    ignored. The backbone remembers how it was built (`library_source`) so that `load_pretrained` can rebuild it.

    Raises:
        ConfigError: the library is missing, no such model, kwargs it rejects, or a family eeopt cannot split.
    """
    del width  # the library model fixes its widths
    _, backbone = _build(prefix, name, in_channels, image_size, dict(kwargs))
    backbone.library_source = (prefix, name, int(in_channels), tuple(image_size), dict(kwargs))
    return backbone


register_backbone_library("timm", create_external, check=check_library)
register_backbone_library("torchvision", create_external, check=check_library)


# --------------------------------------------------------------------------------------------------- weights
def load_pretrained(backbone: nn.Module, pretrained: bool | str | os.PathLike, where: str = "model.pretrained"
                    ) -> Path:
    """Load pretrained weights into a timm/torchvision `backbone` in place; returns the file read.

    `pretrained`: True reads the library's cached weights (no network), a path a state dict of the original
    library model (its classifier, if any, is ignored, so a model fine-tuned on other classes fits).

    Raises:
        ConfigError: (one line, starting with `where`) the backbone is not a timm/torchvision one, the cached
            weights or the file are missing, or the file does not fit the model.
    """
    source = getattr(backbone, "library_source", None)
    if source is None:
        raise ConfigError(f"{where}: only timm:<name> and torchvision:<name> backbones have pretrained weights")
    prefix, name, in_channels, image_size, kwargs = source
    path = weights_file(f"{prefix}:{name}", pretrained, where)
    net, fresh = _build(prefix, name, in_channels, image_size, kwargs)  # `fresh` shares `net`'s parameters
    state = _read_state_dict(path, where)
    if prefix == "timm":
        filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:  # e.g. resamples a ViT's position embedding to this image size
            state = filter_fn(state, net)
    classifier = _classifier_names(prefix, net)  # dropped from the file and allowed to stay missing
    state = {k: v for k, v in state.items() if not k.startswith(classifier)}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise ConfigError(f"{where}: {path} does not fit {prefix}:{name}: {detail}") from None
    missing = [k for k in result.missing_keys if not k.startswith(classifier)]
    if missing or result.unexpected_keys:
        what = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
        count = len(missing) + len(result.unexpected_keys)
        raise ConfigError(f"{where}: {path} does not fit {prefix}:{name}: {what} ({count} keys differ)")
    backbone.load_state_dict(fresh.state_dict())
    return path


def _classifier_names(prefix: str, net: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes ("head.") of the library model's classifier, which eeopt's heads replace: timm's
    pretrained_cfg names it, torchvision's is the last Linear layer."""
    if prefix == "timm":
        names = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
        names = (names,) if isinstance(names, str) else tuple(names)
    else:
        names = (next(n for n, m in reversed(list(net.named_modules())) if isinstance(m, nn.Linear)),)
    return tuple(f"{n}." for n in names)


def _read_state_dict(path: Path, where: str) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is the same one-line error)
        raise ConfigError(f"{where}: cannot read {path} as a state dict: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{where}: {path} is not a state dict (a mapping of names to tensors)")
    return state


def weights_file(backbone: str, pretrained: bool | str | os.PathLike, where: str = "model.pretrained") -> Path:
    """The file `model.pretrained` names for `backbone` ("timm:<name>" / "torchvision:<name>"): the library's
    cached weights for True (never downloaded), else the path. Cheap (nothing is built or read), so a config can
    be checked before any data is loaded.

    Raises:
        ConfigError: (one line, starting with `where`) not a timm/torchvision backbone, no cached weights (naming
            where the file should be and how to get it there), or no such file.
    """
    prefix, sep, name = backbone.partition(":")
    if not sep or prefix not in LIBRARIES:
        raise ConfigError(f"{where}: only timm:<name> and torchvision:<name> backbones have pretrained weights")
    if pretrained is True:
        return _cached_file(prefix, name, where)
    path = Path(os.fspath(pretrained)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}: {path} is not a file (a state dict of {prefix}:{name})")
    return path


def _cached_file(prefix: str, name: str, where: str) -> Path:
    """The library's cached weight file for model `name`; never downloads (see `weights_file`)."""
    if prefix == "timm":
        timm = _import(prefix, name)
        found_cfg = timm.models.get_pretrained_cfg(name)
        cfg = found_cfg.to_dict() if found_cfg is not None else {}
        hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
        looked: list[str] = []
        if hub_id:
            from huggingface_hub import constants, try_to_load_from_cache

            repo, _, revision = hub_id.partition("@")
            names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors",
                                                                                 "pytorch_model.bin"]
            for filename in names:
                found = try_to_load_from_cache(repo, filename, revision=revision or None)
                if isinstance(found, str):
                    return Path(found)
            folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
            looked.append(f"{folder}/snapshots/<revision>/{names[0]}")
        if url and url.endswith((".pth", ".pt", ".bin", ".safetensors")) and not cfg.get("custom_load"):
            candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
            if candidate.is_file():
                return candidate
            looked.append(str(candidate))
        if not looked:
            raise ConfigError(f"{where}: timm has no pretrained weights for {name}")
        fetch = f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
    else:
        weights = _torchvision_weights(name)
        if weights is None:
            raise ConfigError(f"{where}: torchvision has no pretrained weights for {name}")
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        if candidate.is_file():
            return candidate
        looked = [str(candidate)]
        fetch = f"python -c \"import torchvision; torchvision.models.get_model('{name}', weights='DEFAULT')\""
    raise ConfigError(f"{where}: no cached weights for {prefix}:{name}: put the file at {looked[0]} (where there "
                      f"is network: {fetch}) or set {where} to a state-dict file")
