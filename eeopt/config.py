"""Config schema for `eeopt train` and `eeopt study run`, and the one way to load it.

A YAML file goes through `yaml.safe_load` -> `--set` overrides -> pydantic `model_validate` (unknown keys are errors).
Below this module code receives typed objects, never raw dicts. Every error becomes a one-line `ConfigError` that
names the file, the dotted field path and what was expected.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from eeopt.errors import ConfigError
from eeopt.names import check_objective


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------------------------------- train config
class DataConfig(_Strict):
    """Which dataset, where its files are, and how it is split (the test split is never used for fitting)."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    val_fraction: float = Field(0.1, gt=0, lt=1)
    train_subset: int | None = Field(None, ge=1, description="use at most this many training images (after the val split)")
    val_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1, description="report on the first N test images only")
    normalize: bool = True
    augment: bool = False
    image_size: int | None = Field(None, ge=4, description="resize images (imagefolder); None keeps the native size")


class FlopShares(_Strict):
    """Place exits at the blocks closest to these shares of the backbone's FLOPs (Shallow-Deep Networks)."""

    flops: list[Annotated[float, Field(gt=0, lt=1)]] = Field(min_length=1)


class ModelConfig(_Strict):
    backbone: str = "resnet20"
    width: int = Field(16, ge=1, description="channels of the first stage; later stages scale from it")
    exits: Any = Field("every_block", description="'every_block', block numbers [2, 4, 6], or {flops: [0.25, 0.5]}")
    head: Literal["linear", "sdn", "conv"] = "linear"
    cascade: bool = False
    failure_head: bool = False
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("exits", mode="before")
    @classmethod
    def _exits(cls, value: Any) -> Any:
        expected = "expected 'every_block', increasing block numbers >= 1 such as [2, 4, 6], or {flops: [0.25, 0.5]}"
        if value == "every_block":
            return value
        if isinstance(value, dict):
            try:
                return FlopShares.model_validate(value)
            except ValidationError as exc:
                raise ValueError(f"{expected}: {exc.errors()[0]['msg']}") from None
        if isinstance(value, FlopShares):
            return value
        if (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            and all(a < b for a, b in zip(value, value[1:]))
        ):
            return value
        raise ValueError(expected)


