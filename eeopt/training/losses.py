"""Training losses of a multi-exit network: pure functions on tensors.

Shapes: K exits, B samples in the batch, C classes. `logits` is [K, B, C] (exits in forward order, the last is the
final head), `labels` is [B] int64, failure-head logits `f` are [K, B] (raw, before the sigmoid; higher = "this
exit's prediction is correct").

Failure losses train the failure heads only through `f`: their targets (is exit k correct? what probability does it
give the true class?) are computed from detached logits, so they never pull the classifiers towards being easy to
predict. Whether they shape the backbone features is the models package's decision (it builds the failure heads'
inputs); here nothing else is detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EXIT_WEIGHTS = ("uniform", "linear", "sdn")
FAILURE_LOSSES = ("none", "bce", "tcp", "ranking")

# Shallow-Deep Networks start every internal classifier's weight here and ramp it up during training.
SDN_START_WEIGHT = 0.01


def exit_weights(kind: str, num_exits: int, progress: float = 1.0) -> torch.Tensor:
    """Weight of each exit's loss, float32 [K]; exit k = 1..K.

    - ``uniform``: every exit 1.
    - ``linear``: k / K, so deeper exits count more and the final exit counts 1.
    - ``sdn`` (Shallow-Deep Networks, Kaya et al. 2019): each early exit's weight ramps linearly from 0.01 at the
      start of training (``progress`` 0) to its final value k / K at the end (``progress`` 1); the final exit is
      always 1. Early in training the internal classifiers barely pull on the (still random) shared features.

    `progress` is the share of the training stage done, in [0, 1] (clamped); only ``sdn`` depends on it.
    """
    assert num_exits >= 1, f"need at least one exit, got {num_exits}"
    depth = torch.arange(1, num_exits + 1, dtype=torch.float32) / num_exits
    if kind == "uniform":
        return torch.ones(num_exits)
    if kind == "linear":
        return depth
    if kind == "sdn":
        t = min(max(float(progress), 0.0), 1.0)
        weights = SDN_START_WEIGHT + (depth - SDN_START_WEIGHT) * t
        weights[-1] = 1.0
        return weights
    raise ValueError(f"unknown exit weighting {kind!r}; expected one of {', '.join(EXIT_WEIGHTS)}")


def exit_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Weighted mean of the exits' cross-entropies: sum_k w_k CE_k / sum_k w_k (a scalar).

    `weights` [K] (non-negative, not all zero); CE_k is the batch-mean cross-entropy of exit k with label smoothing.
    """
    k, b, c = logits.shape
    assert labels.shape == (b,), f"labels must be [B] = ({b},), got {tuple(labels.shape)}"
    assert weights.shape == (k,), f"weights must be [K] = ({k},), got {tuple(weights.shape)}"
    per_exit = per_exit_cross_entropy(logits, labels, label_smoothing)
    weights = weights.to(per_exit.device, per_exit.dtype)
    return (weights * per_exit).sum() / weights.sum()


def per_exit_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Batch-mean cross-entropy of each exit, [K]."""
    k, b, c = logits.shape
    ce = F.cross_entropy(
        logits.reshape(k * b, c), labels.repeat(k), label_smoothing=label_smoothing, reduction="none"
    )
    return ce.view(k, b).mean(dim=1)


# ------------------------------------------------------------------------------------------------ failure heads
def failure_bce_loss(failure: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the failure logits [K, B] against "exit k predicts sample b correctly"."""
    correct = _correct(logits, labels).to(failure.dtype)
    return F.binary_cross_entropy_with_logits(failure, correct)


def failure_tcp_loss(failure: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ConfidNet (Corbière et al. 2019): mean squared error between sigmoid(f) and the exit's (detached)
    true-class probability softmax(logits_k)[y]."""
    with torch.no_grad():
        probs = logits.detach().float().softmax(dim=-1)
        true_class = probs.gather(-1, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
    return F.mse_loss(torch.sigmoid(failure), true_class.to(failure.dtype))


def failure_ranking_loss(
    failure: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Pairwise AUROC surrogate within the batch, per exit.

    For exit k, every pair (i correct, j wrong) costs softplus(margin - (f_ki - f_kj)); exit k's loss is the mean
    over its pairs, 0 when the batch has no such pair (all right or all wrong at that exit). The result is the mean
    over the K exits. Vectorised over [K, B, B] pairs.
    """
    correct = _correct(logits, labels)  # [K, B]
    pairs = correct[:, :, None] & ~correct[:, None, :]  # [K, i, j]: i correct, j wrong
    diff = failure[:, :, None] - failure[:, None, :]
    losses = F.softplus(margin - diff) * pairs
    counts = pairs.sum(dim=(1, 2))
    per_exit = losses.sum(dim=(1, 2)) / counts.clamp(min=1)
    return per_exit.mean()


_FAILURE = {"bce": failure_bce_loss, "tcp": failure_tcp_loss, "ranking": failure_ranking_loss}


def failure_loss(kind: str, failure: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Dispatch on `training.failure_loss` ('bce', 'tcp', 'ranking')."""
    if kind not in _FAILURE:
        raise ValueError(f"unknown failure loss {kind!r}; expected one of {', '.join(_FAILURE)}")
    assert failure.shape == logits.shape[:2], (
        f"failure logits must be [K, B] = {tuple(logits.shape[:2])}, got {tuple(failure.shape)}"
    )
    return _FAILURE[kind](failure, logits, labels)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.detach().argmax(dim=-1) == labels.view(1, -1)


# ------------------------------------------------------------------------------------------------ distillation
def distillation_loss(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Self-distillation from the last exit into each earlier one (a scalar; 0 with a single exit).

    Mean over the early exits k < K of KL(p_K || p_k) with both softened by `temperature` T, the teacher p_K
    detached, scaled by T^2 so the gradient size does not depend on T (Hinton et al. 2015).
    """
    k = logits.shape[0]
    if k < 2:
        return logits.sum() * 0.0
    t = float(temperature)
    teacher = F.log_softmax(logits[-1].detach() / t, dim=-1)  # [B, C]
    students = F.log_softmax(logits[:-1] / t, dim=-1)  # [K-1, B, C]
    kl = (teacher.exp() * (teacher - students)).sum(dim=-1)  # [K-1, B]
    return kl.mean() * t * t

