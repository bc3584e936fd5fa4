"""What every benchmark script shares: the machine description, the JSON result files `report.py` renders, progress
lines, and the trained model that `bench_search.py` and `bench_inference.py` measure.

Result files live in `benchmarks/results/NAME.json` (committed beside BENCHMARKS.md, so the report can be re-rendered
without rerunning anything). Each holds the exact command that reproduces it, the machine as it was when the
benchmark started (load average included) and the benchmark's own numbers under "results".

The trained model is cached under `benchmarks/cache/` (git-ignored), keyed by its config, so the two benchmarks that
use it train it once; delete the folder to retrain.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "cache"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"

_STARTED = time.perf_counter()


def progress(message: str) -> None:
    """One progress line on stderr, with the seconds since this script started (so a run never goes quiet)."""
    print(f"[{Path(sys.argv[0]).stem} {time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def command_line() -> str:
    """This process's command as a reader would type it from the repository root."""
    exe = Path(sys.executable)
    try:
        python = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else "python"
    except ValueError:
        python = "python"
    script = Path(sys.argv[0]).resolve()
    script = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return shlex.join([python, script, *sys.argv[1:]])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "hypervisor") if f in flags]
    except OSError:
        pass
    return []


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """The machine now: CPU model, cores, RAM, library versions, load average, and whether it looks idle.

    "Idle" means the 1-minute load average is below 0.5 (other processes use less than half a core); the load
    average counts this process's own work too once it has run for a while, so it is read at the start.
    """
    import numpy as np

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": cores,
        "usable_cores": usable,
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average": [round(v, 2) for v in load],
        "idle": bool(load[0] < 0.5),
        "nice": os.nice(0) if hasattr(os, "nice") else 0,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    return info


def write_result(name: str, results: dict[str, Any], machine: dict[str, Any], *, out: str | None = None) -> Path:
    """Write `benchmarks/results/NAME.json` (or `out`): command, machine, seconds since start, results."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": command_line(),
        "machine": machine,
        "seconds": round(time.perf_counter() - _STARTED, 1),
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    progress(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


# --------------------------------------------------------------------------------------------------- the model
#: The model both `bench_search.py` and `bench_inference.py` measure: the tiny ResNet (5 blocks, an exit after each)
#: on a Fashion-MNIST subset, trained for about a minute on 2 threads (NOTES.md: ~86 % at the last exit).
MODEL_CONFIG: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "fashion-mnist", "root": FASHION_ROOT, "train_subset": 20_000},
    "model": {"backbone": "tinyresnet", "width": 16, "exits": "every_block", "head": "linear"},
    "training": {"epochs": 2, "batch_size": 128, "optimizer": "adamw", "lr": 2e-3, "schedule": "cosine",
                 "exit_weights": "uniform", "device": "cpu", "threads": 2},
}


def trained_model(config: dict[str, Any] | None = None) -> Path:
    """The folder of the trained benchmark model (model.pt, val.npz, test.npz), training it on first use."""
    config = config or MODEL_CONFIG
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    folder = CACHE / f"model-{key}"
    if (folder / "model.pt").is_file() and (folder / "test.npz").is_file():
        progress(f"using the cached model {folder.relative_to(ROOT)}")
        return folder
    from eeopt.config import TrainConfig
    from eeopt.training import train

    cfg = TrainConfig.model_validate(config)
    progress(f"training the benchmark model into {folder.relative_to(ROOT)} "
             f"({cfg.data.train_subset} images, {cfg.training.epochs} epochs; about 1-2 minutes)")
    started = time.perf_counter()

    def on_epoch(epoch: int, row: dict[str, Any]) -> None:
        progress(f"  epoch {epoch} done: {json.dumps({k: v for k, v in row.items() if 'acc' in k})[:200]}")

    def on_batch(done: int, total: int) -> None:
        if done % 50 == 0:
            progress(f"  step {done}/{total}")

    folder.parent.mkdir(parents=True, exist_ok=True)
    train(cfg, output_dir=folder, progress=False, callback=on_epoch, on_batch=on_batch)
    (folder / "trained_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    progress(f"trained in {time.perf_counter() - started:.0f} s")
    return folder


def load_exit_outputs(folder: Path):
    """(val, test) `ExitOutputs` of a trained model folder."""
    from eeopt.core.outputs import ExitOutputs

    return ExitOutputs.load(folder / "val.npz"), ExitOutputs.load(folder / "test.npz")
