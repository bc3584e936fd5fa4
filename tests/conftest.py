"""Shared fixtures: small generated data only; nothing is downloaded."""

from __future__ import annotations

import os

# Keep numeric libraries to one thread per test process: the suite runs on 2 cores, often with xdist.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import pytest

from eeopt.synthetic import synthetic_exit_outputs


@pytest.fixture
def outputs_pair():
    """(val, test) synthetic exit outputs of the same 'model': 4 exits, 10 classes."""
    return (
        synthetic_exit_outputs(4, 1500, 10, seed=1, with_scores=True),
        synthetic_exit_outputs(4, 1200, 10, seed=2, with_scores=True),
    )


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
