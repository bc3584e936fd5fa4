"""Dataset registry and the one path from raw arrays to training-ready splits.

A loader registered with `register_dataset` only reads files and returns `RawData` (the official train and test
images as NumPy arrays); its optional `check` only looks for the files, so `check_dataset_files` can report a missing
folder before a run starts. `load_dataset` then does the same for every dataset:

1. a seeded train/val split of the *train* images (stratified by label when every class has >= 2 images);
2. subsets: the first `train_subset` / `val_subset` images of the (seeded, shuffled) train / val splits, and the
   first `test_subset` test images in file order;
3. conversion to float32 tensors [N, C, H, W] (uint8 images are scaled to [0, 1]), resized to
   `image_size` x `image_size` when that is set and differs from the native size;
4. per-channel normalisation with mean/std computed on the final train split only.

The test split is never used to fit anything. Everything is in memory; `iterate_batches` slices it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eeopt.config import DataConfig
from eeopt.errors import DataError
from eeopt.registry import Registry


# --------------------------------------------------------------------------------------------------- containers
@dataclass(frozen=True)
class Split:
    """One split in memory: images `x` float32 [N, C, H, W] (normalised if asked) and labels `y` int64 [N]."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        assert self.x.ndim == 4, f"Split.x must be [N, C, H, W], got shape {tuple(self.x.shape)}"
        assert self.y.ndim == 1 and len(self.y) == len(self.x), (
            f"Split.y must be [N] with N = {len(self.x)}, got shape {tuple(self.y.shape)}"
        )

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """Train/val/test splits plus what a model needs to know about them.

    `augment(x, generator) -> x` is the batch-level training augmentation (None when `data.augment` is false);
    `info` is small and JSON-safe: name, sources, split sizes, split seed, sha1 of the val indices, mean/std.
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    augment: Callable[[Tensor, torch.Generator], Tensor] | None
    info: dict[str, Any]


@dataclass(frozen=True)
class RawData:
    """What a loader returns: the official train and test images as NumPy arrays.

    Images are [N, H, W] (grey) or [N, H, W, C], uint8 (scaled to [0, 1] later) or float (kept as is); labels are
    integers in [0, num_classes). `sources` are the files or folders read (for `Dataset.info`); `hflip` says
    whether horizontal flips are a valid augmentation (not for digits); `test_note` says where the test split
    comes from when it is not an official one.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    sources: tuple[str, ...] = ()
    hflip: bool = True
    class_names: tuple[str, ...] | None = None
    test_note: str | None = None


