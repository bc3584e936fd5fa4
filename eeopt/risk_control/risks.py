"""Risks a certified policy controls: the per-sample loss of leaving at each exit, bounded in [0, 1].

A risk is the mean loss of a policy on data; a sample's loss depends only on the exit it leaves at, so every risk
is given by a table ``losses[k, n]`` (the loss of sample n if it leaves at exit k). The policy's risk on a split is
the mean of ``losses[exit_n, n]``.

- ``performance-gap``: 1 if exit k's prediction is wrong and the last exit's is right (the prediction gap to the
  full model of Jazbec et al., 2024: the signed gap correct[K-1] - correct[k] clipped at 0). Needs labels.
- ``consistency``: 1 if exit k predicts another class than the last exit. Reads no labels, so unlabelled calibration
  data works (give any labels in range, e.g. zeros).
- ``error``: exit k's 0-1 error (an absolute accuracy floor: accuracy >= 1 - epsilon). Needs labels.
- ``brier-gap``: exit k's Brier score minus the last exit's, halved (a Brier score lies in [0, 2]) and clipped to
  [0, 1]: the distribution-level gap of Jazbec et al. Needs labels.

Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from eeopt.errors import ConfigError
from eeopt.core.outputs import ExitOutputs

RISKS = ("performance-gap", "consistency", "error", "brier-gap")
#: Risks whose losses are 0 or 1 (the per-exit search optimises them through the accuracy evaluator).
BINARY_RISKS = ("performance-gap", "consistency", "error")
#: One line per risk, for help texts and reports: what a loss of 1 means and how it is bounded.
RISK_SUMMARY = {
    "performance-gap": "share of samples the policy gets wrong that the last exit gets right (0-1)",
    "consistency": "share of samples where the policy's prediction differs from the last exit's (0-1, no labels)",
    "error": "the policy's 0-1 error",
    "brier-gap": "Brier score minus the last exit's, halved and clipped to [0, 1]",
}


def check_risk(risk: str, where: str = "risk") -> str:
    """`risk` if it is a known risk name; raises `ConfigError` naming `where` otherwise."""
    if risk not in RISKS:
        raise ConfigError(f"{where}: unknown risk {risk!r} (known: {', '.join(RISKS)})")
    return risk


def exit_losses(risk: str, outputs: ExitOutputs) -> np.ndarray:
    """Loss of every sample at every exit, float64 [K, N] in [0, 1] (see the module docstring).

    Args:
        risk: one of `RISKS`.
        outputs: the (calibrated) exit outputs whose predictions the policy takes.

    Raises:
        ConfigError: an unknown risk.
    """
    check_risk(risk)
    if risk == "consistency":
        pred = outputs.predictions
        return (pred != pred[-1][None, :]).astype(np.float64)
    correct = outputs.correct
    if risk == "error":
        return (~correct).astype(np.float64)
    if risk == "performance-gap":
        return (~correct & correct[-1][None, :]).astype(np.float64)
    probs = outputs.probs  # [K, N, C]
    n = outputs.num_samples
    true_prob = probs[:, np.arange(n), outputs.labels]  # [K, N]
    brier = np.einsum("knc,knc->kn", probs, probs) - 2.0 * true_prob + 1.0  # sum_c (p_c - y_c)^2, in [0, 2]
    return np.clip((brier - brier[-1][None, :]) / 2.0, 0.0, 1.0)