class TrainingConfig(_Strict):
    mode: Literal["joint", "frozen", "two_stage"] = "joint"
    epochs: int = Field(3, ge=0)
    backbone_epochs: int = Field(0, ge=0, description="frozen/two_stage: epochs of backbone-only training first")
    backbone_checkpoint: str | None = Field(None, description="frozen: load the backbone from this model.pt instead")
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    exit_weights: Literal["uniform", "linear", "sdn"] = "uniform"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    failure_loss: Literal["none", "bce", "tcp", "ranking"] = "none"
    failure_weight: float = Field(0.1, ge=0)
    distillation: float = Field(0.0, ge=0, description="weight of distilling the last exit into earlier ones")
    distill_temperature: float = Field(1.0, gt=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    threads: int | None = Field(None, ge=1, description="torch threads on CPU; None lets torch decide")
    deterministic: bool = True

    @model_validator(mode="after")
    def _modes(self) -> TrainingConfig:
        if self.failure_loss != "none" and self.failure_weight == 0:
            raise ValueError("failure_weight must be > 0 when failure_loss is set")
        if self.mode != "joint":
            if self.backbone_epochs == 0 and self.backbone_checkpoint is None:
                raise ValueError(
                    f"mode {self.mode} first trains the backbone; set training.backbone_epochs > 0 "
                    "or training.backbone_checkpoint to a model.pt of a previous run"
                )
            if self.backbone_epochs > 0 and self.backbone_checkpoint is not None:
                raise ValueError("set either training.backbone_epochs or training.backbone_checkpoint, not both")
        return self


class CalibrationConfig(_Strict):
    """The calibrator that drives the objective, and the ones reported beside it (each fitted on val)."""

    method: str = Field("none", description="none, or a registered calibrator: temperature, vector, histogram, isotonic")
    compare: list[str] = Field(
        default_factory=list,
        description="calibrators (and none) also evaluated on every trial, logged under calib/{name}/...",
    )

    @field_validator("compare")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a calibrator twice: {value}")
        return value


class PolicyConfig(_Strict):
    score: str = Field("msp", description="exit score: msp, entropy, margin, doctor, learned, or a registered one")
    trials: int = Field(300, ge=1, description="trials of the per-exit threshold search")
    sampler: Literal["nsga2", "tpe"] = "nsga2"
    seed: int = Field(0, description="seed of the per-exit threshold search (the same for every trial)")


class TrainConfig(_Strict):
    """Everything `eeopt train` needs; the fixed part of a study file."""

    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        t = self.training
        if t.failure_loss != "none" and not self.model.failure_head:
            raise ValueError(f"training.failure_loss: {t.failure_loss} trains failure heads; set model.failure_head: true")
        if self.policy.score == "learned" and not self.model.failure_head:
            raise ValueError("policy.score: 'learned' needs the scores of failure heads; set model.failure_head: true")
        return self


# --------------------------------------------------------------------------------------------------- study config
class FloatDistribution(_Strict):
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


class IntDistribution(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntDistribution:
        _check_range(self.low, self.high, self.log)
        return self


class CategoricalDistribution(_Strict):
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


class ResourcesConfig(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int = Field(2, ge=1)


class RayConfig(_Strict):
    address: str | None = Field(None, description="None starts a local Ray; 'auto' or 'ray://host:port' joins a cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (None: all)")


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(None, description="None: a local SQLite-backed store beside the study file")
    experiment: str | None = Field(None, description="None: the study name")


Direction = Literal["maximize", "minimize"]


class StudySettings(_Strict):
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
    timeout: float | None = Field(None, gt=0, description="seconds; stop starting new trials after this")
    pruner: Literal["none", "asha", "median"] = "none"

    @field_validator("objectives")
    @classmethod
    def _objective_names(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        custom = info.data.get("objective") is not None  # `objective` is declared (so validated) first
        for key in value:
            check_objective(key, custom=custom)
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
            _set_path(base, path, value)
        try:
            return TrainConfig.model_validate(base)
        except ValidationError as exc:
            raise ConfigError(_first_error("sampled parameters", exc)) from None

    @model_validator(mode="after")
    def _search_paths(self) -> StudyConfig:
        fixed = self.model_dump(exclude={"search_space", "study"})
        for path, dist in self.search_space.items():
            values = dist.choices if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]
            for value in values:
                trial = copy.deepcopy(fixed)
                try:
                    _set_path(trial, path, value, must_exist=True)
                    TrainConfig.model_validate(trial)
                except KeyError:
                    raise ValueError(f"search_space.{path}: no such config field") from None
                except ValidationError as exc:
                    err = exc.errors()[0]
                    msg = err["msg"].removeprefix("Value error, ")
                    raise ValueError(f"search_space.{path}: value {value!r} does not fit the field ({msg})") from None
        return self


# --------------------------------------------------------------------------------------------------- loading
def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, study: bool = False):
    """Read a YAML config (a study file when `study=True`), apply `key=value` overrides, validate.

    Raises:
        ConfigError: missing/unreadable file, bad YAML, bad override, or a field that fails validation; the message
            is one line starting with the file name and the dotted field path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(_read_text(path)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    raw = apply_overrides(raw, overrides)
    return validate_config(raw, source=str(path), study=study)


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A `TrainConfig` from a train file, or from the fixed part of a study file (search space and study ignored).

    Raises:
        ConfigError: as `load_config`.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(_read_text(path)) if path.is_file() else None
    except (yaml.YAMLError, ConfigError):
        raw = None  # load_config reports the error
    if isinstance(raw, dict) and ("study" in raw or "search_space" in raw):
        return load_config(path, overrides, study=True).train_config()
    return load_config(path, overrides)


def _read_text(path: Path) -> str:
    """A config file's text; a file that is not UTF-8 (or not readable) is a one-line `ConfigError`."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def validate_config(raw: dict[str, Any], *, source: str = "config", study: bool = False):
    """Validate a raw dict as a `TrainConfig` (or `StudyConfig`); errors as in `load_config`."""
    model = StudyConfig if study else TrainConfig
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_first_error(source, exc)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `dotted.path=value` overrides (values parsed as YAML: `1e-3`, `true`, `[2, 4]`) to a copy of `raw`."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_/][\w\-/]*)*", key):
            raise ConfigError(f"--set {item!r}: expected dotted.path=value, e.g. training.epochs=1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        try:
            _set_path(raw, key, value)
        except (KeyError, TypeError):
            raise ConfigError(f"--set {item!r}: {key} goes through a value that is not a section") from None
    return raw


def _set_path(tree: dict[str, Any], path: str, value: Any, must_exist: bool = False) -> None:
    """Set `tree[a][b][c] = value` for path 'a.b.c', creating sections as needed (or KeyError with must_exist)."""
    *parents, leaf = path.split(".")
    node = tree
    for part in parents:
        if not isinstance(node, dict):
            raise KeyError(path)
        if part not in node or node[part] is None:
            if must_exist:
                raise KeyError(path)
            node[part] = {}
        node = node[part]
    if not isinstance(node, dict) or (must_exist and leaf not in node):
        raise KeyError(path)
    node[leaf] = value


def _first_error(source: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = ".".join(str(part) for part in err["loc"] if not _is_union_tag(part))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "field required"
    got = ""
    if err["type"] not in ("missing", "extra_forbidden") and "input" in err and not isinstance(err["input"], dict):
        got = f" (got {err['input']!r})"
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    where = f"{loc}: " if loc else ""
    return f"{source}: {where}{msg}{got}{more}"


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the chosen union member in error locations ("literal['every_block']", "list[...]", "float"...).
    return isinstance(part, str) and (
        part in ("float", "int", "categorical") or "[" in part or part in ("FlopShares",) or part.startswith("function-")
    )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat
