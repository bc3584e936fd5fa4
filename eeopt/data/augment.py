"""Training augmentations by name, and the image geometry (resize, center crop) every split is read at.

`data.augment` names one:

- ``none`` (or false): no augmentation;
- ``cifar`` (or true): pad by image_size/8 pixels (4 at 32x32) with black, crop back at a random offset, flip
  horizontally with probability 1/2 (`RandomCropFlip`);
- ``imagenet``: a random-resized crop (area 8-100 % of the image, aspect ratio 3/4-4/3, resized to the output
  size) and a flip for training (`RandomResizedCropFlip`); evaluation images are resized so their shorter side is
  image_size / 0.875 (256 for 224) and center-cropped to image_size (`Geometry`).

Flips only where the dataset allows (`RawData.hflip`). Every random draw comes from a `torch.Generator`, so a
seeded generator gives the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("none", "cifar", "imagenet")
IMAGENET_CROP_RATIO = 0.875  # evaluation: resize to size / 0.875, center crop size (256 -> 224)
RESIZED_CROP_SCALE = (0.08, 1.0)  # share of the image's area a random-resized crop covers
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio (width / height), drawn log-uniformly


def augment_name(value: str | bool) -> str:
    """`data.augment` -> one of AUGMENTATIONS (true is cifar, false is none)."""
    if isinstance(value, bool):
        return "cifar" if value else "none"
    return value


# --------------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """How an image is brought to its stored / evaluated size.

    `resize`: None (native size), (h, w) exactly, or an int: the shorter side's length (aspect kept; rounded like
    torchvision, int(long * side / short)). `crop`: None or a center crop (h, w) taken after the resize.
    """

    resize: tuple[int, int] | int | None = None
    crop: tuple[int, int] | None = None

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) after the resize (before the crop)."""
        if self.resize is None:
            return h, w
        if isinstance(self.resize, int):
            s = self.resize
            return (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        return self.resize

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) of an image of native size (h, w) once resized and cropped."""
        return self.crop if self.crop is not None else self.resized_shape(h, w)


def geometry_for(augment: str | bool, image_size: int | None) -> Geometry:
    """The evaluation geometry of `data.augment` at `data.image_size`: imagenet resizes the shorter side to
    round(image_size / 0.875) and center-crops image_size; the others resize to image_size x image_size."""
    if image_size is None:
        return Geometry()
    if augment_name(augment) == "imagenet":
        return Geometry(resize=round(image_size / IMAGENET_CROP_RATIO), crop=(image_size, image_size))
    return Geometry(resize=(image_size, image_size))


def center_crop_box(h: int, w: int, crop: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of a (ch, cw) center crop of an (h, w) image, rounded like torchvision."""
    ch, cw = crop
    if ch > h or cw > w:
        raise ValueError(f"cannot center-crop {ch}x{cw} from a {h}x{w} image")
    return int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))


def center_crop(x: Tensor, crop: tuple[int, int] | None) -> Tensor:
    """Center crop of [..., H, W] (a view; unchanged when `crop` is None)."""
    if crop is None:
        return x
    top, left = center_crop_box(x.shape[-2], x.shape[-1], crop)
    return x[..., top : top + crop[0], left : left + crop[1]]


# --------------------------------------------------------------------------------------------------- cifar
@dataclass(frozen=True)
class RandomCropFlip:
    """Batch augmentation: pad by `pad` pixels with `fill` (per channel), crop back at a random offset per image,
    and flip each image horizontally with probability 1/2 when `flip` is true.

    `fill` is raw black in normalised units, so the padding equals torchvision's zero padding before normalising.
    All randomness comes from `generator` (on its own device), so a seeded generator gives the same batch.
    """

    pad: int
    flip: bool = True
    fill: tuple[float, ...] = field(default=())

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W] (a new tensor)."""
        b, c, h, w = x.shape
        p = self.pad
        dev = generator.device
        oy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev).to(x.device)
        flips = (torch.rand(b, generator=generator, device=dev) < 0.5).to(x.device)
        fill = torch.tensor(self.fill or (0.0,) * c, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = ox[:, None] + torch.arange(w, device=x.device)
        if self.flip:
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        cols = cols[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, chan, rows, cols]


# --------------------------------------------------------------------------------------------------- imagenet
def resized_crop_box(
    h: int, w: int, generator: torch.Generator, scale: tuple[float, float] = RESIZED_CROP_SCALE,
    ratio: tuple[float, float] = RESIZED_CROP_RATIO,
) -> tuple[int, int, int, int]:
    """A random-resized crop's box (top, left, height, width) inside an (h, w) image.

    Up to 10 draws of an area share in `scale` and a log-uniform aspect ratio in `ratio`; the first box that
    fits wins, else the largest center box within `ratio` (the usual Inception-style sampling).
    """
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=generator, device=generator.device).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = min(int(u[2] * (h - ch + 1)), h - ch)
            left = min(int(u[3] * (w - cw + 1)), w - cw)
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclass(frozen=True)
class RandomResizedCropFlip:
    """Batch augmentation: a random-resized crop of each image (`resized_crop_box`), resized back to the image's
    size (bilinear, antialiased), then a horizontal flip with probability 1/2 when `flip` is true."""

    flip: bool = True
    scale: tuple[float, float] = RESIZED_CROP_SCALE
    ratio: tuple[float, float] = RESIZED_CROP_RATIO

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W] (a new tensor); the draws per image: a box, then a flip."""
        b, _, h, w = x.shape
        out = torch.empty_like(x)
        for i in range(b):
            top, left, ch, cw = resized_crop_box(h, w, generator, self.scale, self.ratio)
            crop = x[i : i + 1, :, top : top + ch, left : left + cw]
            if (ch, cw) != (h, w):
                crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            flip = bool(torch.rand(1, generator=generator, device=generator.device) < 0.5)
            out[i] = crop[0].flip(-1) if self.flip and flip else crop[0]
        return out


BatchAugment = RandomCropFlip | RandomResizedCropFlip


def make_augment(
    name: str | bool, image_shape: tuple[int, int], flip: bool, fill: tuple[float, ...]
) -> BatchAugment | None:
    """The batch augmentation `data.augment` names for images of `image_shape` (None for none).

    `fill`: raw black in normalised units (the cifar padding).
    """
    name = augment_name(name)
    if name == "none":
        return None
    if name == "cifar":
        return RandomCropFlip(pad=max(1, min(image_shape) // 8), flip=flip, fill=fill)
    if name == "imagenet":
        return RandomResizedCropFlip(flip=flip)
    raise ValueError(f"unknown augmentation {name!r}; expected one of {AUGMENTATIONS}")