# --------------------------------------------------------------------------------------------------- registry
Loader = Callable[[DataConfig], RawData]
# check(cfg) -> None when the files look present, else one line starting with the dotted field ("data.root: ...").
FilesCheck = Callable[[DataConfig], str | None]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its loader and an optional cheap presence check of its files (None: none to find)."""

    load: Loader
    check: FilesCheck | None = None


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(name: str, check: FilesCheck | None = None) -> Callable[[Loader], Loader]:
    """Decorator: register `loader(cfg: DataConfig) -> RawData` under `name` (the `data.name` used in YAML).

    `check(cfg) -> str | None` looks for the files without reading them (`check_dataset_files` calls it before a
    run starts, so a missing folder is found in a second rather than inside a study trial). It returns None when
    they look present, else what is missing as one line naming the field, e.g. ``data.root: /x has no ... files``.

    Raises:
        ValueError: `name` is already registered.
    """

    def deco(loader: Loader) -> Loader:
        DATASETS.register(name)(DatasetEntry(loader, check))
        return loader

    return deco


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def check_dataset_files(cfg: DataConfig) -> None:
    """Check that `cfg.name`'s files are there, cheaply (the dataset's registered `check`; none for digits).

    Raises:
        UnknownNameError: unknown dataset name.
        DataError: the check's one-line message (it names the field, e.g. data.root).
    """
    check = DATASETS.get(cfg.name, where="data.name").check
    problem = check(cfg) if check is not None else None
    if problem:
        raise DataError(problem)


# --------------------------------------------------------------------------------------------------- loading
def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Load `cfg.name` and split, subset, convert and normalise it (see the module docstring).

    The train/val split and the subsets depend on `seed` only (not on the subset sizes: a smaller `train_subset`
    never moves images between train and val).

    Raises:
        UnknownNameError: unknown dataset name (the message lists the registered ones).
        DataError: missing or malformed files.
    """
    raw = DATASETS.get(cfg.name, where="data.name").load(cfg)
    _check_raw(cfg.name, raw)
    rng = np.random.default_rng(seed % 2**64)
    train_idx, val_idx, stratified = split_indices(raw.train_labels, cfg.val_fraction, rng)
    train_idx = train_idx[: cfg.train_subset]  # both are already in a seeded random order
    val_idx = val_idx[: cfg.val_subset]
    test_idx = np.arange(len(raw.test_labels) if cfg.test_subset is None else min(cfg.test_subset, len(raw.test_labels)))
    splits, mean, std = _tensor_splits(raw, cfg, {"train": train_idx, "val": val_idx, "test": test_idx})
    channels, image_size = splits["train"].x.shape[1], tuple(int(d) for d in splits["train"].x.shape[2:])
    augment = None
    if cfg.augment:
        fill = tuple((0.0 - m) / s for m, s in zip(mean, std))  # raw black, in normalised units
        augment = RandomCropFlip(pad=max(1, min(image_size) // 8), flip=raw.hflip, fill=fill)
    info: dict[str, Any] = {
        "name": cfg.name,
        "sources": list(raw.sources),
        "sizes": {key: len(split) for key, split in splits.items()},
        "split_seed": int(seed),
        "stratified": stratified,
        "val_indices_sha1": indices_sha1(val_idx),
        "num_classes": raw.num_classes,
        "image_size": list(image_size),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }
    if raw.test_note:
        info["test_split"] = raw.test_note
    return Dataset(**splits, num_classes=raw.num_classes, in_channels=channels, image_size=image_size,
                   augment=augment, info=info)


def _tensor_splits(raw: RawData, cfg: DataConfig, indices: dict[str, np.ndarray]):
    """The train/val/test `Split`s of the chosen images (resized, normalised with train statistics), and the
    per-channel mean and std used."""
    size = (cfg.image_size, cfg.image_size) if cfg.image_size is not None else None
    images = {"train": raw.train_images, "val": raw.train_images, "test": raw.test_images}
    labels = {"train": raw.train_labels, "val": raw.train_labels, "test": raw.test_labels}
    xs = {key: to_tensor(images[key][idx], size) for key, idx in indices.items()}
    ys = {key: torch.from_numpy(labels[key][idx].astype(np.int64)) for key, idx in indices.items()}
    channels = xs["train"].shape[1]
    if cfg.normalize:
        mean, std = channel_stats(xs["train"])
        xs = {key: normalize(x, mean, std) for key, x in xs.items()}
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    return {key: Split(xs[key], ys[key]) for key in indices}, mean, std


def _check_raw(name: str, raw: RawData) -> None:
    where = f"dataset {name!r}"
    if raw.num_classes < 2:
        raise DataError(f"{where}: needs at least 2 classes, got {raw.num_classes}")
    for part, images, labels in (("train", raw.train_images, raw.train_labels), ("test", raw.test_images, raw.test_labels)):
        if images.ndim not in (3, 4):
            raise DataError(f"{where}: {part} images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{where}: {len(images)} {part} images but labels of shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{where}: {part} labels must be integers, got {labels.dtype}")
        if len(labels) and (labels.min() < 0 or labels.max() >= raw.num_classes):
            raise DataError(
                f"{where}: {part} labels must lie in [0, {raw.num_classes}), got {labels.min()}..{labels.max()}"
            )
    if len(raw.train_labels) < 2 or len(raw.test_labels) < 1:
        raise DataError(
            f"{where}: needs >= 2 train and >= 1 test images, got {len(raw.train_labels)} and {len(raw.test_labels)}"
        )
    if raw.train_images.shape[1:] != raw.test_images.shape[1:]:
        raise DataError(
            f"{where}: train images are {raw.train_images.shape[1:]} but test images {raw.test_images.shape[1:]}"
        )


# --------------------------------------------------------------------------------------------------- splitting
def split_indices(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """Seeded split of range(len(labels)) into (rest, held_out, stratified), each in a random order.

    `held_out` has round(fraction * N) indices (at least 1, at most N - 1). It is stratified by label (each class
    contributes its share, largest remainders first) when every class has >= 2 images, else a plain random draw.
    """
    n = len(labels)
    n_out = min(max(round(fraction * n), 1), n - 1)
    order = rng.permutation(n)
    _, counts = np.unique(labels, return_counts=True)
    stratified = bool(counts.min() >= 2)
    if stratified:
        quota = n_out * counts / n
        take = np.floor(quota).astype(np.int64)
        remainder = n_out - int(take.sum())
        take[np.argsort(-(quota - take), kind="stable")[:remainder]] += 1
        take = np.minimum(take, counts - 1)  # every class keeps at least one image on the other side
        by_class = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within a class
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        chosen = np.zeros(n, dtype=bool)
        chosen[np.concatenate([by_class[s : s + t] for s, t in zip(starts, take)])] = True
        mask = chosen[order]  # keep the random order
        held, rest = order[mask], order[~mask]
    else:
        held, rest = order[:n_out], order[n_out:]
    return rest, held, stratified


def indices_sha1(indices: np.ndarray) -> str:
    """sha1 of indices as little-endian int64 (in their order): identifies a split without storing it."""
    return hashlib.sha1(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------------- tensors
def to_tensor(images: np.ndarray, size: tuple[int, int] | None = None) -> Tensor:
    """[N, H, W] or [N, H, W, C] NumPy images -> float32 [N, C, H, W]; uint8 scaled to [0, 1]; optional resize."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = x.float().div_(255.0) if images.dtype == np.uint8 else x.float()
    x = x.contiguous()
    if size is not None and tuple(x.shape[2:]) != size and len(x):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of [N, C, H, W], in float64; a constant channel gets std 1."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def normalize(x: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """(x - mean) / std per channel of [N, C, H, W], in place when possible; returns the tensor."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


# --------------------------------------------------------------------------------------------------- augmentation
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


# --------------------------------------------------------------------------------------------------- batching
def iterate_batches(
    split: Split, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x [B, C, H, W], y [B]) covering every sample exactly once; the last batch may be smaller.

    With `shuffle`, the order is `torch.randperm(N, generator=generator)` (the global RNG when None); without it,
    batches are views in order. No worker processes: everything is already in memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(split)
    if shuffle:
        perm = torch.randperm(n, generator=generator, device=generator.device if generator is not None else "cpu")
        perm = perm.to(split.x.device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            yield split.x[idx], split.y[idx]
    else:
        for start in range(0, n, batch_size):
            yield split.x[start : start + batch_size], split.y[start : start + batch_size]

