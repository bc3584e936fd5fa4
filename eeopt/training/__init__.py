"""Training multi-exit networks: `train(cfg) -> TrainResult` with exit outputs on val and test; losses; model files."""

from eeopt.training.loop import TrainResult, build_model_for, collect_exit_outputs, load_model, train
from eeopt.training.losses import (
    distillation_loss,
    exit_loss,
    exit_weights,
    failure_bce_loss,
    failure_loss,
    failure_ranking_loss,
    failure_tcp_loss,
)

__all__ = [
    "TrainResult",
    "build_model_for",
    "collect_exit_outputs",
    "distillation_loss",
    "exit_loss",
    "exit_weights",
    "failure_bce_loss",
    "failure_loss",
    "failure_ranking_loss",
    "failure_tcp_loss",
    "load_model",
    "train",
]
