"""Streamed splits: labels in memory, images read, transformed and augmented per batch by DataLoader workers.

A `StreamedSplit` stands where a `Split` does: `len(split)`, `split.y` (int64 [N], in memory) and
`iterate_batches(split, batch_size, shuffle, generator)` behave the same, so the training loop does not know which
it has. Per epoch the main process draws the order exactly as the in-memory path does
(`torch.randperm(N, generator=generator)`), and, when the split augments, one more number from the same generator:
batch k is augmented with a generator seeded by (that number, k). So the same seed gives the same batches whatever
the number of workers, and without augmentation the same batches as the in-memory path.

Workers (`data.workers`; default `default_workers()`) are persistent (started once per split, kept across epochs)
and pin their batches in page-locked memory when the caller trains on CUDA (`pin_memory`). A worker's DataError
(an unreadable image) comes back as one line, not a worker traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from eeopt.data.augment import BatchAugment, Geometry
from eeopt.data.tensors import ChannelStats, LazyImages, decode_images, normalize, to_tensor
from eeopt.errors import DataError

STREAM_THRESHOLD_BYTES = 2 * 1024**3  # data.stream None: stream when the train split decodes to more than this
STATS_SAMPLE = 5000  # streamed train statistics: the first this many train images (the split's seeded order)
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """DataLoader workers when `data.workers` is not set: one fewer than the CPUs this process may use (the smaller
    of torch's thread count, which a trial sets, and the CPU affinity), at most MAX_DEFAULT_WORKERS; 0 (read in
    the training process) on one CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    cpus = min(cpus, torch.get_num_threads())
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))


@dataclass
class BatchReader:
    """Reads batches of one image source: decode at `geometry`, normalise with `mean`/`std` (None: not), then
    augment when given a seed.

    Augmentation: `resized_crop` set (imagenet on files) -> random-resized crops of the native images, read at that
    (h, w); else `augment` (a batch augmentation) on the normalised batch.
    """

    images: np.ndarray | LazyImages
    geometry: Geometry
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: BatchAugment | None = None
    resized_crop: tuple[int, int] | None = None
    flip: bool = True

    @property
    def augments(self) -> bool:
        return self.augment is not None or self.resized_crop is not None

    def read(self, positions: np.ndarray, seed: int | None = None) -> Tensor:
        """float32 [B, C, H, W] of the images at `positions` (augmented with a generator seeded by `seed`)."""
        generator = torch.Generator().manual_seed(seed) if seed is not None and self.augments else None
        if generator is not None and self.resized_crop is not None:
            x = to_tensor(self.images.read_resized_crops(positions, generator, self.resized_crop, self.flip))
            return self._normalize(x)
        x = self._normalize(decode_images(self.images, positions, self.geometry))
        if generator is not None and self.augment is not None:
            x = self.augment(x, generator)
        return x

    def _normalize(self, x: Tensor) -> Tensor:
        return normalize(x, self.mean, self.std) if self.mean is not None else x


class _Batches(torch.utils.data.Dataset):
    """The DataLoader's dataset: item (positions, seed) -> (x, error line or ''). Errors travel as values so the
    main process raises one line instead of the worker's traceback."""

    def __init__(self, reader: BatchReader) -> None:
        self.reader = reader

    def __getitem__(self, item: tuple[np.ndarray, int | None]) -> tuple[Tensor, str]:
        positions, seed = item
        try:
            return self.reader.read(positions, seed), ""
        except DataError as exc:
            return torch.empty(0), str(exc)

    def __len__(self) -> int:  # not used for sampling (the plan is the sampler)
        return len(self.reader.images)


class _Plan(torch.utils.data.Sampler):
    """The sampler: this epoch's batches as (positions, seed), replaced before each pass (the DataLoader, and so
    its persistent workers, stays the same)."""

    def __init__(self) -> None:
        self.items: list[tuple[np.ndarray, int | None]] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _batch_seed(epoch_seed: int, k: int) -> int:
    return int(np.random.SeedSequence([epoch_seed, k]).generate_state(1, np.uint64)[0] >> 1)


class StreamedSplit:
    """A split whose labels `y` (int64 [N]) are in memory and whose images are read per batch.

    `positions` [N] index the reader's images (train and val share the train images). One iteration at a time
    per split: starting `batches` again ends the previous pass.
    """

    def __init__(
        self, reader: BatchReader, positions: np.ndarray, y: Tensor, *, workers: int, pin_memory: bool = False,
        persistent: bool = True,
    ) -> None:
        assert y.ndim == 1 and len(y) == len(positions), "StreamedSplit: one label per position"
        self.reader, self.positions, self.y = reader, np.asarray(positions, dtype=np.int64), y
        self.workers, self.pin_memory, self.persistent = workers, pin_memory, persistent
        self._plan = _Plan()
        self._loader: torch.utils.data.DataLoader | None = None

    def __len__(self) -> int:
        return len(self.y)

    def _get_loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            extra = {"persistent_workers": self.persistent, "prefetch_factor": 2} if self.workers > 0 else {}
            # a private generator: the loader draws its workers' base seed from it at each pass, which would
            # otherwise advance torch's global RNG (and so dropout) unlike the in-memory path
            self._loader = torch.utils.data.DataLoader(
                _Batches(self.reader), batch_size=None, sampler=self._plan, num_workers=self.workers,
                pin_memory=self.pin_memory, generator=torch.Generator().manual_seed(0), **extra,
            )
        return self._loader

    def batches(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None, *, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x [B, C, H, W], y [B]) over every sample once, as `iterate_batches` does for a `Split`.

        With `shuffle` the order is `torch.randperm(N, generator=generator)`; a split that augments then draws one
        int64 from `generator` for the epoch's batch seeds (with `augment`).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else "cpu")
            order = order.cpu().numpy()
        else:
            order = np.arange(n)
        epoch_seed = None
        if augment and shuffle and self.reader.augments:
            dev = generator.device if generator is not None else "cpu"
            epoch_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=dev))
        chunks = [order[s : s + batch_size] for s in range(0, n, batch_size)]
        self._plan.items = [
            (self.positions[c], None if epoch_seed is None else _batch_seed(epoch_seed, k)) for k, c in enumerate(chunks)
        ]
        labels = [self.y[torch.from_numpy(c)] for c in chunks]
        for (x, error), y in zip(self._get_loader(), labels):
            if error:
                raise DataError(error)
            yield x, y


def streamed_channel_stats(
    reader: BatchReader, positions: np.ndarray, *, workers: int, batch_size: int = 256
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images at `positions` (read without normalisation or augmentation), through
    a DataLoader with `workers`; equal bit for bit to `channel_stats` of the same images decoded at once."""
    plain = BatchReader(reader.images, reader.geometry)
    split = StreamedSplit(plain, positions, torch.zeros(len(positions), dtype=torch.int64), workers=workers,
                          persistent=False)
    stats = ChannelStats()
    for x, _ in split.batches(batch_size, shuffle=False):
        stats.add(x)
    return stats.result()
