"""Weight initialisation shared by the convolutional families eeopt builds itself (ResNets, MSDNet)."""

from __future__ import annotations

from torch import nn

__all__ = ["he_init"]


def he_init(module: nn.Module) -> None:
    """He-normal convolutions (fan-out, ReLU gain) and BatchNorm at weight 1, bias 0, for every submodule: the
    initialisation of He et al. (2016) and of MSDNet's authors. Linear layers keep torch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
