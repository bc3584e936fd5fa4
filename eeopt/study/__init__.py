"""Studies: Optuna search (persistent storage) over training and exit policies, run by Ray Tune, in MLflow."""

from eeopt.study.runner import Study, StudySummary, list_studies
from eeopt.pipeline import TrialResult, evaluate_trial, run_trial  # the one trial pipeline, also `eeopt train`

__all__ = ["Study", "StudySummary", "TrialResult", "evaluate_trial", "list_studies", "run_trial"]
