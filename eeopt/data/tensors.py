"""From stored images to float tensors: decoding at a `Geometry`, per-channel statistics, normalisation.

The in-memory and the streamed paths both call `decode_images` and `normalize`, image by image the same
operations, so for the same indices they give the same tensors bit for bit; `ChannelStats` sums in fixed chunks of
`STATS_CHUNK` images, so the statistics of the same images agree bit for bit too, whichever path read them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eeopt.data.augment import Geometry, center_crop

STATS_CHUNK = 256  # images per chunk when summing channel statistics (both paths use the same chunks)


@runtime_checkable
class LazyImages(Protocol):
    """Images read on demand (files), in place of an array in `RawData`.

    `shape` is (N, H, W) or (N, H, W, C) of the images once read at the loader's geometry; `read` and
    `read_resized_crops` return uint8 arrays of that layout and raise DataError naming an unreadable file.
    """

    shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The images at `indices`, at the geometry, uint8 [B, H, W] or [B, H, W, C]."""
        ...

    def read_resized_crops(
        self, indices: np.ndarray, generator: torch.Generator, size: tuple[int, int], flip: bool
    ) -> np.ndarray:
        """Random-resized crops of the native images (per image a box, then a flip draw), uint8 [B, h, w(, C)]."""
        ...


def image_shape(images: np.ndarray | LazyImages) -> tuple[int, ...]:
    """(N, H, W) or (N, H, W, C) of an array or of lazily read images."""
    return tuple(images.shape)


def to_tensor(images: np.ndarray, size: tuple[int, int] | None = None) -> Tensor:
    """[N, H, W] or [N, H, W, C] NumPy images -> float32 [N, C, H, W]; uint8 scaled to [0, 1]; optional resize."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = x.float().div_(255.0) if images.dtype == np.uint8 else x.float()
    x = x.contiguous()
    if size is not None and tuple(x.shape[2:]) != tuple(size) and len(x):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def decode_images(images: np.ndarray | LazyImages, indices: np.ndarray, geometry: Geometry) -> Tensor:
    """The images at `indices` as float32 [B, C, H, W] at `geometry` (not normalised).

    Arrays are resized with `F.interpolate` (bilinear, antialiased) and center-cropped as tensors; lazy images
    are read at their loader's geometry (Pillow) already.
    """
    if not isinstance(images, np.ndarray):
        return to_tensor(images.read(indices))
    h, w = images.shape[1:3]
    resize = geometry.resized_shape(h, w) if geometry.resize is not None else None
    return center_crop(to_tensor(images[indices], resize), geometry.crop).contiguous()


class ChannelStats:
    """Per-channel mean and (population) std, merged chunk by chunk in float64 (Chan et al.'s pairwise update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        """Fold in [B, C, H, W] (split into chunks of STATS_CHUNK images, the same chunks whoever calls)."""
        for start in range(0, len(x), STATS_CHUNK):
            flat = x[start : start + STATS_CHUNK].transpose(0, 1).reshape(x.shape[1], -1).double()
            n = flat.shape[1]
            if n == 0:
                continue
            mean = flat.mean(dim=1)
            m2 = ((flat - mean[:, None]) ** 2).sum(dim=1)
            if self.mean is None:
                self.count, self.mean, self.m2 = n, mean, m2
                continue
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
            self.count = total

    def result(self) -> tuple[list[float], list[float]]:
        """(mean [C], std [C]); a constant channel gets std 1."""
        assert self.mean is not None and self.m2 is not None, "no images were added"
        std = (self.m2 / self.count).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        return self.mean.tolist(), std.tolist()


def channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of [N, C, H, W], in float64; a constant channel gets std 1."""
    stats = ChannelStats()
    stats.add(x)
    return stats.result()


def normalize(x: Tensor, mean: list[float] | tuple[float, ...], std: list[float] | tuple[float, ...]) -> Tensor:
    """(x - mean) / std per channel of [N, C, H, W], in place when possible; returns the tensor."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
