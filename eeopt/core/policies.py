"""Exit policies and their vectorised evaluation: thresholds on an exit score, and patience (PABEE).

A *threshold policy* has one threshold per non-final exit, t_0..t_{K-2}: sample n leaves at the first exit
k < K-1 with ``score[k, n] >= t_k`` and otherwise at the last exit K-1; its prediction and cost are those of that
exit. A *patience policy* leaves once the prediction has stayed the same for P consecutive exits.

`evaluate_thresholds` evaluates many threshold policies at once. It never forms an [M, N] array: for each exit the
samples a policy lets through are a suffix of that exit's samples sorted by score, and the suffixes of all policies
are nested, so the pass sets are built as bitsets (64 samples per word) by a cumulative OR over policies sorted by
threshold; the samples still undecided are kept as bitsets too, and counts are popcounts. The work is about
K * M * N / 64 word operations in cache-sized chunks, plus one argsort of N scores per exit.
Exits are numbered from 0 here; users see ``exit1``..``exitK``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np

from eeopt.errors import ConfigError
from eeopt.files import jsonable
from eeopt.core.metrics.checks import check_exit_arrays

#: Working arrays of one chunk of policies: [policies, words] uint64, sized to stay in a core's L2 cache.
_CHUNK_BYTES = 160 << 10
#: Policies evaluated together (each holds one [W] bitset of its undecided samples, twice): bounds memory.
_BLOCK_BYTES = 4 << 20
_MIN_BLOCK = 32


class PolicyEvaluation(NamedTuple):
    """Accuracy, mean cost and exit shares of M policies on one split.

    Attributes:
        accuracy: [M] share of samples whose exit predicts them correctly.
        mean_cost: [M] mean cost per sample (the costs' unit).
        exit_share: [M, K] share of samples leaving at each exit (rows sum to 1).
    """

    accuracy: np.ndarray
    mean_cost: np.ndarray
    exit_share: np.ndarray


@dataclasses.dataclass(frozen=True)
class ThresholdPolicy:
    """A threshold policy as it is saved: the score it thresholds and t_0..t_{K-2} (may be +-inf).

    `to_dict` is JSON-safe: infinities are written as the strings "inf" / "-inf".
    """

    score: str
    thresholds: tuple[float, ...]

    def __post_init__(self) -> None:
        values = tuple(float(t) for t in np.asarray(self.thresholds, dtype=np.float64).reshape(-1))
        if any(math.isnan(t) for t in values):
            raise ValueError(f"policy thresholds must not be NaN, got {list(values)}")
        object.__setattr__(self, "thresholds", values)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "thresholds": [float_to_json(t) for t in self.thresholds]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThresholdPolicy:
        """Read `{"score": str, "thresholds": [number | "inf" | "-inf", ...]}`; other keys are ignored.

        Raises:
            ConfigError: a key is missing or a threshold is not a number, "inf" or "-inf".
        """
        if not isinstance(data, dict):
            raise ConfigError(
                f"policy: expected a mapping with 'score' and 'thresholds', got {type(data).__name__}"
            )
        for key in ("score", "thresholds"):
            if key not in data:
                raise ConfigError(f"policy.{key}: missing")
        if not isinstance(data["score"], str):
            raise ConfigError(f"policy.score: expected a score name, got {data['score']!r}")
        raw = data["thresholds"]
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"policy.thresholds: expected a list, got {raw!r}")
        return cls(data["score"], tuple(_float_from_json(v, f"policy.thresholds.{i}") for i, v in enumerate(raw)))


# --------------------------------------------------------------------------------------------- threshold policies
def threshold_exits(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit index of every sample under threshold policies.

    Args:
        scores: [K, N] exit scores (higher = exit now); NaN never exits early.
        thresholds: [K-1] one policy, or [M, K-1] M policies.

    Returns:
        [N] (one policy) or [M, N] exit indices in [0, K), int8 (int16 beyond 127 exits).
    """
    scores, thr, single = _check_scores_thresholds(scores, thresholds)
    k, n = scores.shape
    m = thr.shape[0]
    out = np.full((m, n), k - 1, dtype=_exit_dtype(k))
    rows = max(1, (1 << 20) // max(n, 1))  # ~1 MB of comparisons at a time
    for a in range(0, m, rows):
        block, thr_block = out[a : a + rows], thr[a : a + rows]
        for e in range(k - 2, -1, -1):  # reverse order: the earliest passing exit is written last
            np.copyto(block, e, where=scores[e] >= thr_block[:, e, None])
    return out[0] if single else out


def evaluate_thresholds(
    scores: np.ndarray, correct: np.ndarray, costs: np.ndarray, thresholds: np.ndarray
) -> PolicyEvaluation:
    """Accuracy, mean cost and exit shares of M threshold policies, all at once.

    Args:
        scores: [K, N] exit scores; NaN never exits early.
        correct: [K, N] bool, whether exit k predicts sample n correctly.
        costs: [K] cumulative cost of each exit.
        thresholds: [M, K-1] (or [K-1], evaluated as M = 1); +-inf allowed, NaN is not.

    Raises:
        ValueError: shapes disagree, N = 0, or a threshold is NaN.
    """
    scores, thr, _ = _check_scores_thresholds(scores, thresholds)
    k, n = scores.shape
    correct = np.asarray(correct)
    if correct.shape != (k, n):
        raise ValueError(f"correct must have shape [K, N] = {(k, n)}, got {correct.shape}")
    correct = correct.astype(bool, copy=False)
    costs = np.asarray(costs, dtype=np.float64)
    if costs.shape != (k,):
        raise ValueError(f"costs must have shape [K] = ({k},), got {costs.shape}")
    if n == 0:
        raise ValueError("evaluate_thresholds needs at least one sample")
    m = thr.shape[0]
    if k == 1 or m == 0:
        counts = np.zeros((m, k), dtype=np.int64)
        counts[:, -1] = n
        n_correct = np.full(m, int(correct[-1].sum()), dtype=np.int64)
    else:
        counts, n_correct = _count_exits(scores, correct, thr)
    return PolicyEvaluation(n_correct / n, counts @ costs / n, counts / n)


def _count_exits(scores: np.ndarray, correct: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Samples leaving at each exit [M, K] and correct samples [M] of M policies (K >= 2), by bitsets.

    Longer than the house limit on purpose: it is one loop nest (policy blocks, exits, cache-sized chunks) that
    shares preallocated buffers across levels; split into functions it would pass a dozen arrays around and the
    inner loop would pay call overhead on every chunk. The module docstring explains the algorithm.
    """
    k, n = scores.shape
    m = thr.shape[0]
    words = -(-n // 64)
    pad = np.zeros((k, words * 64), dtype=bool)
    pad[:, :n] = correct
    correct_bits = _pack(pad)  # [K, W]
    pad[0, :n] = True
    valid = _pack(pad[:1])[0]  # [W], padding bits off
    sum_dtype = np.uint16 if 64 * words < (1 << 16) else np.uint64

    # Per non-final exit: the samples that pass at least one policy, sorted by score (ascending).
    order_by_exit = []
    index_dtype = np.int32 if n < (1 << 31) else np.int64
    for e in range(k - 1):
        s = scores[e]
        cand = np.flatnonzero(s >= thr[:, e].min())  # NaN scores never pass
        idx = cand[np.argsort(s[cand])].astype(index_dtype)
        order_by_exit.append((s[idx], idx))
    idx0 = order_by_exit[0][1]
    suffix_correct0 = np.zeros(idx0.size + 1, dtype=np.int64)  # correct at exit 0 among sorted positions >= j
    suffix_correct0[:-1] = np.cumsum(correct[0, idx0][::-1])[::-1]

    counts = np.zeros((m, k), dtype=np.int64)
    n_correct = np.zeros(m, dtype=np.int64)
    block = int(np.clip(_BLOCK_BYTES // (8 * words), _MIN_BLOCK, m))
    chunk = int(np.clip(_CHUNK_BYTES // (8 * words), 1, block))
    d_buf = np.empty((chunk, words), dtype=np.uint64)
    x_buf = np.empty((2, chunk, words), dtype=np.uint64)
    pop_buf = np.empty((2, chunk, words), dtype=np.uint8)
    one = np.uint64(1)

    for m0 in range(0, m, block):
        mb = min(block, m - m0)
        # Bitsets of the samples each policy has not yet let out, rows in the current exit's policy order.
        undecided = np.empty((mb, words), dtype=np.uint64)
        spare = np.empty((mb, words), dtype=np.uint64)
        prev_rank = None
        for e in range(k - 1):
            sorted_scores, idx = order_by_exit[e]
            nv = idx.size
            t = thr[m0 : m0 + mb, e]
            order = np.argsort(t)[::-1]  # descending threshold = growing, nested pass sets
            rank = np.empty(mb, dtype=np.intp)
            rank[order] = np.arange(mb)
            # Policy at sorted position i passes sorted samples [pos[i], nv); pos is nonincreasing in i.
            pos = np.searchsorted(sorted_scores, t[order], side="left")
            ends = np.empty(mb, dtype=np.intp)
            ends[0] = nv
            ends[1:] = pos[:-1]
            # "cell" of sample j: the first policy (in sorted order) that passes it, for j >= pos[-1].
            jmin = int(pos[-1])
            cell = np.repeat(np.arange(mb - 1, -1, -1), (ends - pos)[::-1])
            sample = idx[jmin:]
            word = sample >> 6
            bit = np.left_shift(one, (sample & 63).astype(np.uint64))
            if e == 0:
                counts[m0 + order, 0] = nv - pos
                n_correct[m0 + order] = suffix_correct0[pos]
            else:
                rel = prev_rank[order]
                left = np.empty(mb, dtype=np.int64)
                right = np.zeros(mb, dtype=np.int64)
            last = e == k - 2
            carry = np.zeros(words, dtype=np.uint64)  # samples passed by every policy before this chunk
            for i0 in range(0, mb, chunk):
                i1 = min(mb, i0 + chunk)
                c = i1 - i0
                d = d_buf[:c]
                d.fill(0)
                ja, jb = int(pos[i1 - 1]) - jmin, int(ends[i0]) - jmin
                if jb > ja:  # scatter each newly passing sample's bit into its cell's row
                    np.add.at(d.reshape(-1), (cell[ja:jb] - i0) * words + word[ja:jb], bit[ja:jb])
                d[0] |= carry
                x = x_buf[:, :c]
                passed = x[0]
                np.bitwise_or.accumulate(d, axis=0, out=passed)  # row i: samples policy i lets out here
                carry = passed[-1].copy()
                pops = pop_buf[:, :c]
                if e == 0:
                    rem = undecided[i0:i1]
                    np.bitwise_xor(passed, valid, out=rem)
                else:
                    rem = spare[i0:i1]
                    np.take(undecided, rel[i0:i1], axis=0, out=rem, mode="clip")
                    np.bitwise_and(passed, rem, out=passed)  # leave at exit e
                    rem ^= passed
                    np.bitwise_and(passed, correct_bits[e], out=x[1])
                    _bitcount(x, pops)
                    both = np.add.reduce(pops.reshape(2 * c, words), axis=1, dtype=sum_dtype)
                    left[i0:i1] = both[:c]
                    right[i0:i1] = both[c:]
                if last:  # whatever is left leaves at the final exit
                    np.bitwise_and(rem, correct_bits[k - 1], out=passed)
                    _bitcount(passed, pops[0])
                    tail = np.add.reduce(pops[0], axis=1, dtype=sum_dtype)
                    if e == 0:
                        n_correct[m0 + order[i0:i1]] += tail.astype(np.int64)
                    else:
                        right[i0:i1] += tail.astype(np.int64)
            if e > 0:
                undecided, spare = spare, undecided
                counts[m0 + order, e] = left
                n_correct[m0 + order] += right
            prev_rank = rank
    counts[:, k - 1] = n - counts[:, : k - 1].sum(axis=1)
    return counts, n_correct


# --------------------------------------------------------------------------------------------- patience policies
def patience_exits(predictions: np.ndarray, patience: int) -> np.ndarray:
    """Exit index [N] under a patience policy (PABEE-style).

    A sample leaves at the first exit k whose prediction equals those of exits k-P+1..k (P consecutive exits
    agree; P = 1 leaves at exit 0), otherwise at exit K-1. PABEE's patience t is P = t + 1 here.

    Args:
        predictions: [K, N] predicted class per exit.
        patience: P >= 1.
    """
    run = _agreement_runs(np.asarray(predictions))
    return _patience_from_runs(run, _check_patience(patience))


def evaluate_patience(
    predictions: np.ndarray, correct: np.ndarray, costs: np.ndarray, patiences
) -> PolicyEvaluation:
    """Accuracy, mean cost and exit shares of patience policies, one per value in `patiences` [P].

    Args:
        predictions: [K, N] predicted class per exit.
        correct: [K, N] bool.
        costs: [K] cumulative cost per exit.
        patiences: [P] integers >= 1.
    """
    predictions, correct, costs = check_exit_arrays(predictions, correct, costs, name="predictions")
    k, n = predictions.shape
    values = [_check_patience(p) for p in np.asarray(patiences).reshape(-1)]
    run = _agreement_runs(predictions)
    samples = np.arange(n)
    acc, share = np.empty(len(values)), np.empty((len(values), k))
    for i, p in enumerate(values):
        exits = _patience_from_runs(run, p)
        acc[i] = correct[exits, samples].mean()
        share[i] = np.bincount(exits, minlength=k) / n
    return PolicyEvaluation(acc, share @ costs, share)


def _agreement_runs(predictions: np.ndarray) -> np.ndarray:
    """[K, N]: how many consecutive exits up to and including k predict what exit k predicts."""
    if predictions.ndim != 2:
        raise ValueError(f"predictions must have shape [K, N], got {predictions.shape}")
    k, n = predictions.shape
    run = np.ones((k, n), dtype=np.int32)
    for e in range(1, k):
        same = predictions[e] == predictions[e - 1]
        run[e, same] += run[e - 1, same]
    return run


def _patience_from_runs(run: np.ndarray, patience: int) -> np.ndarray:
    k = run.shape[0]
    reached = run >= patience
    first = reached.argmax(axis=0)
    return np.where(reached.any(axis=0), first, k - 1).astype(_exit_dtype(k))


def _check_patience(patience) -> int:
    if isinstance(patience, (bool, np.bool_)) or int(patience) != patience or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
    return int(patience)


# --------------------------------------------------------------------------------------------- helpers
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_table(words: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Popcount of each uint64 into `out` (uint8) via a byte table: the fallback for NumPy < 2."""
    per_byte = _POP8[np.ascontiguousarray(words).view(np.uint8)].reshape(*words.shape, 8)
    out[...] = per_byte.sum(axis=-1, dtype=np.uint8)
    return out


def _bitcount(words: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Popcount of each uint64 into `out` (uint8)."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(words, out=out)
    return _popcount_table(words, out)


_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")  # NumPy >= 2.0


def _pack(bits: np.ndarray) -> np.ndarray:
    """Bool [R, 64*W] -> uint64 [R, W], sample j at bit j % 64 of word j // 64."""
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").astype(np.uint64, copy=False)


def _exit_dtype(k: int):
    return np.int8 if k <= 127 else np.int16 if k <= 32767 else np.int32


def _check_scores_thresholds(scores, thresholds) -> tuple[np.ndarray, np.ndarray, bool]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must have shape [K, N] with K >= 1, got {scores.shape}")
    k = scores.shape[0]
    thr = np.asarray(thresholds, dtype=np.float64)
    single = thr.ndim == 1
    if single:
        thr = thr[None, :]
    if thr.ndim != 2 or thr.shape[1] != k - 1:
        raise ValueError(f"thresholds must have shape [K-1] or [M, K-1] with K-1 = {k - 1}, got {thr.shape}")
    if np.isnan(thr).any():
        raise ValueError("thresholds must not be NaN (use +inf for 'never exit here', -inf for 'always')")
    return scores, thr, single


def float_to_json(value: float) -> float | str:
    """A threshold for JSON: infinities as the strings "inf" / "-inf" (`eeopt.files.jsonable`)."""
    return jsonable(float(value), infinity_as_string=True)


def _float_from_json(value, where: str) -> float:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "+inf", "infinity", "+infinity"):
            return math.inf
        if text in ("-inf", "-infinity"):
            return -math.inf
        raise ConfigError(f"{where}: expected a number, 'inf' or '-inf', got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{where}: expected a number, 'inf' or '-inf', got {value!r}")
    return float(value)
