"""`imagefolder`: images sorted into one folder per class: `data.root/train/<class>/*` and `data.root/test/<class>/*`
(or, ImageNet's layout, `data.root/val/<class>/*` when there is no test/ folder: it is then the test split; the
validation split is always held out from train/).

Classes are the train folder names, sorted (their index is the label); test folders must use the same names.
Image files: .png, .jpg, .jpeg, .bmp, .gif, .webp (any case), read with Pillow on demand (`ImageFiles`), so a streamed
run never holds the decoded set. Images are kept grey (1 channel) when every image is grey, else converted to RGB;
with more than `MODE_CHECKS` files the modes of that many, evenly spaced, decide. With `data.image_size` they are
resized (bilinear) to image_size x image_size, or for `data.augment: imagenet` their shorter side to
image_size / 0.875 and center-cropped to image_size; without it, all images must share one size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eeopt.config import DataConfig
from eeopt.data.augment import Geometry, center_crop_box, geometry_for, resized_crop_box
from eeopt.data.base import RawData, register_dataset
from eeopt.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MODE_CHECKS = 2000  # image headers opened to choose grey or RGB (all of them up to this many)
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
TEST_FOLDERS = ("test", "val")  # the first present is the test split


def _list_split(root: Path, part: str, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    folder = root / part
    if not folder.is_dir():
        raise DataError(f"{folder}: not found; imagefolder expects {root}/train/<class>/*.png and {root}/test/<class>/*")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{folder}: no class folders; expected {folder}/<class>/*.png")
    if classes is None:
        classes = names
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DataError(f"{folder / unknown[0]}: class {unknown[0]!r} is not among the train classes {classes}")
    index = {name: k for k, name in enumerate(classes)}
    files: list[tuple[Path, int]] = []
    for name in names:
        images = sorted(p for p in (folder / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{folder / name}: empty class folder; expected image files ({', '.join(IMAGE_SUFFIXES)})")
        files += [(p, index[name]) for p in images]
    return classes, files


def _open(path: Path):
    """A Pillow image (header read, pixels not yet), or DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from None


@dataclass(frozen=True)
class ImageFiles:
    """Image files read on demand (`eeopt.data.tensors.LazyImages`): converted to `mode`, brought to `geometry`.

    `reference` is the first file and its native (width, height): without a resize every image must match it.
    `shape` is (N, H, W) for grey, (N, H, W, 3) for RGB, at the geometry.
    """

    paths: tuple[Path, ...]
    mode: str
    geometry: Geometry
    reference: tuple[Path, tuple[int, int]]

    @property
    def shape(self) -> tuple[int, ...]:
        w, h = self.reference[1]
        oh, ow = self.geometry.output_shape(h, w)
        return (len(self.paths), oh, ow) if self.mode == "L" else (len(self.paths), oh, ow, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: Path):
        with _open(path) as im:
            try:
                im.load()
                return im.convert(self.mode)
            except OSError as exc:
                raise DataError(f"{path}: cannot read the image ({exc})") from None

    def _at_geometry(self, path: Path, im):
        from PIL import Image

        g = self.geometry
        w, h = im.size
        if g.resize is None:
            if im.size != self.reference[1]:
                (rw, rh), ref = self.reference[1], self.reference[0]
                raise DataError(
                    f"{path}: image is {w}x{h} but {ref} is {rw}x{rh}; all images must share one size, "
                    "or set data.image_size to resize them"
                )
        else:
            rh, rw = g.resized_shape(h, w)
            if (rw, rh) != (w, h):
                im = im.resize((rw, rh), Image.Resampling.BILINEAR)
        if g.crop is not None:
            top, left = center_crop_box(im.size[1], im.size[0], g.crop)
            im = im.crop((left, top, left + g.crop[1], top + g.crop[0]))
        return im

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W] or [B, H, W, 3] of the files at `indices`, at the geometry."""
        arrays = [np.asarray(self._at_geometry(self.paths[i], self._load(self.paths[i])), dtype=np.uint8)
                  for i in np.asarray(indices).tolist()]
        return np.stack(arrays) if arrays else np.zeros((0, *self.shape[1:]), dtype=np.uint8)

    def read_resized_crops(
        self, indices: np.ndarray, generator: torch.Generator, size: tuple[int, int], flip: bool
    ) -> np.ndarray:
        """Random-resized crops of the native images (`resized_crop_box`), resized to `size` (h, w) (bilinear),
        each flipped with probability 1/2 when `flip`; the draws per image: a box, then a flip."""
        from PIL import Image

        arrays = []
        for i in np.asarray(indices).tolist():
            im = self._load(self.paths[i])
            w, h = im.size
            top, left, ch, cw = resized_crop_box(h, w, generator)
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
            coin = bool(torch.rand(1, generator=generator) < 0.5)  # drawn either way, as RandomResizedCropFlip
            if flip and coin:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            arrays.append(np.asarray(im, dtype=np.uint8))
        return np.stack(arrays)


def _choose_mode(paths: list[Path]) -> str:
    """"L" when every checked image is grey, else "RGB" (all files up to MODE_CHECKS, else evenly spaced ones)."""
    if len(paths) > MODE_CHECKS:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, MODE_CHECKS).round().astype(int)]
    for path in paths:
        with _open(path) as im:
            if im.mode not in _GREY_MODES:
                return "RGB"
    return "L"


def _test_folder(root: Path) -> str:
    return next((part for part in TEST_FOLDERS if (root / part).is_dir()), TEST_FOLDERS[0])


def check_imagefolder(cfg: DataConfig) -> str | None:
    """The presence check: data.root is set and holds train/ and test/ (or val/) folders (images not opened)."""
    if cfg.root is None:
        return "data.root: not set; imagefolder needs a folder with train/<class>/* and test/<class>/* images"
    root = Path(cfg.root).expanduser()
    missing = next((part for part in ("train", _test_folder(root)) if not (root / part).is_dir()), None)
    if missing is None:
        return None
    expected = f"{root}/{missing}/<class>/*"
    return f"data.root: {cfg.root} has no imagefolder files ({root / missing}: not found; expected {expected})"


@register_dataset("imagefolder", check=check_imagefolder)
def load_imagefolder(cfg: DataConfig) -> RawData:
    """data.root/{train,test or val}/<class>/* -> `ImageFiles` (read on demand), labels by sorted class name."""
    if cfg.root is None:
        raise DataError("imagefolder: set data.root to a folder with train/<class>/* and test/<class>/* images")
    root = Path(cfg.root).expanduser()
    classes, train_files = _list_split(root, "train", None)
    test_part = _test_folder(root)
    _, test_files = _list_split(root, test_part, classes)
    mode = _choose_mode([p for p, _ in train_files + test_files])
    with _open(train_files[0][0]) as first:
        reference = (train_files[0][0], first.size)
    geometry = geometry_for(cfg.augment, cfg.image_size)

    def files(listed: list[tuple[Path, int]]) -> ImageFiles:
        return ImageFiles(tuple(p for p, _ in listed), mode, geometry, reference)

    return RawData(
        train_images=files(train_files),
        train_labels=np.array([label for _, label in train_files], dtype=np.int64),
        test_images=files(test_files),
        test_labels=np.array([label for _, label in test_files], dtype=np.int64),
        num_classes=len(classes),
        sources=(str(root),),
        hflip=True,
        class_names=tuple(classes),
        test_note=None if test_part == "test" else f"{root / test_part} (no test/ folder)",
    )
