"""Config schema for `eeopt train` and `eeopt study run`, and the one way to load it.

A YAML file goes through `yaml.safe_load` -> `--set` overrides -> pydantic `model_validate` (unknown keys are errors).
Below this module code receives typed objects, never raw dicts. Every error becomes a one-line `ConfigError` that
names the file, the dotted field path and what was expected.
"""

from eeopt.config.loading import apply_overrides, load_config, load_train_config, validate_config
from eeopt.config.paths import flatten
from eeopt.config.study import (
    CategoricalDistribution,
    Distribution,
    FloatDistribution,
    IntDistribution,
    MlflowConfig,
    RayConfig,
    ResourcesConfig,
    StudyConfig,
    StudySettings,
)
from eeopt.config.train import (
    CalibrationConfig,
    DataConfig,
    FlopShares,
    ModelConfig,
    PolicyConfig,
    TrainConfig,
    TrainingConfig,
)

__all__ = [
    "CalibrationConfig",
    "CategoricalDistribution",
    "DataConfig",
    "Distribution",
    "FloatDistribution",
    "FlopShares",
    "IntDistribution",
    "MlflowConfig",
    "ModelConfig",
    "PolicyConfig",
    "RayConfig",
    "ResourcesConfig",
    "StudyConfig",
    "StudySettings",
    "TrainConfig",
    "TrainingConfig",
    "apply_overrides",
    "flatten",
    "load_config",
    "load_train_config",
    "validate_config",
]
