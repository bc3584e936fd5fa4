"""Studies: Optuna search (persistent storage) over training and exit policies, run by Ray Tune, in MLflow.

What the CLI and users need is here: `Study` (run, status, export, analysis, UI addresses), `list_studies`,
the `Reporter` that shows a running study's progress, and the addresses of a run's page in the MLflow UI
(`run_url`, and `DASHBOARD_LINK`, the path optuna-dashboard answers with a redirect to it).

The names are imported when first used (PEP 562): a Ray worker that imports `eeopt.study.worker` then loads the
worker's own modules, not the driver's (Optuna, the runner, the live view).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "Study": "eeopt.study.runner", "StudySummary": "eeopt.study.runner", "list_studies": "eeopt.study.runner",
    "Reporter": "eeopt.study.progress",
    "DASHBOARD_LINK": "eeopt.study.tracking", "run_url": "eeopt.study.tracking",
    # the one trial pipeline, also `eeopt train`
    "TrialResult": "eeopt.pipeline", "evaluate_trial": "eeopt.pipeline", "run_trial": "eeopt.pipeline",
}

__all__ = ["DASHBOARD_LINK", "Reporter", "Study", "StudySummary", "TrialResult", "evaluate_trial", "list_studies",
           "run_trial", "run_url"]

if TYPE_CHECKING:
    from eeopt.pipeline import TrialResult, evaluate_trial, run_trial
    from eeopt.study.progress import Reporter
    from eeopt.study.runner import Study, StudySummary, list_studies
    from eeopt.study.tracking import DASHBOARD_LINK, run_url


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'eeopt.study' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
