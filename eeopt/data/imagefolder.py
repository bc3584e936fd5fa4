"""`imagefolder`: images sorted into one folder per class, `data.root/train/<class>/*` and `data.root/test/<class>/*`.

Classes are the train folder names, sorted (their index is the label); test folders must use the same names.
Image files: .png, .jpg, .jpeg, .bmp, .gif (any case), read with Pillow. They are kept grey (1 channel) when every
image is grey, else converted to RGB. With `data.image_size` they are resized to image_size x image_size (bilinear);
without it, all images must share one size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eeopt.config import DataConfig
from eeopt.data.base import RawData, register_dataset
from eeopt.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


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
    files: list[tuple[Path, int]] = []
    for name in names:
        images = sorted(p for p in (folder / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{folder / name}: empty class folder; expected image files ({', '.join(IMAGE_SUFFIXES)})")
        files += [(p, classes.index(name)) for p in images]
    return classes, files


def _read_images(files: list[tuple[Path, int]]) -> list:
    """Every file as a loaded PIL image (DataError naming the first unreadable one)."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path, _ in files:
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: cannot read the image ({exc})") from None
    return images


def check_imagefolder(cfg: DataConfig) -> str | None:
    """The presence check: data.root is set and holds train/ and test/ folders (their images are not opened)."""
    if cfg.root is None:
        return "data.root: not set; imagefolder needs a folder with train/<class>/* and test/<class>/* images"
    root = Path(cfg.root).expanduser()
    missing = next((part for part in ("train", "test") if not (root / part).is_dir()), None)
    if missing is None:
        return None
    expected = f"{root}/{missing}/<class>/*"
    return f"data.root: {cfg.root} has no imagefolder files ({root / missing}: not found; expected {expected})"


@register_dataset("imagefolder", check=check_imagefolder)
def load_imagefolder(cfg: DataConfig) -> RawData:
    """data.root/{train,test}/<class>/* -> uint8 images [N, H, W] (grey) or [N, H, W, 3], labels by sorted class."""
    from PIL import Image

    if cfg.root is None:
        raise DataError("imagefolder: set data.root to a folder with train/<class>/* and test/<class>/* images")
    root = Path(cfg.root).expanduser()
    classes, train_files = _list_split(root, "train", None)
    _, test_files = _list_split(root, "test", classes)
    files = train_files + test_files
    images = _read_images(files)
    grey = all(im.mode in _GREY_MODES for im in images)
    mode = "L" if grey else "RGB"
    arrays = []
    reference: tuple[Path, tuple[int, int]] | None = None
    for (path, _), im in zip(files, images):
        im = im.convert(mode)
        if cfg.image_size is not None:
            if im.size != (cfg.image_size, cfg.image_size):
                im = im.resize((cfg.image_size, cfg.image_size), Image.Resampling.BILINEAR)
        elif reference is None:
            reference = (path, im.size)
        elif im.size != reference[1]:
            (w, h), (rw, rh) = im.size, reference[1]
            raise DataError(
                f"{path}: image is {w}x{h} but {reference[0]} is {rw}x{rh}; all images must share one size, "
                "or set data.image_size to resize them"
            )
        arrays.append(np.asarray(im, dtype=np.uint8))
    stacked = np.stack(arrays)
    labels = np.array([label for _, label in files], dtype=np.int64)
    n_train = len(train_files)
    return RawData(
        train_images=stacked[:n_train],
        train_labels=labels[:n_train],
        test_images=stacked[n_train:],
        test_labels=labels[n_train:],
        num_classes=len(classes),
        sources=(str(root),),
        hflip=True,
        class_names=tuple(classes),
    )
