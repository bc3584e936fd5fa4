"""The process-wide settings of a training run, in one place: device, torch threads, determinism, seeds.

They are global to the process, and one process may train many times (tests, a Ray worker running trial after
trial), so `configure_process` sets every determinism switch either way, not only when asked: one run's settings
do not leak into the next. `train` calls it once, before loading data.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from eeopt.config import TrainingConfig
from eeopt.errors import ConfigError


def configure_process(tc: TrainingConfig, seed: int) -> torch.device:
    """Set torch's threads, determinism switches and every global seed for a run; return its device.

    Raises:
        ConfigError: `training.device` names CUDA but torch sees none (raised before anything is set).
    """
    device = resolve_device(tc.device)
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        # cuBLAS needs this before its first use to be deterministic; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(tc.deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = tc.deterministic
    torch.backends.cudnn.benchmark = not tc.deterministic
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return device


def resolve_device(name: str) -> torch.device:
    """`training.device` as a torch device: 'auto' is CUDA when torch sees one, else the CPU.

    Raises:
        ConfigError: a CUDA device is named but torch sees none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name} requested but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Restore the Python, NumPy and torch (CPU) random states on exit.

    `train` loads data inside it, so the initial weights do not depend on whether the data was loaded there or
    passed in (a loader may draw from the global generators).
    """
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)
