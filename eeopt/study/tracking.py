"""MLflow bookkeeping for studies: one parent run per `eeopt study run`, one nested child run per trial.

Runs are created explicitly with `MlflowClient` (Ray's and Optuna's integrations do not nest). The driver creates
and closes runs; the trial (possibly on a Ray worker) logs its params, metrics and artifacts into the run id it is
given. Names: `{split}/exit{k}/{metric}`, `{split}/mean/{metric}`, `{split}/{efficiency metric}`; per-epoch curves
under `train/...` with `step` = epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from eeopt.study.storage import mask_url, translate_errors

MAX_PARAM_LENGTH = 500
_BATCH = 900  # MLflow accepts up to 1000 metrics per batch


def client(tracking_uri: str):
    """An `MlflowClient` for `tracking_uri` (imports mlflow lazily)."""
    import logging

    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(mlflow_client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (with `artifact_location`) when missing."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=artifact_location)


def params_from_config(config: Mapping[str, Any], sampled: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Flattened config (`training.lr` ...) as MLflow params, URLs masked, plus `sampled.<path>` for sampled ones."""
    from eeopt.config import flatten

    params = {}
    for key, value in flatten(dict(config)).items():
        text = mask_url(value) if isinstance(value, str) and "://" in value else value
        params[key] = str(text)[:MAX_PARAM_LENGTH]
    for key, value in (sampled or {}).items():
        params[f"sampled.{key}"] = str(value)[:MAX_PARAM_LENGTH]
    return params


def log_params(mlflow_client, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start : start + 100], synchronous=True)


def log_metrics(mlflow_client, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite and NaN metrics (MLflow stores NaN); skip None and infinities."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(key, float(value), now, step or 0)
        for key, value in metrics.items()
        if value is not None and not (isinstance(value, float) and math.isinf(value))
    ]
    for start in range(0, len(items), _BATCH):
        mlflow_client.log_batch(run_id, metrics=items[start : start + _BATCH], synchronous=True)


def log_artifacts(mlflow_client, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    for path in paths:
        if Path(path).exists():
            mlflow_client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def start_parent_run(mlflow_client, experiment_id: str, study_name: str, tags: Mapping[str, str]) -> str:
    run = mlflow_client.create_run(
        experiment_id, run_name=f"{study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"eeopt.study": study_name, "eeopt.role": "study", **tags},
    )
    return run.info.run_id


def start_child_run(mlflow_client, experiment_id: str, parent_run_id: str, study_name: str, trial_number: int,
                    tags: Mapping[str, str] | None = None) -> str:
    run = mlflow_client.create_run(
        experiment_id,
        run_name=f"trial-{trial_number}",
        tags={
            "mlflow.parentRunId": parent_run_id,
            "eeopt.study": study_name,
            "eeopt.role": "trial",
            "optuna.trial_number": str(trial_number),
            "eeopt.state": "RUNNING",
            **(tags or {}),
        },
    )
    return run.info.run_id


def finish_run(mlflow_client, run_id: str, state: str, error: str | None = None) -> None:
    """Close a run: `state` is COMPLETE, PRUNED, FAIL or KILLED (the Optuna view); MLflow's status follows."""
    status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}[state]
    mlflow_client.set_tag(run_id, "eeopt.state", state)
    if error:
        mlflow_client.set_tag(run_id, "eeopt.error", error[:4000])
    mlflow_client.set_terminated(run_id, status=status)


@dataclasses.dataclass(frozen=True)
class StudyRuns:
    """The MLflow side of one `eeopt study run`: its client, experiment and parent run; one child run per trial."""

    client: Any
    experiment_id: str
    parent_run_id: str
    study_name: str

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, artifact_root: str, study_name: str,
              tags: Mapping[str, str]) -> StudyRuns:
        """Create (or find) the experiment and open the parent run.

        Raises:
            StorageError: the tracking store cannot be used (the URI masked).
        """
        mlflow_client = client(tracking_uri)
        with translate_errors(tracking_uri, what="MLflow tracking store"):
            experiment_id = ensure_experiment(mlflow_client, experiment, artifact_root)
            parent = start_parent_run(mlflow_client, experiment_id, study_name, tags)
        return cls(mlflow_client, experiment_id, parent, study_name)

    def start_trial(self, trial_number: int, tags: Mapping[str, str] | None = None) -> str:
        """Open the child run of a trial; returns its run id."""
        return start_child_run(self.client, self.experiment_id, self.parent_run_id, self.study_name, trial_number,
                               tags=tags)

    def finish_trial(self, run_id: str, state: str, error: str | None = None) -> None:
        finish_run(self.client, run_id, state, error)

    def finish(self, state: str) -> None:
        """Close the parent run: COMPLETE, FAIL or KILLED."""
        finish_run(self.client, self.parent_run_id, state)
