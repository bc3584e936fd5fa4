"""Datasets: a registry of loaders and one `load_dataset` that splits, subsets and normalises them all alike, held
in memory or streamed through DataLoader workers.

Built in: ``digits`` (scikit-learn, 8x8), ``fashion-mnist`` (IDX files), ``cifar10``, ``cifar100`` (python
batches, extracted or in the downloaded .tar.gz) and ``imagefolder`` (root/{train,test or val}/<class>/*). Add one
with `register_dataset`.
"""

from __future__ import annotations

from eeopt.data import cifar, digits, idx, imagefolder  # noqa: F401  (register the built-in datasets)
from eeopt.data.augment import RandomCropFlip, RandomResizedCropFlip
from eeopt.data.base import (
    Dataset,
    RawData,
    Split,
    check_dataset_files,
    iterate_batches,
    list_datasets,
    load_dataset,
    register_dataset,
    split_tensors,
)
from eeopt.data.idx import read_idx
from eeopt.data.stream import StreamedSplit

__all__ = [
    "Dataset",
    "RandomCropFlip",
    "RandomResizedCropFlip",
    "RawData",
    "Split",
    "StreamedSplit",
    "check_dataset_files",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "read_idx",
    "register_dataset",
    "split_tensors",
]
