"""Training multi-exit networks: `train(cfg) -> TrainResult` with exit outputs on val and test; losses; model files.

Modules, in the order a run uses them: `checks` (before anything starts), `runtime` (process-wide settings),
`stages` (what each stage trains, on which loss), `epoch` (one epoch; running a model over a split), `loop`
(`train` itself), `checkpoint` and `model_files` (the files a run writes and reads), `losses` (pure functions).
"""

from eeopt.training.checks import check_train_config
from eeopt.training.epoch import collect_exit_outputs
from eeopt.training.loop import TrainResult, train
from eeopt.training.losses import (
    distillation_loss,
    exit_loss,
    exit_weights,
    failure_bce_loss,
    failure_loss,
    failure_ranking_loss,
    failure_tcp_loss,
)
from eeopt.training.model_files import build_model_for, load_backbone, load_model
from eeopt.training.runtime import configure_process

__all__ = [
    "TrainResult",
    "build_model_for",
    "check_train_config",
    "collect_exit_outputs",
    "configure_process",
    "distillation_loss",
    "exit_loss",
    "exit_weights",
    "failure_bce_loss",
    "failure_loss",
    "failure_ranking_loss",
    "failure_tcp_loss",
    "load_backbone",
    "load_model",
    "train",
]
