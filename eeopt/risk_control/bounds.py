"""Tests of "the risk is above epsilon" from n bounded losses: Hoeffding-Bentkus p-values and the Waudby-Smith-Ramdas
(WSR) betting bound, vectorised over candidate policies.

- `hb_p_value`: the p-value of H0: R > epsilon from the mean loss (Bates et al., 2021; Angelopoulos et al.,
  "Learn then Test", 2021): the smaller of Hoeffding's exp(-n h(min(r, eps), eps)), h the Bernoulli KL divergence,
  and Bentkus' e * P(Binomial(n, eps) <= ceil(n r)). Valid for any losses in [0, 1].
- `wsr_log_capital` / `wsr_bound`: the capital of a bettor who bets, sample by sample, that the mean is below mu
  (Waudby-Smith & Ramdas, 2024, with the predictable plug-in bets of their hedged capital process). By Ville's
  inequality the capital exceeds 1/delta with probability <= delta when the mean is >= mu, so
  ``max_t log K_t(mu) >= log(1/delta)`` rejects "mean >= mu", and the upper confidence bound is the smallest such mu.
  The capital reads the losses in the order given (the calibration data's order; exchangeable data makes any fixed
  order valid).

Pure NumPy/SciPy.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import xlogy
from scipy.stats import binom

#: Bisection steps of `wsr_bound`: the bound is within 2^-60 of the exact root.
_BISECTION_STEPS = 60


def hb_p_value(loss_sum, n: int, epsilon: float) -> np.ndarray:
    """Hoeffding-Bentkus p-values [M] of H0: risk > epsilon, from each candidate's summed loss [M] over n samples.

    Args:
        loss_sum: [M] sums of losses in [0, 1] (for 0-1 losses the number of losses).
        n: number of samples (>= 1).
        epsilon: the risk level, in [0, 1). At 0 every p-value is 1 (no finite sample certifies a zero risk).
    """
    total = np.asarray(loss_sum, dtype=np.float64)
    if epsilon <= 0:
        return np.ones_like(total)
    r = np.clip(total / n, 0.0, 1.0)
    a = np.minimum(r, epsilon)
    kl = xlogy(a, a / epsilon) + xlogy(1.0 - a, (1.0 - a) / (1.0 - epsilon))
    hoeffding = np.exp(-n * kl)
    # ceil of the summed loss, not of n * (sum / n), which can round one above an integer
    bentkus = math.e * binom.cdf(np.ceil(total - 1e-9 * np.maximum(total, 1.0)), n, epsilon)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def wsr_bets(losses: np.ndarray, delta: float) -> np.ndarray:
    """Predictable bets nu [M, n] of the WSR capital: min(1, sqrt(2 log(1/delta) / (n var_{t-1}))), where var_t is
    the running variance around the running mean, both shrunk towards 1/2 and 1/4 (var_0 = 1/4)."""
    x = np.asarray(losses, dtype=np.float64)
    n = x.shape[-1]
    t1 = np.arange(2, n + 2, dtype=np.float64)  # t + 1
    dev = np.cumsum(x, axis=-1)
    dev += 0.5
    dev /= t1
    np.subtract(x, dev, out=dev)
    dev *= dev  # (x_t - mean_t)^2
    var = np.empty_like(dev)  # var_{t-1}: 1/4 at t = 1
    var[..., 0] = 0.25
    np.cumsum(dev[..., :-1], axis=-1, out=var[..., 1:])
    var[..., 1:] += 0.25
    var[..., 1:] /= t1[:-1]
    # nu = min(1, sqrt(2 log(1/delta) / (n var)))
    np.divide(2.0 * math.log(1.0 / delta) / n, var, out=var)
    np.sqrt(var, out=var)
    return np.minimum(var, 1.0, out=var)


def wsr_log_capital(losses: np.ndarray, mu, delta: float, bets: np.ndarray | None = None) -> np.ndarray:
    """max_t log K_t(mu) [M] of the bettor against "mean >= mu", for losses [M, n] in [0, 1] and mu [M] (or one)."""
    x = np.asarray(losses, dtype=np.float64)
    nu = wsr_bets(x, delta) if bets is None else bets
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim:
        mu = mu[..., None]
    steps = x - mu
    steps *= nu
    np.subtract(1.0, steps, out=steps)
    np.maximum(steps, 0.0, out=steps)
    with np.errstate(divide="ignore"):
        np.log(steps, out=steps)
    np.cumsum(steps, axis=-1, out=steps)
    return steps.max(axis=-1)


def wsr_rejects(losses: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
    """bool [M]: the WSR test rejects "risk >= epsilon" (the upper bound is at most epsilon), losses [M, n]."""
    if epsilon <= 0:
        return np.zeros(np.asarray(losses).shape[:-1], dtype=bool)
    return wsr_log_capital(losses, epsilon, delta) >= math.log(1.0 / delta)


def wsr_bound(losses: np.ndarray, delta: float) -> np.ndarray:
    """WSR upper confidence bounds [M] on the mean of losses [M, n] in [0, 1], at level 1 - delta.

    The smallest mu in [0, 1] whose log capital reaches log(1/delta) (the capital grows with mu, so a vectorised
    bisection finds it); 1 when even mu = 1 is not reached.
    """
    x = np.atleast_2d(np.asarray(losses, dtype=np.float64))
    nu = wsr_bets(x, delta)
    target = math.log(1.0 / delta)
    lo = np.zeros(x.shape[0])
    hi = np.ones(x.shape[0])
    reached_at_one = wsr_log_capital(x, hi, delta, nu) >= target
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2.0
        up = wsr_log_capital(x, mid, delta, nu) >= target
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    return np.where(reached_at_one, hi, 1.0)
