"""Validation of the arrays the metrics, policies and sweeps take: once, at public entry points.

Every check raises `ValueError` naming the array that is off and what it should be.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def check_paired(values: ArrayLike, correct: ArrayLike, name: str, needs: str) -> tuple[np.ndarray, np.ndarray]:
    """`values` [N] and `correct` [N] (bool or 0/1), N >= 1; ValueError naming `name` otherwise."""
    v = np.asarray(values)
    c = as_binary(correct, "correct")
    if v.ndim != 1:
        raise ValueError(f"{name} must have shape [N], got shape {v.shape}")
    if v.shape != c.shape:
        raise ValueError(f"{name} and correct must have the same length, got {v.shape} and {c.shape}")
    if v.size == 0:
        raise ValueError(f"{name} and correct are empty; {needs} needs at least one sample")
    return v, c


def as_binary(values: ArrayLike, name: str) -> np.ndarray:
    """A bool array from bools or 0/1 numbers; anything else is a ValueError."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf" or not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must be boolean (or 0/1), got dtype {arr.dtype}")
    return arr.astype(bool)


def check_exit_arrays(values, correct, costs, name: str = "scores") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate per-exit arrays: `values` [K, N] (N >= 1), `correct` [K, N], `costs` [K].

    Returns them as (array, bool array, float64 array).
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"{name} must have shape [K, N] with N >= 1, got {values.shape}")
    k, n = values.shape
    correct = np.asarray(correct, dtype=bool)
    costs = np.asarray(costs, dtype=np.float64)
    if correct.shape != (k, n) or costs.shape != (k,):
        raise ValueError(f"correct must be [K, N] = {(k, n)} and costs [K]; got {correct.shape} and {costs.shape}")
    return values, correct, costs
