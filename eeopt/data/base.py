"""Dataset registry and the one path from raw images to training-ready splits.

A loader registered with `register_dataset` only reads files and returns `RawData` (the official train and test
images as NumPy arrays, or `LazyImages` read on demand: image folders); its optional `check` only looks for the
files, so `check_dataset_files` can report a missing folder before a run starts. `load_dataset` then does the same
for every dataset:

1. a seeded train/val split of the *train* images (stratified by label when every class has >= 2 images);
2. subsets: the first `train_subset` / `val_subset` images of the (seeded, shuffled) train / val splits, and the
   first `test_subset` test images in file order;
3. in memory or streamed (`data.stream`; None: streamed when the train split would decode to more than
   `STREAM_THRESHOLD_BYTES`, 2 GiB of float32): in memory, every split is decoded once into float32 tensors
   [N, C, H, W]; streamed, a `StreamedSplit` keeps the labels and reads images per batch in DataLoader workers;
4. images as float32 (uint8 scaled to [0, 1]) at the geometry of `data.augment` and `data.image_size`
   (`augment.geometry_for`: a resize to image_size x image_size, or for imagenet a shorter-side resize to
   image_size / 0.875 and a center crop of image_size);
5. per-channel normalisation (`data.normalization`): mean/std of the final train split (streamed: of its first
   `STATS_SAMPLE` images in the split's seeded order), or the pretrained backbone's statistics given by the caller.

The test split is never used to fit anything. `iterate_batches` slices a `Split` or streams a `StreamedSplit`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eeopt.config import DataConfig
from eeopt.data.augment import (  # noqa: F401  (RandomCropFlip is re-exported)
    RandomCropFlip,
    augment_name,
    geometry_for,
    make_augment,
)
from eeopt.data.stream import (
    STATS_SAMPLE,
    STREAM_THRESHOLD_BYTES,
    BatchReader,
    StreamedSplit,
    default_workers,
    streamed_channel_stats,
)
from eeopt.data.tensors import (  # noqa: F401  (to_tensor is re-exported)
    LazyImages,
    channel_stats,
    decode_images,
    image_shape,
    normalize,
    to_tensor,
)
from eeopt.errors import ConfigError, DataError
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
    """Train/val/test splits (each a `Split` in memory or a `StreamedSplit`) plus what a model needs to know.

    `augment(x, generator) -> x` is the batch-level training augmentation of in-memory data (None for none, and
    always None when streamed: the train split's workers augment); `info` is small and JSON-safe: name, sources,
    split sizes, split seed, sha1 of the val indices, mean/std and how they were set, stream, augment.
    """

    train: Split | StreamedSplit
    val: Split | StreamedSplit
    test: Split | StreamedSplit
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    augment: Callable[[Tensor, torch.Generator], Tensor] | None
    info: dict[str, Any]


@dataclass(frozen=True)
class RawData:
    """What a loader returns: the official train and test images, as NumPy arrays or `LazyImages` (read on demand).

    Images are [N, H, W] (grey) or [N, H, W, C], uint8 (scaled to [0, 1] later) or float (kept as is); labels are
    integers in [0, num_classes). `sources` are the files or folders read (for `Dataset.info`); `hflip` says
    whether horizontal flips are a valid augmentation (not for digits); `test_note` says where the test split
    comes from when it is not an official one.
    """

    train_images: np.ndarray | LazyImages
    train_labels: np.ndarray
    test_images: np.ndarray | LazyImages
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
def load_dataset(
    cfg: DataConfig, seed: int, *, pretrained_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    pin_memory: bool = False,
) -> Dataset:
    """Load `cfg.name` and split, subset, convert and normalise it (see the module docstring).

    The train/val split and the subsets depend on `seed` only (not on the subset sizes: a smaller `train_subset`
    never moves images between train and val). For a given seed the streamed and in-memory paths hold the same
    images in the same order; evaluation batches are equal bit for bit when the train statistics are (train split
    within STATS_SAMPLE images, or pretrained statistics).

    Args:
        pretrained_stats: (mean [C], std [C]) of a pretrained backbone's inputs, in [0, 1] pixel units; used when
            `data.normalization` is pretrained, or None with these given.
        pin_memory: streamed batches in page-locked memory (pass true when training on CUDA).

    Raises:
        UnknownNameError: unknown dataset name (the message lists the registered ones).
        DataError: missing or malformed files.
        ConfigError: data.normalization pretrained without `pretrained_stats`, or of another channel count.
    """
    raw = DATASETS.get(cfg.name, where="data.name").load(cfg)
    _check_raw(cfg.name, raw)
    rng = np.random.default_rng(seed % 2**64)
    train_idx, val_idx, stratified = split_indices(raw.train_labels, cfg.val_fraction, rng)
    train_idx = train_idx[: cfg.train_subset]  # both are already in a seeded random order
    val_idx = val_idx[: cfg.val_subset]
    n_test = len(raw.test_labels)
    test_idx = np.arange(n_test if cfg.test_subset is None else min(cfg.test_subset, n_test))
    indices = {"train": train_idx, "val": val_idx, "test": test_idx}
    sources = {"train": raw.train_images, "val": raw.train_images, "test": raw.test_images}
    labels = {"train": raw.train_labels, "val": raw.train_labels, "test": raw.test_labels}
    ys = {key: torch.from_numpy(labels[key][idx].astype(np.int64)) for key, idx in indices.items()}

    geometry = geometry_for(cfg.augment, cfg.image_size)
    shape = image_shape(raw.train_images)
    channels = 1 if len(shape) == 3 else shape[3]
    if isinstance(raw.train_images, np.ndarray):
        image_size = geometry.output_shape(shape[1], shape[2])
    else:  # lazy images are read at the geometry already
        image_size = (shape[1], shape[2])
    decoded_bytes = len(train_idx) * channels * image_size[0] * image_size[1] * 4
    stream = cfg.stream if cfg.stream is not None else decoded_bytes > STREAM_THRESHOLD_BYTES
    kind, fixed = _normalization(cfg, pretrained_stats, channels)
    name = augment_name(cfg.augment)
    info: dict[str, Any] = {"name": cfg.name, "sources": list(raw.sources)}

    if stream:
        workers = cfg.workers if cfg.workers is not None else default_workers()
        if kind == "train":
            sample = train_idx[:STATS_SAMPLE]
            mean, std = streamed_channel_stats(BatchReader(raw.train_images, geometry), sample, workers=workers)
            info["stats_images"] = len(sample)
        else:
            mean, std = fixed
        norm = (tuple(mean), tuple(std)) if kind != "none" else (None, None)
        fill = tuple((0.0 - m) / s for m, s in zip(mean, std))  # raw black, in normalised units
        augment = make_augment(name, image_size, raw.hflip, fill)
        crops = name == "imagenet" and not isinstance(raw.train_images, np.ndarray)  # from the native images
        train_reader = BatchReader(raw.train_images, geometry, *norm, augment=None if crops else augment,
                                   resized_crop=image_size if crops else None, flip=raw.hflip)
        readers = {"train": train_reader, "val": BatchReader(raw.train_images, geometry, *norm),
                   "test": BatchReader(raw.test_images, geometry, *norm)}
        splits = {
            key: StreamedSplit(readers[key], idx, ys[key], workers=workers, pin_memory=pin_memory,
                               persistent=key != "test")  # train and val are read every epoch
            for key, idx in indices.items()
        }
        dataset_augment = None
        info.update(stream=True, workers=workers)
    else:
        xs = {key: decode_images(sources[key], idx, geometry) for key, idx in indices.items()}
        if kind == "train":
            mean, std = channel_stats(xs["train"])
        else:
            mean, std = fixed
        if kind != "none":
            xs = {key: normalize(x, mean, std) for key, x in xs.items()}
        splits = {key: Split(xs[key], ys[key]) for key in indices}
        fill = tuple((0.0 - m) / s for m, s in zip(mean, std))
        dataset_augment = make_augment(name, image_size, raw.hflip, fill)
        info["stream"] = False
    info.update({
        "sizes": {key: len(split) for key, split in splits.items()},
        "split_seed": int(seed),
        "stratified": stratified,
        "val_indices_sha1": indices_sha1(val_idx),
        "num_classes": raw.num_classes,
        "image_size": list(image_size),
        "augment": name,
        "normalization": kind,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    })
    if raw.test_note:
        info["test_split"] = raw.test_note
    return Dataset(**splits, num_classes=raw.num_classes, in_channels=channels, image_size=tuple(image_size),
                   augment=dataset_augment, info=info)


def _normalization(
    cfg: DataConfig, pretrained: tuple[Sequence[float], Sequence[float]] | None, channels: int
) -> tuple[str, tuple[list[float], list[float]]]:
    """("train" | "pretrained" | "none", the fixed (mean, std) for the last two; unused for train)."""
    identity = ([0.0] * channels, [1.0] * channels)
    if not cfg.normalize:
        return "none", identity
    kind = cfg.normalization or ("pretrained" if pretrained is not None else "train")
    if kind == "train":
        return "train", identity
    if pretrained is None:
        raise ConfigError("data.normalization: pretrained needs the pretrained backbone's mean/std (set "
                          "model.pretrained, or use data.normalization: train)")
    mean, std = [float(v) for v in pretrained[0]], [float(v) for v in pretrained[1]]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"data.normalization: the pretrained statistics have {len(mean)} channels but the "
                          f"{cfg.name} images have {channels}")
    if min(std) <= 0:
        raise ConfigError(f"data.normalization: the pretrained std must be positive, got {std}")
    return "pretrained", (mean, std)


def _check_raw(name: str, raw: RawData) -> None:
    where = f"dataset {name!r}"
    if raw.num_classes < 2:
        raise DataError(f"{where}: needs at least 2 classes, got {raw.num_classes}")
    for part, images, labels in (("train", raw.train_images, raw.train_labels), ("test", raw.test_images, raw.test_labels)):
        shape = image_shape(images)
        if len(shape) not in (3, 4):
            raise DataError(f"{where}: {part} images must be [N, H, W] or [N, H, W, C], got shape {shape}")
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
    train_shape, test_shape = image_shape(raw.train_images)[1:], image_shape(raw.test_images)[1:]
    if train_shape != test_shape:
        raise DataError(f"{where}: train images are {train_shape} but test images {test_shape}")


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


# --------------------------------------------------------------------------------------------------- batching
def iterate_batches(
    split: Split | StreamedSplit, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x [B, C, H, W], y [B]) covering every sample exactly once; the last batch may be smaller.

    With `shuffle`, the order is `torch.randperm(N, generator=generator)` (the global RNG when None); without it,
    batches are in order (views of an in-memory split). A `StreamedSplit` reads its batches through its DataLoader
    (and, when it augments and shuffles, draws its epoch's augmentation seed from `generator` after the order).
    """
    if isinstance(split, StreamedSplit):
        yield from split.batches(batch_size, shuffle, generator)
        return
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


def split_tensors(split: Split | StreamedSplit, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(x [N, C, H, W], y [N]) of a whole split in order: an in-memory split's own tensors, a streamed one's
    batches read and concatenated (in memory: for val/test-sized splits)."""
    if isinstance(split, Split):
        return split.x, split.y
    xs = [x for x, _ in split.batches(batch_size, shuffle=False)]
    return torch.cat(xs), split.y
