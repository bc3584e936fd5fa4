"""The settings of a training run about its process and device, in one place: device, torch threads, determinism,
seeds (`configure_process`); the precision of training steps, the memory format of convolutional models on CUDA
and torch.compile (`training_precision`, `prepare_for_device`, `compiled_for_training`).

The process-wide ones are global to the process, and one process may train many times (tests, a Ray worker running trial after
trial), so `configure_process` sets every determinism switch either way, not only when asked: one run's settings
do not leak into the next. `train` calls it once, before loading data.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


# ------------------------------------------------------------------------------------------------ the device's speed
@dataclasses.dataclass
class Precision:
    """How training steps compute: under autocast to `dtype` (None: float32 throughout), and for float16 with a
    gradient scaler (its scale lives across epochs). Evaluation never uses it: exit outputs stay float32."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass and loss of a step run inside this."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(precision: str, device: torch.device) -> Precision:
    """`training.precision` on `device`: fp32, bf16 (autocast; no scaler: bfloat16 has float32's range) or fp16
    (autocast and a `torch.amp.GradScaler`). bf16 also runs on the CPU's autocast.

    fp16's scaler checks the gradients for inf before every optimizer step, which waits for the device once a
    step; bf16 does not (prefer it where the GPU has it).

    Raises:
        ConfigError: the device has no autocast, or it is a GPU without bfloat16 (before compute capability 8.0).
    """
    dtype = _DTYPES[precision]
    if dtype is None:
        return Precision(device.type, None)
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"training.precision: {precision} needs autocast, which torch lacks on {device.type}; "
                          "use fp32")
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(f"training.precision: bf16 needs a GPU with bfloat16 (compute capability 8.0 or later; "
                          f"{torch.cuda.get_device_name(device)} has none); use fp16 or fp32")
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    return Precision(device.type, dtype, scaler)


def input_memory_format(model: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """channels_last for a model with 2-D convolutions on CUDA (cuDNN's fast convolution kernels, above all under
    autocast, are NHWC ones), else contiguous. The same rule sets the weights' layout (`prepare_for_device`) and the
    inputs' (every batch)."""
    if device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        return torch.channels_last
    return torch.contiguous_format


def prepare_for_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move `model` to `device` in the memory format `input_memory_format` chooses (in place; returns it)."""
    return model.to(device=device, memory_format=input_memory_format(model, device))


def compiled_for_training(model: torch.nn.Module, compile_: bool) -> torch.nn.Module:
    """`torch.compile(model)` for the training steps when `training.compile` is set, else `model` itself.

    The compiled module shares the model's parameters and buffers; evaluation runs the plain model (eval mode would
    compile a second graph for a handful of batches). Compilation happens at the first step: a failure there is a
    `ConfigError` (`compile_errors`).
    """
    return torch.compile(model) if compile_ else model


@contextlib.contextmanager
def compile_errors(enabled: bool) -> Iterator[None]:
    """Turn torch.compile's own failures (no C++ compiler on the CPU, an unsupported operation) into one line."""
    if not enabled:
        yield
        return
    import torch._dynamo.exc as dynamo_exc

    try:
        yield
    except dynamo_exc.TorchDynamoException as exc:
        cause = getattr(exc, "inner_exception", None) or exc  # a compiler backend's own error, where it has one
        lines = str(cause).strip().splitlines()
        raise ConfigError(f"training.compile: torch.compile failed ({type(cause).__name__}: "
                          f"{lines[0][:200] if lines else ''}); set training.compile: false") from None
