"""Check the registry names a config uses (dataset, backbone, calibrator, score) before anything runs."""

from __future__ import annotations

from eeopt.config import TrainConfig


def check_train_config(cfg: TrainConfig, source: str = "config") -> None:
    """Raise `UnknownNameError` naming the field when a name is not registered. Imports torch (models, data)."""
    from eeopt.calibration import CALIBRATORS
    from eeopt.data.base import DATASETS
    from eeopt.models.registry import BACKBONES
    from eeopt.scores import SCORES

    checks = [
        ("data.name", cfg.data.name, DATASETS),
        ("model.backbone", cfg.model.backbone, BACKBONES),
        ("policy.score", cfg.policy.score, SCORES),
    ]
    if cfg.calibration.method != "none":
        checks.append(("calibration.method", cfg.calibration.method, CALIBRATORS))
    for path, value, registry in checks:
        registry.get(value, where=f"{source}: {path}")
