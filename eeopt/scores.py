"""Exit scores: the per-exit confidence a policy compares with its thresholds (higher = exit now).

A score function maps `ExitOutputs` to a float array [K, N]. Built-ins:

- ``msp``: maximum softmax probability;
- ``entropy``: negative entropy normalised by log C, in [-1, 0];
- ``margin``: top-1 minus top-2 probability;
- ``doctor``: the Gini score sum_c p_c^2 of DOCTOR (Granese et al., 2021). DOCTOR rejects when
  (1 - g) / g is large; that is a decreasing function of g, so g ranks samples identically;
- ``learned``: the outputs' own ``scores`` array (e.g. a failure-predictor head).

Add one with `register_score`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eeopt.errors import ExitOutputsError
from eeopt.outputs import ExitOutputs

ScoreFn = Callable[[ExitOutputs], np.ndarray]
_SCORES: dict[str, ScoreFn] = {}


def register_score(name: str) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: register `fn(outputs) -> [K, N]` under `name` (the name used in YAML, CLI and MLflow)."""

    def deco(fn: ScoreFn) -> ScoreFn:
        if name in _SCORES:
            raise ValueError(f"score {name!r} is already registered")
        _SCORES[name] = fn
        return fn

    return deco


def list_scores() -> list[str]:
    return sorted(_SCORES)


def compute_score(name: str, outputs: ExitOutputs) -> np.ndarray:
    """The score `name` of every exit and sample, float64 [K, N].

    Raises:
        ExitOutputsError: unknown score name, or ``learned`` on outputs without ``scores``.
    """
    try:
        fn = _SCORES[name]
    except KeyError:
        raise ExitOutputsError(f"unknown score {name!r} (choose from {', '.join(list_scores())})") from None
    scores = np.asarray(fn(outputs), dtype=np.float64)
    if scores.shape != (outputs.num_exits, outputs.num_samples):
        raise ExitOutputsError(f"score {name!r} returned shape {scores.shape}, expected [K, N]")
    return scores


@register_score("msp")
def msp(outputs: ExitOutputs) -> np.ndarray:
    return outputs.confidence


@register_score("entropy")
def negative_entropy(outputs: ExitOutputs) -> np.ndarray:
    p = outputs.probs
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return plogp.sum(axis=-1) / np.log(outputs.num_classes)


@register_score("margin")
def margin(outputs: ExitOutputs) -> np.ndarray:
    top2 = np.partition(outputs.probs, -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


@register_score("doctor")
def doctor(outputs: ExitOutputs) -> np.ndarray:
    return np.square(outputs.probs).sum(axis=-1)


@register_score("learned")
def learned(outputs: ExitOutputs) -> np.ndarray:
    if outputs.scores is None:
        raise ExitOutputsError(
            f"{outputs.source}: score 'learned' needs a 'scores' array (train with a failure head, or choose msp)"
        )
    return outputs.scores
