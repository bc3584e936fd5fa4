"""The schema of a study file: the fixed train config, a search space over its dotted paths, and study settings."""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from eeopt.config.paths import first_error, set_path
from eeopt.config.train import Strict, TrainConfig
from eeopt.errors import ConfigError
from eeopt.names import check_objective


class FloatDistribution(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> FloatDistribution:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log")
        return self


class IntDistribution(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntDistribution:
        _check_range(self.low, self.high, self.log)
        return self


class CategoricalDistribution(Strict):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Distribution = Annotated[
    Union[FloatDistribution, IntDistribution, CategoricalDistribution], Field(discriminator="type")
]


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"empty range: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got {low}")


class ResourcesConfig(Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int = Field(2, ge=1)


class RayConfig(Strict):
    address: str | None = Field(
        None, description="None starts a local Ray; 'auto', 'host:port' or 'ray://host:port' joins a cluster"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (None: all)")
    storage_path: str | None = Field(
        None, description="where trials write checkpoints and exit outputs (Ray Tune's storage_path): a folder "
        "every node mounts at the same path, or a URI such as s3://bucket/runs; None: runs_dir (needed on a cluster)",
    )


class MlflowConfig(Strict):
    tracking_uri: str | None = Field(None, description="None: a local SQLite-backed store beside the study file")
    experiment: str | None = Field(None, description="None: the study name")


Direction = Literal["maximize", "minimize"]


class StudySettings(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    trials: int = Field(8, ge=1, description="total finished trials the study aims for, across reruns and workers")
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int = 0
    objective: str | None = Field(
        None, description="custom objective 'package.module:function'; the only thing in YAML that is ever imported"
    )
    objectives: dict[str, Direction] = Field(default_factory=lambda: {"val/acc_cost_auc": "maximize"}, min_length=1)
    storage: str | None = Field(None, description="SQLAlchemy URL; None: sqlite:///eeopt.db beside the study file")
    runs_dir: str | None = Field(None, description="trial outputs (models, exit outputs); None: runs/ beside the study file")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    max_failures: int = Field(3, ge=0)
    plots: bool = Field(True, description="each trial's four plots (PNG artifacts and MLflow images); false: none, "
                        "for sweeps of many short trials where the plots cost more than the trials")
    timeout: float | None = Field(None, gt=0, description="seconds; stop starting new trials after this")
    pruner: Literal["none", "asha", "median"] = "none"
    heartbeat_grace: float = Field(
        120.0, ge=1, description="seconds a running trial may stay silent before it counts as dead (its driver was "
        "killed): it is then failed and its slot taken by whichever worker of the study sees it first",
    )
    store_retry_s: float = Field(
        120.0, ge=0, description="seconds every store call (Optuna, MLflow, artifacts; driver and workers) keeps "
        "retrying while its store does not answer (a database or tracking server restarting): an outage shorter "
        "than this delays trials, never fails them",
    )

    @field_validator("objectives")
    @classmethod
    def _objective_names(cls, value: dict[str, str]) -> dict[str, str]:
        # Only the val/ prefix here: whether the names must be metrics depends on the objective, which a Python
        # caller may still pass to `Study.run`; the run checks them then (`eeopt.names.check_objective`).
        for key in value:
            check_objective(key, custom=True)
        return value

    @field_validator("objective")
    @classmethod
    def _objective_ref(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"objective must look like 'package.module:function', got {value!r}")
        return value


class StudyConfig(TrainConfig):
    """A study file: the fixed train config, a search space over its dotted paths, and study settings."""

    search_space: dict[str, Distribution] = Field(default_factory=dict)
    study: StudySettings

    def train_config(self, params: dict[str, Any] | None = None) -> TrainConfig:
        """The fixed config with sampled `params` ({dotted path: value}) applied and validated."""
        base = self.model_dump(exclude={"search_space", "study"})
        for path, value in (params or {}).items():
            set_path(base, path, value)
        try:
            return TrainConfig.model_validate(base)
        except ValidationError as exc:
            raise ConfigError(first_error("sampled parameters", exc)) from None

    @model_validator(mode="after")
    def _search_paths(self) -> StudyConfig:
        fixed = self.model_dump(exclude={"search_space", "study"})
        for path, dist in self.search_space.items():
            if path == "policy.cost":
                raise ValueError("search_space.policy.cost: every trial's objectives must be in one cost unit to be "
                                 "compared; set policy.cost (flops or latency) instead")
            values = dist.choices if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]
            for value in values:
                trial = copy.deepcopy(fixed)
                try:
                    set_path(trial, path, value, must_exist=True)
                    TrainConfig.model_validate(trial)
                except KeyError:
                    raise ValueError(f"search_space.{path}: no such config field") from None
                except ValidationError as exc:
                    err = exc.errors()[0]
                    msg = err["msg"].removeprefix("Value error, ")
                    raise ValueError(f"search_space.{path}: value {value!r} does not fit the field ({msg})") from None
        return self
