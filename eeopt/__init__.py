"""eeopt: optimise early-exit networks with failure prediction, not calibration, as the proxy for efficiency.

The package imports lazily: `import eeopt` is cheap, and torch, Ray and MLflow load only when a name that needs
them is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ExitOutputs": "eeopt.core.outputs",
    "EeoptError": "eeopt.errors",
    "ExitOutputsError": "eeopt.errors",
    "ConfigError": "eeopt.errors",
    "DataError": "eeopt.errors",
    "TrainingDiverged": "eeopt.errors",
    "StorageError": "eeopt.errors",
    "StudyError": "eeopt.errors",
    "AnalysisError": "eeopt.errors",
    "register_score": "eeopt.core.scores",
    "compute_score": "eeopt.core.scores",
    "list_scores": "eeopt.core.scores",
    "synthetic_exit_outputs": "eeopt.core.synthetic",
    "evaluate_exits": "eeopt.core.evaluation",
    "assess_model": "eeopt.assess",
    "analyze": "eeopt.analysis",
    "Point": "eeopt.analysis",
    "search_thresholds": "eeopt.core.search",
    "search_policies": "eeopt.core.search",
    "register_calibrator": "eeopt.core.calibration",
    "create_calibrator": "eeopt.core.calibration",
    "list_calibrators": "eeopt.core.calibration",
    "TrainConfig": "eeopt.config",
    "StudyConfig": "eeopt.config",
    "load_config": "eeopt.config",
    "load_train_config": "eeopt.config",
    "register_dataset": "eeopt.data",
    "load_dataset": "eeopt.data",
    "list_datasets": "eeopt.data",
    "register_backbone": "eeopt.models",
    "list_backbones": "eeopt.models",
    "build_model": ("eeopt.training", "build_model_for"),
    "train": "eeopt.training",
    "TrainResult": "eeopt.training",
    "PolicyFile": "eeopt.core.policy_file",
    "policy_from_search": "eeopt.core.policy_choice",
    "EarlyExitPredictor": "eeopt.inference",
    "profile_latency": "eeopt.inference",
    "Study": "eeopt.study",
    "run_trial": "eeopt.study",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'eeopt' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
