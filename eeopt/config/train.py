"""The schema of a train file (and of a study file's fixed part): data, model, training, calibration, policy."""

from __future__ import annotations

import contextvars
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Set while a TrainConfig validates: whether its model has a pretrained backbone, which is a trained backbone as
# much as `backbone_checkpoint` is (TrainingConfig alone cannot see the model section).
_PRETRAINED_BACKBONE: contextvars.ContextVar[bool] = contextvars.ContextVar("_PRETRAINED_BACKBONE", default=False)


class Strict(BaseModel):
    """Unknown keys are errors; defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataConfig(Strict):
    """Which dataset, where its files are, and how it is split (the test split is never used for fitting)."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    val_fraction: float = Field(0.1, gt=0, lt=1)
    train_subset: int | None = Field(None, ge=1, description="use at most this many training images (after the val split)")
    val_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1, description="report on the first N test images only")
    normalize: bool = True
    augment: Literal["none", "cifar", "imagenet"] | bool = Field(
        False,
        description="training augmentation: none, cifar (pad-4 random crop + flip), imagenet (random-resized crop + "
        "flip; resize + center crop for evaluation); true/false as before: cifar-style crop + flip / none",
    )
    image_size: int | None = Field(None, ge=4, description="resize images; None keeps the native size (or the model's)")
    stream: bool | None = Field(
        None, description="stream batches through a DataLoader (true), hold the splits in memory (false), or "
        "choose by size (None)")
    workers: int | None = Field(
        None, ge=0, description="DataLoader worker processes when streaming; None: from the CPUs the trial has")
    normalization: Literal["train", "pretrained"] | None = Field(
        None, description="mean/std from the train split, or the pretrained family's statistics; None: pretrained "
        "for a pretrained backbone, else train")


class FlopShares(Strict):
    """Place exits at the blocks closest to these shares of the backbone's FLOPs (Shallow-Deep Networks)."""

    flops: list[Annotated[float, Field(gt=0, lt=1)]] = Field(min_length=1)


class ModelConfig(Strict):
    backbone: str = "resnet20"
    width: int = Field(16, ge=1, description="channels of the first stage; later stages scale from it")
    exits: Any = Field("every_block", description="'every_block', block numbers [2, 4, 6], or {flops: [0.25, 0.5]}")
    head: Literal["linear", "sdn", "conv", "msdnet"] | None = Field(
        None, description="exit head: linear, sdn, conv or msdnet; None: the family's own (msdnet for MSDNet, "
        "linear otherwise)")
    cascade: bool = False
    failure_head: bool = False
    pretrained: bool | str = Field(
        False, description="timm/torchvision backbones: true loads the library's cached weights, a path a state dict")
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

    @model_validator(mode="after")
    def _family_head(self) -> ModelConfig:
        if self.head is None:  # the family's own classifier: MSDNet's for MSDNet, a linear head otherwise
            self.head = "msdnet" if self.backbone == "msdnet" else "linear"
        return self


class TrainingConfig(Strict):
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
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision of training steps (fp16 with a gradient scaler); evaluation and exit "
        "outputs stay float32")
    compile: bool = Field(False, description="torch.compile the model for training")
    check_every: int = Field(
        50, ge=1, description="steps between NaN/inf checks of the loss (each check waits for the device)")

    @model_validator(mode="after")
    def _modes(self) -> TrainingConfig:
        if self.failure_loss != "none" and self.failure_weight == 0:
            raise ValueError("failure_weight must be > 0 when failure_loss is set")
        if self.mode != "joint":
            if self.backbone_epochs == 0 and self.backbone_checkpoint is None and not _PRETRAINED_BACKBONE.get():
                raise ValueError(
                    f"mode {self.mode} first trains the backbone; set training.backbone_epochs > 0 "
                    "or training.backbone_checkpoint to a model.pt of a previous run"
                )
            if self.backbone_epochs > 0 and self.backbone_checkpoint is not None:
                raise ValueError("set either training.backbone_epochs or training.backbone_checkpoint, not both")
        return self


class CalibrationConfig(Strict):
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


