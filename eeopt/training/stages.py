"""How `training.mode` becomes stages, what each stage trains, the loss it minimises and its optimizer.

A training run is a list of stages, each with its own optimizer and learning-rate schedule:

| training.mode | stages                                                                                  |
| ------------- | --------------------------------------------------------------------------------------- |
| joint         | joint: every parameter, all exits' losses, `epochs` epochs                               |
| frozen        | backbone: backbone + final head on the last exit's CE, `backbone_epochs` epochs          |
|               | (or loaded from `backbone_checkpoint`), then heads: only the early exit heads and failure|
|               | heads for `epochs` epochs; backbone and final head stay bit-identical                    |
| two_stage     | backbone as above, then joint for `epochs` epochs                                        |

A pretrained backbone (`model.pretrained`, timm/torchvision) is a trained backbone without a classifier for these
classes: with no backbone epochs, frozen mode has no backbone stage and its heads stage trains the final head too
(the backbone stays bit-identical).

`joint` ignores `backbone_epochs` and `backbone_checkpoint` (so a study can search over the mode with them fixed).
Parameters a stage does not train get `requires_grad=False`, and the modules holding only such parameters stay in
eval mode, so their BatchNorm statistics do not move either.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from eeopt.config import TrainingConfig
from eeopt.errors import ConfigError
from eeopt.training.losses import distillation_loss, exit_loss, exit_weights, failure_loss

GROUPS = ("backbone", "final_head", "early_heads", "failure_heads")


# ------------------------------------------------------------------------------------------------ planning
@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of training: which parameter groups it updates, on which loss, for how many epochs."""

    name: str  # 'backbone', 'heads' or 'joint'
    epochs: int
    trains: tuple[str, ...]  # parameter groups the optimizer updates
    objective: str  # 'final': the last exit's CE only; 'exits': weighted exit CEs + failure + distillation losses


def plan_stages(tc: TrainingConfig, pretrained: bool = False) -> list[Stage]:
    """The stages of `training.mode`, without the ones that have no epochs; `pretrained`: the model's backbone
    comes with pretrained weights (`model.pretrained`).

    `TrainingConfig` guarantees frozen/two_stage have a way to get a trained backbone (epochs, a checkpoint, or
    pretrained weights).
    """
    if tc.mode == "joint":
        stages = [Stage("joint", tc.epochs, GROUPS, "exits")]
    else:
        stages = []
        if tc.backbone_checkpoint is None:
            stages.append(Stage("backbone", tc.backbone_epochs, ("backbone", "final_head"), "final"))
        if tc.mode == "frozen":
            # pretrained weights alone bring no final head for these classes: the heads stage trains it
            new_final = pretrained and tc.backbone_checkpoint is None and tc.backbone_epochs == 0
            stages.append(Stage("heads", tc.epochs, ("final_head",) * new_final + ("early_heads", "failure_heads"),
                                "exits"))
        else:
            stages.append(Stage("joint", tc.epochs, GROUPS, "exits"))
    return [stage for stage in stages if stage.epochs > 0]


def check_stages(stages: list[Stage], groups: dict[str, list[torch.nn.Parameter]], mode: str) -> None:
    """Raise `ConfigError` when a stage would train nothing (frozen mode on a model without early exits)."""
    for stage in stages:
        if not any(groups[name] for name in stage.trains):
            raise ConfigError(
                f"training.mode: {mode} trains {' and '.join(stage.trains)} in stage {stage.name}, "
                "but the model has none; would train nothing (add early exits in model.exits)"
            )


# ------------------------------------------------------------------------------------------------ loss
def stage_loss(forward, labels: torch.Tensor, stage: Stage, tc: TrainingConfig, progress: float) -> torch.Tensor:
    """The scalar a stage minimises; `progress` is the share of the stage done (for the sdn exit weights)."""
    logits = forward.logits
    if stage.objective == "final":
        return F.cross_entropy(logits[-1], labels, label_smoothing=tc.label_smoothing)
    # non_blocking: a blocking copy to a GPU waits for everything queued on it (a host sync every step)
    weights = exit_weights(tc.exit_weights, logits.shape[0], progress).to(logits.device, non_blocking=True)
    loss = exit_loss(logits, labels, weights, tc.label_smoothing)
    if tc.failure_loss != "none":
        loss = loss + tc.failure_weight * failure_loss(tc.failure_loss, forward.failure, logits, labels)
    if tc.distillation > 0:
        loss = loss + tc.distillation * distillation_loss(logits, tc.distill_temperature)
    return loss


# ------------------------------------------------------------------------------------------------ parameters
def check_parameter_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """`model.parameter_groups()`, asserted to partition the model's parameters into `GROUPS`."""
    groups = model.parameter_groups()
    assert set(groups) == set(GROUPS), f"parameter_groups() must return {GROUPS}, got {sorted(groups)}"
    ids = [id(p) for name in GROUPS for p in groups[name]]
    assert len(ids) == len(set(ids)), "parameter_groups() lists a parameter twice"
    assert set(ids) == {id(p) for p in model.parameters()}, "parameter_groups() must partition model.parameters()"
    return groups


def freeze_all_but(
    model: torch.nn.Module, groups: dict[str, list[torch.nn.Parameter]], stage: Stage
) -> tuple[list[torch.nn.Parameter], set[int]]:
    """Let only `stage`'s groups have gradients; returns (its trainable parameters, the ids of the frozen ones)."""
    trainable = [p for name in stage.trains for p in groups[name]]
    trainable_ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    return trainable, {id(p) for p in model.parameters()} - trainable_ids


def modules_within(model: torch.nn.Module, params: set[int]) -> list[torch.nn.Module]:
    """The largest submodules whose parameters (at least one) all have their id in `params`, in model order."""
    chosen: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if any(prefix == "" or name.startswith(prefix + ".") for prefix, _ in chosen):
            continue
        own = list(module.parameters())
        if own and all(id(p) in params for p in own):
            chosen.append((name, module))
    return [module for _, module in chosen]


def set_train_mode(model: torch.nn.Module, frozen: set[int]) -> None:
    """Train mode, except modules holding only frozen parameters (their BatchNorm statistics must not move)."""
    model.train()
    for module in modules_within(model, frozen):
        module.eval()


# ------------------------------------------------------------------------------------------------ optimisation
def make_optimizer(params: list[torch.nn.Parameter], tc: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum); weight decay on weight matrices and kernels only, not biases or norms."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr)
    return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, nesterov=tc.momentum > 0)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` of `schedule` over a stage of `total_steps` steps; call `.step()` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, schedule, total_steps=total_steps)
    )


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at `step` of a stage of `total_steps` steps (updated every step).

    cosine: from 1 down to 0 at the end of the stage; step: x0.1 at 50 % and again at 75 %; constant: 1.
    """
    t = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01
    return 1.0
