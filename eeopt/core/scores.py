"""Exit scores: the per-exit confidence a policy compares with its thresholds (higher = exit now).

A score function maps `ExitOutputs` to a float array [K, N]. Built-ins:

- ``msp``: maximum softmax probability;
- ``entropy``: negative entropy normalised by log C, in [-1, 0];
- ``margin``: top-1 minus top-2 probability;
- ``doctor``: the Gini score sum_c p_c^2 of DOCTOR (Granese et al., 2021). DOCTOR rejects when
  (1 - g) / g is large; that is a decreasing function of g, so g ranks samples identically;
- ``learned``: the outputs' own ``scores`` array (e.g. a failure-predictor head).

Sums over classes are order-free (`eeopt.core.outputs.row_sum`), so samples whose probabilities are the same up to a
permutation get exactly the same score. Add one with `register_score`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eeopt.errors import ExitOutputsError
from eeopt.core.outputs import ExitOutputs, row_sum
from eeopt.registry import Registry

ScoreFn = Callable[[ExitOutputs], np.ndarray]
SCORES: Registry[ScoreFn] = Registry("score")


def register_score(name: str) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: register `fn(outputs) -> [K, N]` under `name` (the name used in YAML, CLI and MLflow)."""
    return SCORES.register(name)


def list_scores() -> list[str]:
    return SCORES.names()


def create_score(name: str) -> ScoreFn:
    """The score function registered as `name`.

    Raises:
        UnknownNameError: no score has that name.
    """
    return SCORES.get(name)


def compute_score(name: str, outputs: ExitOutputs) -> np.ndarray:
    """The score `name` of every exit and sample, float64 [K, N].

    Raises:
        UnknownNameError: unknown score name.
        ExitOutputsError: ``learned`` on outputs without ``scores``, or a score of the wrong shape.
    """
    scores = np.asarray(create_score(name)(outputs), dtype=np.float64)
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
    return row_sum(plogp) / np.log(outputs.num_classes)


@register_score("margin")
def margin(outputs: ExitOutputs) -> np.ndarray:
    top2 = np.partition(outputs.probs, -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


@register_score("doctor")
def doctor(outputs: ExitOutputs) -> np.ndarray:
    return row_sum(np.square(outputs.probs))


@register_score("learned")
def learned(outputs: ExitOutputs) -> np.ndarray:
    if outputs.scores is None:
        raise ExitOutputsError(
            f"{outputs.source}: score 'learned' needs a 'scores' array (train with a failure head, or choose msp)"
        )
    return outputs.scores
