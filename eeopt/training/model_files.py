"""Models from configs and from the model.pt files `train` writes: build, load, and copy a trained backbone."""

from __future__ import annotations

import os

import torch

from eeopt.config import ModelConfig, TrainConfig
from eeopt.data import load_dataset
from eeopt.errors import ConfigError
from eeopt.models import MultiExitModel, build_model
from eeopt.models.external import pretrained_data
from eeopt.training.checkpoint import read_model_file
from eeopt.training.stages import modules_within


def build_model_for(cfg: TrainConfig, dataset=None) -> MultiExitModel:
    """The untrained multi-exit model `cfg` describes, shaped for its dataset (loaded from `cfg.data` when not
    given), with per-exit costs counted. `eeopt.build_model(cfg)` is this function."""
    if dataset is None:
        data_cfg, stats = pretrained_data(cfg.model, cfg.data)  # as `train` loads it for a pretrained backbone
        dataset = load_dataset(data_cfg, cfg.seed, pretrained_stats=stats)
    return build_model(cfg.model, dataset.num_classes, dataset.in_channels, tuple(dataset.image_size))


def load_model(path: str | os.PathLike) -> MultiExitModel:
    """Rebuild a trained model from the model.pt a run wrote (on the CPU, in eval mode).

    Raises:
        ConfigError: the file is missing or not a model.pt written by `train`.
    """
    payload = read_model_file(path)
    model_cfg = ModelConfig.model_validate(payload["config"]["model"])
    model = build_model(model_cfg, payload["num_classes"], payload["in_channels"], tuple(payload["image_size"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


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
