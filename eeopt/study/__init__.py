"""Studies: Optuna search (persistent storage) over training and exit policies, run by Ray Tune, in MLflow.

What the CLI and users need is here: `Study` (run, status, export, analysis, UI addresses), `list_studies`,
the `Reporter` that shows a running study's progress, and the addresses of a run's page in the MLflow UI
(`run_url`, and `DASHBOARD_LINK`, the path optuna-dashboard answers with a redirect to it).
"""

from eeopt.pipeline import TrialResult, evaluate_trial, run_trial  # the one trial pipeline, also `eeopt train`
from eeopt.study.progress import Reporter
from eeopt.study.runner import Study, StudySummary, list_studies
from eeopt.study.tracking import DASHBOARD_LINK, run_url

__all__ = ["DASHBOARD_LINK", "Reporter", "Study", "StudySummary", "TrialResult", "evaluate_trial", "list_studies",
           "run_trial", "run_url"]
