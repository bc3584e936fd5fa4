"""Files a training run writes: atomic writes, random-number-generator state, resumable checkpoints, model.pt.

Every file goes through `eeopt.files.atomic_write` (a temporary name in the same folder, then `os.replace`), so a
run killed mid-write leaves either the old file or the new one, never half of one. Everything is loaded with
`torch.load(weights_only=True)`: these files hold tensors, numbers, strings, lists and dicts only.
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from eeopt.config import TrainConfig
from eeopt.errors import ConfigError
from eeopt.files import atomic_write, atomic_write_bytes, atomic_write_text

MODEL_FORMAT = "eeopt.model/1"
CHECKPOINT_FORMAT = "eeopt.checkpoint/1"


# ------------------------------------------------------------------------------------------------ atomic writes
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path` atomically (`eeopt.files.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`obj` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    """`obj` as YAML (keys in their order), atomically."""
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def atomic_save_outputs(outputs, path: str | os.PathLike) -> Path:
    """`ExitOutputs.save` through a temporary file (`eeopt.files.atomic_write`)."""
    return atomic_write(path, outputs.save)


# ------------------------------------------------------------------------------------------------ RNG state
def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) and `generator` states, as weights_only-loadable values."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of `capture_rng_state`."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())


# ------------------------------------------------------------------------------------------------ checkpoints
def config_fingerprint(cfg: TrainConfig) -> str:
    """A `TrainConfig` as canonical JSON, minus the settings that do not change what is trained (device,
    threads): a checkpoint resumes only a run with the same fingerprint."""
    tree = cfg.model_dump(mode="json")
    tree["training"].pop("device", None)
    tree["training"].pop("threads", None)
    return json.dumps(tree, sort_keys=True)


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> Path:
    """Write a resumable training checkpoint (a dict of tensors, state dicts and plain values) atomically."""
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, **fields}, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` onto the CPU.

    Raises:
        ConfigError: the file is not a readable eeopt training checkpoint (delete it to start over).
    """
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(
            f"{path}: not a readable training checkpoint ({type(exc).__name__}); delete it to start over"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not an eeopt training checkpoint; delete it or use another --output-dir")
    return payload


def save_model_file(
    path: str | os.PathLike,
    model: torch.nn.Module,
    config: dict[str, Any],
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    costs: np.ndarray,
) -> Path:
    """Write model.pt: the weights (on the CPU) and everything `load_model` needs to rebuild the network."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return atomic_torch_save(
        {
            "format": MODEL_FORMAT,
            "state_dict": state,
            "config": config,
            "num_classes": int(num_classes),
            "in_channels": int(in_channels),
            "image_size": [int(s) for s in image_size],
            "costs": [float(c) for c in np.asarray(costs).reshape(-1)],
        },
        path,
    )


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a model.pt written by `save_model_file` (onto the CPU).

    Raises:
        ConfigError: the file is missing or is not a model.pt written by `eeopt train`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (expected a model.pt written by `eeopt train`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for foreign files
        raise ConfigError(f"{path}: not a readable eeopt model file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ConfigError(f"{path}: not an eeopt model file (expected a model.pt written by `eeopt train`)")
    return payload
