"""What can be checked before a run starts, so a bad config fails in a second with one line, not minutes later.

`check_train_config` is what `eeopt train` and a study (before Ray starts, for every sampled choice) call;
`train` itself calls `check_output_dir` before loading anything. Messages name the source and the dotted field:
``config.yaml: model.exits: block 99 does not exist (tinyresnet has 5 blocks; use numbers 1..5)``.
"""

from __future__ import annotations

import os
from pathlib import Path

from eeopt.config import TrainConfig
from eeopt.data import check_dataset_files
from eeopt.errors import ConfigError, DataError
from eeopt.models import create_backbone, resolve_exit_blocks

# The input the backbone is built for to count its blocks when data.image_size is not set (no data is read, and
# the block count does not depend on the input).
PROBE_CHANNELS, PROBE_SIZE = 3, 32


def check_train_config(cfg: TrainConfig, source: str = "config") -> None:
    """Raise before anything runs when a registry name is unknown, the dataset's files are missing or
    `model.exits` names a block the backbone lacks. Messages start with `source` (a file name, "study file").

    Cheap: no data is read (`check_dataset_files` only looks for files) and no network runs.

    Raises:
        UnknownNameError: a dataset, backbone, score or calibrator that nobody registered.
        DataError: the dataset's files are not there (with data.download: true, fashion-mnist fetches them later).
        ConfigError: `model.exits` names a block the backbone does not have, or `model.backbone_kwargs` is bad.
    """
    try:
        _check_names(cfg)
        check_dataset_files(cfg.data)
        check_exit_blocks(cfg)
    except (ConfigError, DataError) as exc:
        raise type(exc)(f"{source}: {exc}") from None


def _check_names(cfg: TrainConfig) -> None:
    # imported here: calibration loads SciPy, which `train` does not need
    from eeopt.core.calibration import CALIBRATORS
    from eeopt.data.base import DATASETS
    from eeopt.models.registry import BACKBONES
    from eeopt.core.scores import SCORES

    checks = [
        ("data.name", cfg.data.name, DATASETS),
        ("model.backbone", cfg.model.backbone, BACKBONES),
        ("policy.score", cfg.policy.score, SCORES),
    ]
    if cfg.calibration.method != "none":
        checks.append(("calibration.method", cfg.calibration.method, CALIBRATORS))
    checks += [(f"calibration.compare.{i}", name, CALIBRATORS)
               for i, name in enumerate(cfg.calibration.compare) if name != "none"]
    for path, value, registry in checks:
        registry.get(value, where=path)


def check_exit_blocks(cfg: TrainConfig) -> None:
    """Block numbers in `model.exits` must be blocks of the backbone (the rules of `resolve_exit_blocks`).

    Builds the backbone without running it. 'every_block' always fits; FLOP shares (`{flops: [...]}`) always
    pick existing blocks, and placing them would mean counting FLOPs, so neither builds anything.

    Raises:
        ConfigError: a block the backbone does not have, or backbone settings its factory rejects.
    """
    model = cfg.model
    if not isinstance(model.exits, list):
        return
    size = cfg.data.image_size or PROBE_SIZE
    backbone = create_backbone(model.backbone, PROBE_CHANNELS, (size, size), model.width, **model.backbone_kwargs)
    resolve_exit_blocks(model.exits, backbone, (PROBE_CHANNELS, size, size), model.backbone)


def check_output_dir(output_dir: str | os.PathLike | None) -> Path | None:
    """`output_dir` as a Path (None stays None), once sure it is a folder or can become one.

    Raises:
        ConfigError: it, or a folder above it, exists and is not a directory.
    """
    if output_dir is None:
        return None
    out = Path(output_dir)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return out
    what = "" if existing == out else f"{existing} "
    raise ConfigError(f"--output-dir {out}: {what}exists and is not a directory")
