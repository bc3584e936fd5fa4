"""Datasets: a registry of loaders and one `load_dataset` that splits, subsets and normalises them all alike.

Built in: ``digits`` (scikit-learn, 8x8), ``fashion-mnist`` (IDX files), ``cifar10``, ``cifar100`` (python
batches) and ``imagefolder`` (root/{train,test}/<class>/*). Add one with `register_dataset`.
"""

from __future__ import annotations

from eeopt.data import cifar, digits, idx, imagefolder  # noqa: F401  (register the built-in datasets)
from eeopt.data.base import (
    Dataset,
    RandomCropFlip,
    RawData,
    Split,
    check_dataset_files,
    iterate_batches,
    list_datasets,
    load_dataset,
    register_dataset,
)
from eeopt.data.idx import read_idx

__all__ = [
    "Dataset",
    "RandomCropFlip",
    "RawData",
    "Split",
    "check_dataset_files",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "read_idx",
    "register_dataset",
]