class RiskControlConfig(Strict):
    """A certified policy per trial (`eeopt.risk_control`): risk <= epsilon with probability >= 1 - delta (crc: in
    expectation) on new data like val. `calibration_share` of val is kept apart: the trial's calibrator, threshold
    search and val metrics use the rest, and the certificate is computed on this share alone."""

    risk: Literal["performance-gap", "consistency", "error", "brier-gap"] = "performance-gap"
    epsilon: float = Field(..., ge=0, lt=1, description="the risk level the policy must keep")
    delta: float = Field(0.1, gt=0, lt=1, description="the allowed probability that the promise fails")
    method: Literal["ltt", "ucb-wsr", "crc"] = "ltt"
    per_exit: bool = Field(False, description="per-exit thresholds by Pareto Testing (searched on the rest of val, "
                           "tested on the held-out share) instead of one shared threshold")
    calibration_share: float = Field(0.5, gt=0, lt=1, description="the share of val that certifies, seen by nothing "
                                     "else in the trial")


class PolicyConfig(Strict):
    """How exit policies are scored, searched and costed.

    `cost` is the cost every efficiency metric (acc_cost_auc, acc_at_50, mean_cost_at_50, ...) and every budget
    uses: the counted FLOPs, or the latency measured on the trained model (`eeopt.inference.profile_latency`: on
    the device training used, `latency_batch_size` samples a batch, the median of `latency_repeats` runs after
    `latency_warmup`, divided by the batch size: milliseconds per sample).
    """

    score: str = Field("msp", description="exit score: msp, entropy, margin, doctor, learned, or a registered one")
    trials: int = Field(300, ge=1, description="trials of the per-exit threshold search")
    sampler: Literal["nsga2", "tpe"] = "nsga2"
    seed: int = Field(0, description="seed of the per-exit threshold search (the same for every trial)")
    cost: Literal["flops", "latency"] = Field(
        "flops", description="cost of an exit for budgets and efficiency metrics: counted FLOPs or measured latency")
    measure_latency: bool = Field(
        False, description="with cost: flops, also measure latency (both costs logged); cost: latency always does")
    latency_batch_size: int = Field(1, ge=1, description="samples per timed batch when measuring latency")
    latency_repeats: int = Field(20, ge=1, description="timed runs per latency measurement (the median is used)")
    latency_warmup: int = Field(3, ge=0, description="untimed runs before the timed ones")
    risk_control: RiskControlConfig | None = Field(
        None, description="certify each trial's policy on a held-out share of val (val/ and test/certified/... "
        "metrics, policies/certified.json)")

    @property
    def measures_latency(self) -> bool:
        """Whether a trained model's latency is measured (cost: latency, or measure_latency)."""
        return self.cost == "latency" or self.measure_latency

    @property
    def cost_unit(self) -> str:
        """The unit of the efficiency metrics: "flops" or "latency_ms" (`eeopt.names.COST_UNITS`)."""
        return "latency_ms" if self.cost == "latency" else "flops"


class TrainConfig(Strict):
    """Everything `eeopt train` needs; the fixed part of a study file."""

    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)

    @model_validator(mode="wrap")
    @classmethod
    def _pretrained(cls, data: Any, handler: Any) -> TrainConfig:
        """A pretrained backbone defaults to `training.mode: frozen` with no backbone epochs (heads trained on a
        bit-identical backbone, as the literature does); an explicit mode wins."""
        model = data.get("model") if isinstance(data, dict) else None
        pretrained = isinstance(model, dict) and model.get("pretrained") not in (None, False)
        if pretrained and isinstance(data.get("training", {}), dict) and "mode" not in data.get("training", {}):
            data = {**data, "training": {**data.get("training", {}), "mode": "frozen"}}
        token = _PRETRAINED_BACKBONE.set(pretrained)
        try:
            return handler(data)
        finally:
            _PRETRAINED_BACKBONE.reset(token)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        t = self.training
        if t.failure_loss != "none" and not self.model.failure_head:
            raise ValueError(f"training.failure_loss: {t.failure_loss} trains failure heads; set model.failure_head: true")
        if self.policy.score == "learned" and not self.model.failure_head:
            raise ValueError("policy.score: 'learned' needs the scores of failure heads; set model.failure_head: true")
        return self
