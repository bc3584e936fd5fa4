"""Exit heads (a block's head input -> class logits) and failure heads (-> "this exit is right" logit).

A head reads what the backbone family gives it (`Backbone.head_input`): a feature map [B, C, H, W] or a vector
[B, D] (a ViT's class token or mean token). ``linear`` and failure heads take either; the others need a map.

Head types (`model.head`):

- ``linear``: global average pool (maps) + Linear;
- ``sdn``: Shallow-Deep Networks (Kaya et al., 2019): a learned mix alpha * max-pool + (1 - alpha) * avg-pool
  (alpha = sigmoid of a parameter, so in [0, 1]) down to at most 4x4, flatten, Linear;
- ``conv``: conv3x3-BN-ReLU, global average pool, Linear;
- ``msdnet``: MSDNet's classifier (Huang et al., 2018): two stride-2 conv3x3-BN-ReLU, average pooling, Linear. The
  convolutions have `hidden` channels: 128 by default (the authors' CIFAR classifier); MSDNet's ImageNet variant
  keeps the input's channels (`hidden=None`). A family sets its default in `Backbone.head_options`.

With ``cascade`` (Zero Time Waste, Wolczyk et al., 2021) an early head after the first also receives the previous
head's logits, concatenated to its pooled features before the Linear. The gradient flows through that connection, as
in ZTW. The final head never takes them: it stays the plain backbone classifier, so the backbone plus final head
trains and runs without any early head.

`FailureHead`: globally pooled features + the exit's softmax probabilities -> 32 hidden units -> 1 logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HEAD_TYPES", "ConvHead", "ExitHead", "FailureHead", "LinearHead", "MSDNetHead", "SDNHead", "make_exit_head",
    "pool_features",
]


def pool_features(features: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C] by global average pooling; a vector [B, D] passes as it is."""
    return features.mean(dim=(2, 3)) if features.ndim == 4 else features


class ExitHead(nn.Module):
    """Base: `forward(features [B, C, H, W], previous [B, num_classes] | None) -> logits [B, num_classes]`.

    `takes_previous` says whether the head expects the previous head's logits (cascade)."""

    def __init__(self, num_classes: int, takes_previous: bool):
        super().__init__()
        self.num_classes = num_classes
        self.takes_previous = takes_previous

    def pool(self, features: Tensor) -> Tensor:
        """[B, C, H, W] (or [B, D]) -> [B, D'] features for the classifier."""
        raise NotImplementedError

    def forward(self, features: Tensor, previous: Tensor | None = None) -> Tensor:
        z = self.pool(features)
        if self.takes_previous:
            assert previous is not None, "a cascade head needs the previous head's logits"
            z = torch.cat([z, previous], dim=1)
        return self.fc(z)


class LinearHead(ExitHead):
    def __init__(self, channels: int, num_classes: int, takes_previous: bool = False):
        super().__init__(num_classes, takes_previous)
        self.fc = nn.Linear(channels + (num_classes if takes_previous else 0), num_classes)

    def pool(self, features: Tensor) -> Tensor:
        return pool_features(features)


class SDNHead(ExitHead):
    """Mixed max/avg pooling to min(H, 4) x min(W, 4), flatten, Linear. `spatial` is the input's (H, W)."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        spatial: tuple[int, int],
        takes_previous: bool = False,
        pool_size: int = 4,
    ):
        super().__init__(num_classes, takes_previous)
        self.out_size = (min(spatial[0], pool_size), min(spatial[1], pool_size))
        self.alpha_logit = nn.Parameter(torch.zeros(()))  # alpha = 0.5 at the start
        features = channels * self.out_size[0] * self.out_size[1]
        self.fc = nn.Linear(features + (num_classes if takes_previous else 0), num_classes)

    @property
    def alpha(self) -> Tensor:
        return torch.sigmoid(self.alpha_logit)

    def pool(self, features: Tensor) -> Tensor:
        a = self.alpha
        mixed = a * F.adaptive_max_pool2d(features, self.out_size) + (1 - a) * F.adaptive_avg_pool2d(
            features, self.out_size
        )
        return mixed.flatten(1)


class ConvHead(ExitHead):
    def __init__(self, channels: int, num_classes: int, takes_previous: bool = False):
        super().__init__(num_classes, takes_previous)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels + (num_classes if takes_previous else 0), num_classes)

    def pool(self, features: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(features))).mean(dim=(2, 3))


class MSDNetHead(ExitHead):
    """MSDNet's classifier: conv3x3/2-BN-ReLU twice (`hidden` channels, or the input's with None), global average
    pooling (the authors' 2x2 pool on their 2x2 maps), Linear."""

    def __init__(self, channels: int, num_classes: int, takes_previous: bool = False, hidden: int | None = 128):
        super().__init__(num_classes, takes_previous)
        hidden = channels if hidden is None else int(hidden)
        self.convs = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(True),
        )
        self.fc = nn.Linear(hidden + (num_classes if takes_previous else 0), num_classes)

    def pool(self, features: Tensor) -> Tensor:
        return self.convs(features).mean(dim=(2, 3))


HEAD_TYPES = ("linear", "sdn", "conv", "msdnet")
#: Head types that read a feature map [B, C, H, W] (the others also read vectors [B, D]).
MAP_HEADS = ("sdn", "conv", "msdnet")


def make_exit_head(
    kind: str, channels: int, num_classes: int, spatial: tuple[int, ...], takes_previous: bool = False,
    **options: object,
) -> ExitHead:
    """An exit head of type `kind` for head inputs [B, channels, *spatial] (`spatial` empty for vectors [B, D]);
    `options` are the head type's own settings (`hidden` for msdnet).

    Raises:
        ValueError: unknown `kind`, or a head that needs a feature map given vectors.
    """
    if kind in MAP_HEADS and len(spatial) != 2:
        raise ValueError(f"head {kind!r} reads a feature map [B, C, H, W]; this backbone's heads read vectors "
                         "[B, D] (use model.head: linear)")
    if kind == "linear":
        return LinearHead(channels, num_classes, takes_previous)
    if kind == "sdn":
        return SDNHead(channels, num_classes, spatial, takes_previous)
    if kind == "conv":
        return ConvHead(channels, num_classes, takes_previous)
    if kind == "msdnet":
        return MSDNetHead(channels, num_classes, takes_previous, **options)
    raise ValueError(f"unknown head type {kind!r} (choose from {', '.join(HEAD_TYPES)})")


class FailureHead(nn.Module):
    """Predicts whether its exit's prediction is correct: [B, C, H, W] (or [B, D]) features + [B, K] logits -> [B]
    raw logits.

    The exit's probabilities enter detached (`detach_probs`): the failure loss then trains the failure head and the
    backbone features, but cannot bend the classifier's outputs to make its own job easier. They enter sorted
    (largest first), so confidence-like signals (top-1, margin, spread) are the same input whatever the class, and
    the pooled features are layer-normalised: both make the head learn in a few epochs even at weak early exits.
    """

    def __init__(self, channels: int, num_classes: int, hidden: int = 32, detach_probs: bool = True):
        super().__init__()
        self.detach_probs = detach_probs
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels + num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        probs = logits.softmax(dim=1)
        if self.detach_probs:
            probs = probs.detach()
        ranked = probs.sort(dim=1, descending=True).values
        z = torch.cat([self.norm(pool_features(features)), ranked], dim=1)
        return self.mlp(z).squeeze(1)
