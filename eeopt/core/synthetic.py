"""Synthetic exit outputs that look like a real multi-exit network's: later exits cost more and predict better.

Used by `eeopt exits synthesize`, the tests and the benchmarks, so that nothing needs a trained model to try the core.
"""

from __future__ import annotations

import numpy as np

from eeopt.core.outputs import ExitOutputs


def synthetic_exit_outputs(
    num_exits: int = 4,
    num_samples: int = 2000,
    num_classes: int = 10,
    seed: int = 0,
    with_scores: bool = False,
) -> ExitOutputs:
    """Exit outputs whose exits see a shared per-sample difficulty through growing signal strength.

    Each sample has a latent difficulty; exit k's logits are noise plus a true-class bump that grows with k and
    shrinks with the difficulty, so exits agree on easy samples (as real early-exit networks do) and accuracy rises
    with depth. Costs grow linearly from 1/K to 1 of a nominal 1e6 FLOPs.
    """
    rng = np.random.default_rng(seed)
    k, n, c = num_exits, num_samples, num_classes
    labels = rng.integers(0, c, size=n)
    difficulty = rng.gamma(shape=2.0, scale=0.5, size=n)
    strength = np.linspace(1.0, 3.5, k)[:, None] / (0.5 + difficulty[None, :])
    shared = rng.normal(size=(n, c))
    logits = 0.6 * shared[None] + 0.8 * rng.normal(size=(k, n, c))
    logits[:, np.arange(n), labels] += 2.0 * strength
    logits *= np.linspace(1.3, 2.0, k)[:, None, None]  # later exits more confident
    costs = 1e6 * np.arange(1, k + 1) / k
    scores = None
    if with_scores:
        correct = logits.argmax(-1) == labels[None]
        scores = correct + rng.normal(scale=0.8, size=(k, n))
    return ExitOutputs(logits.astype(np.float32), labels, costs, scores=scores, source=f"synthetic(seed={seed})")
