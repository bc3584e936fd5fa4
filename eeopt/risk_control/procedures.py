"""Risk-control procedures: from candidates ordered safest to cheapest, the cheapest one that is certified.

- ``ltt``: Learn-then-Test with Hoeffding-Bentkus p-values and fixed-sequence testing: candidates are tested in order
  and the procedure stops at the first whose p-value exceeds delta. With probability >= 1 - delta over the
  calibration data, every certified candidate has risk <= epsilon (Angelopoulos et al., 2021). No monotonicity needed.
- ``ucb-wsr``: the same sequence with the WSR upper confidence bound as the test (the bound of the candidate and of
  every safer one is <= epsilon); the same guarantee.
- ``crc``: conformal risk control (Angelopoulos et al., 2022): the cheapest candidate whose monotonised calibration
  risk satisfies (n R + 1) / (n + 1) <= epsilon, this and every safer one. A guarantee in expectation over the
  calibration data: E[risk] <= epsilon. Losses are made monotone along the sequence (each sample's loss is its
  largest over the safer candidates), an upper bound of the loss, so the guarantee holds for any loss.

Every guarantee assumes calibration and deployment samples are exchangeable (drawn from one distribution).
Pure NumPy/SciPy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from eeopt.risk_control.bounds import hb_p_value, wsr_bound, wsr_rejects
from eeopt.risk_control.candidates import Candidates

PROCEDURES = ("ltt", "ucb-wsr", "crc")
#: What each procedure reports about the chosen candidate.
STATISTIC = {"ltt": "p_value", "ucb-wsr": "bound", "crc": "bound"}
#: Rows of WSR losses formed at a time (rows x samples float64), to bound memory.
_WSR_CELLS = 1 << 20


class SequenceResult(NamedTuple):
    """index: the cheapest certified candidate (-1: none, not even the safest); statistic: its p-value (ltt), WSR
    upper bound (ucb-wsr) or CRC bound (n R + 1) / (n + 1) (crc), or the safest candidate's when none passed;
    passed: how many candidates passed before the first failure (index + 1)."""

    index: int
    statistic: float
    passed: int


def fixed_sequence(method: str, candidates: Candidates, epsilon: float, delta: float) -> SequenceResult:
    """Run `method` (one of `PROCEDURES`) over `candidates` (safest first).

    Raises:
        ValueError: an unknown method.
    """
    n = candidates.n
    if method == "ltt":
        stats = hb_p_value(candidates.loss_sum, n, epsilon)
        passed = _prefix(stats <= delta)
    elif method == "crc":
        stats = (candidates.monotone_sum + 1.0) / (n + 1.0)
        passed = _prefix(stats <= epsilon)
    elif method == "ucb-wsr":
        passed = _wsr_prefix(candidates, epsilon, delta)
        chosen = max(passed - 1, 0)
        bound = float(wsr_bound(candidates.loss_rows(chosen, chosen + 1), delta)[0])
        return SequenceResult(passed - 1, bound, passed)
    else:
        raise ValueError(f"unknown procedure {method!r} (known: {', '.join(PROCEDURES)})")
    return SequenceResult(passed - 1, float(stats[max(passed - 1, 0)]), passed)


def naive_index(candidates: Candidates, epsilon: float) -> int:
    """The uncontrolled choice: the cheapest candidate whose calibration risk is <= epsilon (-1 if none), the
    policy one would pick by tuning on validation data without a guarantee."""
    ok = np.flatnonzero(candidates.loss_sum / candidates.n <= epsilon)
    return int(ok[-1]) if ok.size else -1


def _prefix(ok: np.ndarray) -> int:
    """Length of the leading run of True."""
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else int(ok.size)


def _wsr_prefix(candidates: Candidates, epsilon: float, delta: float) -> int:
    """Leading candidates the WSR test rejects, evaluated in blocks until the first failure. The first block
    reaches a little past where the (cheap) Hoeffding-Bentkus test stops, where the WSR test usually stops too;
    later blocks double. The answer does not depend on the blocks."""
    m, n = len(candidates), candidates.n
    cap = max(16, _WSR_CELLS // max(n, 1))  # rows per block: bounds memory
    hint = _prefix(hb_p_value(candidates.loss_sum, n, epsilon) <= delta)
    start, block = 0, min(cap, max(16, hint + hint // 8 + 8))
    while start < m:
        stop = min(m, start + block)
        ok = wsr_rejects(candidates.loss_rows(start, stop), epsilon, delta)
        run = _prefix(ok)
        if run < ok.size:
            return start + run
        start = stop
        block = min(block * 2, cap)
    return m


def check_levels(epsilon: float, delta: float) -> None:
    """Raise `ValueError` unless epsilon is in [0, 1) and delta in (0, 1)."""
    if not (isinstance(epsilon, (int, float)) and 0 <= epsilon < 1 and not math.isnan(epsilon)):
        raise ValueError(f"epsilon: expected a risk level in [0, 1), got {epsilon!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta: expected a probability in (0, 1), got {delta!r}")
