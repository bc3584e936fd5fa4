"""What reproducing a training run needs to know about where it ran: versions, commit, threads, CPU, device.

Seeded runs are bit-identical on one machine; between machines, CPU kernels (the instruction set torch picks at
run time, oneDNN's choices, the thread count that splits reductions) change the last bits of float results, and
training amplifies them. These tags say which of those a run had, so two runs that differ can be told apart by
what differed. They are MLflow tags of every trial and study run (`env.*`) and `environment.json` in the folder
`eeopt train` writes.

Torch is not imported here: a study's driver, which never trains, records versions from package metadata and
skips torch's thread counts and kernel level; a trial's process, which has torch loaded, records them all.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

__all__ = ["ENV_PREFIX", "environment"]

#: Prefix of the environment's MLflow tags.
ENV_PREFIX = "env."

# The instruction-set flags that decide which CPU kernels torch and NumPy run (the full flag list is hashed).
_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile",
               "asimd", "sve")


def environment(device: object | None = None, deterministic: bool | None = None) -> dict[str, str]:
    """String tags (`env.*`) of this process: Python, eeopt, torch, NumPy versions and eeopt's git commit, the CPU
    model and flags, and, where torch is loaded, its thread counts, CPU kernel level, CUDA version and the device
    (with its GPU name on CUDA); the run's determinism setting when given."""
    cpu_model, flags = _cpu()
    tags = {
        "python": platform.python_version(),
        "eeopt": _version("eeopt"),
        "git_commit": _git_commit(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "platform": platform.platform(terse=True),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "cpu_model": cpu_model,
        "cpu_count": str(os.cpu_count() or 0),
        "cpu_simd": ",".join(f for f in _SIMD_FLAGS if f in flags) or "unknown",
        "cpu_flags_sha1": hashlib.sha1(" ".join(sorted(flags)).encode()).hexdigest()[:12] if flags else "unknown",
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        tags["torch"] = torch.__version__
        tags["threads"] = str(torch.get_num_threads())
        tags["interop_threads"] = str(torch.get_num_interop_threads())
        tags["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
        tags["cuda"] = str(torch.version.cuda or "none")
        if device is not None:
            dev = torch.device(device)
            tags["device"] = str(dev)
            if dev.type == "cuda" and torch.cuda.is_available():
                tags["gpu"] = torch.cuda.get_device_name(dev)
                tags["cudnn"] = str(torch.backends.cudnn.version())
    elif device is not None:
        tags["device"] = str(device)
    if deterministic is not None:
        tags["deterministic"] = str(bool(deterministic)).lower()
    return {ENV_PREFIX + key: value for key, value in tags.items()}


@functools.lru_cache(maxsize=1)
def _cpu() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo where there is one, else what `platform` says."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


@functools.lru_cache(maxsize=None)
def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def _git_commit() -> str:
    """The commit of the eeopt source tree when it is a git checkout (with '+dirty' for uncommitted changes),
    else 'unknown' (an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return "unknown"
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "eeopt"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "") if head else "unknown"


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m eeopt.environment
    for key, value in environment(deterministic=None).items():
        sys.stdout.write(f"{key}: {value}\n")
