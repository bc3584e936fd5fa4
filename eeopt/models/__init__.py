"""Backbones, exit heads, failure heads, `MultiExitModel` and FLOP counting.

Importing this package registers the built-in backbones (`eeopt.models.resnet`).
"""

from __future__ import annotations

from eeopt.models import resnet as _resnet  # noqa: F401  (registers the ResNet variants)
from eeopt.models import msdnet as _msdnet  # noqa: F401  (registers MSDNet)
from eeopt.models.external import load_pretrained  # registers timm:<name>, torchvision:<name> (imports neither)
from eeopt.models.costs import count_backbone_flops, count_block_flops, count_exit_costs, count_flops
from eeopt.models.heads import HEAD_TYPES, MAP_HEADS, FailureHead, make_exit_head
from eeopt.models.multi_exit import ExitForward, MultiExitModel, build_model, head_input_shapes, resolve_exit_blocks
from eeopt.models.state import index_state
from eeopt.models.registry import Backbone, create_backbone, list_backbones, register_backbone

__all__ = [
    "HEAD_TYPES",
    "MAP_HEADS",
    "Backbone",
    "ExitForward",
    "FailureHead",
    "MultiExitModel",
    "build_model",
    "count_backbone_flops",
    "count_block_flops",
    "count_exit_costs",
    "count_flops",
    "create_backbone",
    "head_input_shapes",
    "index_state",
    "list_backbones",
    "make_exit_head",
    "register_backbone",
    "resolve_exit_blocks",
]
