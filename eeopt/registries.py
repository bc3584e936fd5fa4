"""Check the registry names a config uses (dataset, backbone, calibrator, score) before anything runs."""

from __future__ import annotations

from eeopt.config import TrainConfig
from eeopt.errors import ConfigError


def check_train_config(cfg: TrainConfig, source: str = "config") -> None:
    """Raise `ConfigError` naming the field when a name is not registered. Imports torch (models, data)."""
    from eeopt.calibration import list_calibrators
    from eeopt.data import list_datasets
    from eeopt.models import list_backbones
    from eeopt.scores import list_scores

    checks = [
        ("data.name", cfg.data.name, list_datasets()),
        ("model.backbone", cfg.model.backbone, list_backbones()),
        ("calibration.method", cfg.calibration.method, ["none", *list_calibrators()]),
        ("policy.score", cfg.policy.score, list_scores()),
    ]
    for path, value, known in checks:
        if value not in known:
            raise ConfigError(f"{source}: {path}: unknown {value!r} (choose from {', '.join(known)})")
