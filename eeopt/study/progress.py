"""Progress of a running study on stderr: one timestamped line per event (trial started, epoch, done, failed)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


class Reporter:
    """Prints `[   12s] text` lines on stderr; `enabled=False` prints nothing (tests, the Python API)."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console

        self.enabled = enabled
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.t0 = time.time()

    def line(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[{time.time() - self.t0:6.0f}s] {text}", markup=False)


def format_params(params: Mapping[str, Any]) -> str:
    """`training.lr=0.00312 model.exits=[2, 4]`: sampled parameters in one line."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
