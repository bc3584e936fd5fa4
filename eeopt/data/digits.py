"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1797 grey images, 10 classes, values 0..16).

The set has no official test split, so a fixed stratified 20% (359 images, drawn with `DIGITS_TEST_SEED`, not the
run seed) is held out as "test" for every run; the remaining 1438 images are the "train" images that
`load_dataset` splits into train and val. Pixels are scaled to [0, 1] (divided by 16). Horizontal flips are off:
a mirrored digit is not the same digit.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from eeopt.config import DataConfig
from eeopt.data.base import RawData, register_dataset, split_indices

DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed: the test split must not change with the run seed


@register_dataset("digits")
def load_digits(cfg: DataConfig) -> RawData:
    """The 1797 scikit-learn digits as [N, 8, 8] float32 in [0, 1]: 1438 train, 359 test (fixed holdout)."""
    pixels, target, source = bundled_digits()
    images = (pixels / 16.0).astype(np.float32)
    labels = target.astype(np.int64)
    train_idx, test_idx, _ = split_indices(labels, DIGITS_TEST_FRACTION, np.random.default_rng(DIGITS_TEST_SEED))
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)  # keep sklearn's order within each part
    return RawData(
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        num_classes=10,
        sources=(source,),
        hflip=False,
        class_names=tuple(str(d) for d in range(10)),
        test_note=f"fixed stratified {DIGITS_TEST_FRACTION:.0%} holdout of sklearn's digits (seed {DIGITS_TEST_SEED})",
    )


def bundled_digits() -> tuple[np.ndarray, np.ndarray, str]:
    """(images [1797, 8, 8] with values 0..16, labels, where they came from), in scikit-learn's order: read from the
    CSV file scikit-learn bundles (its path is the source), without importing scikit-learn (half a second or more,
    paid by every trial worker that loads digits); through `sklearn.datasets.load_digits` should the file not be
    where scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64), str(path)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.images, bunch.target, "sklearn.datasets.load_digits"
