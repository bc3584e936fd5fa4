"""Rank correlations of proxies with efficiency across models, with trial-resampling bootstrap intervals.

Every statistic here is computed on a *weighted* sample: point p counts `w[p]` times. The estimate uses w = 1;
a bootstrap resample draws trials with replacement and gives each point the number of times its trial was
drawn, so all calibrator points of a model come and go together. Midranks, Spearman's rho and Kendall's tau-b
of the weighted sample equal those of the sample with each point written out `w[p]` times, and all resamples
are ranked at once ([B, m] arrays): 180 proxy-target rows x 1000 resamples on 100 points take under a second.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from eeopt.analysis.points import PointTable, json_float
from eeopt.errors import AnalysisError
from eeopt.names import BUDGETS, efficiency_key, parse_key

#: Targets analysed when the caller names none (those present in the points).
DEFAULT_TARGETS = (
    efficiency_key("acc_cost_auc"), efficiency_key("acc_cost_auc", "sweep"),
    *(efficiency_key(f"acc_at_{b}") for b in BUDGETS if b < 100),
)
#: Fewer trials than this and a row reports no numbers.
MIN_TRIALS = 5
CONFIDENCE = 0.95
SIGN_CONVENTION = (
    "Both sides are in higher-is-better form: metrics where lower is better (ECE, MCE, adaptive ECE, Brier, "
    "NLL, FPR@95, AURC, E-AURC; costs) are negated before ranking, so a proxy that tracks efficiency has a "
    "large positive Spearman, Kendall and partial value whichever way its raw scale points."
)


@dataclasses.dataclass(frozen=True)
class Correlation:
    """One proxy against one target across the points where both are defined.

    `spearman_ci` and `kendall_ci` are 95 % bootstrap percentile intervals over resampled trials;
    `partial_spearman` controls for the last exit's accuracy. Undefined numbers are NaN, and `note` says why
    ("fewer than 5 trials (3)", "constant proxy", "constant control", "no last-exit accuracy for the
    partial"); it is "" for a complete row.
    """

    proxy: str
    target: str
    spearman: float
    spearman_ci: tuple[float, float]
    kendall: float
    kendall_ci: tuple[float, float]
    partial_spearman: float
    n_trials: int
    n_points: int
    note: str = ""

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None."""
        return {
            "proxy": self.proxy, "target": self.target,
            "spearman": json_float(self.spearman), "spearman_ci": [json_float(v) for v in self.spearman_ci],
            "kendall": json_float(self.kendall), "kendall_ci": [json_float(v) for v in self.kendall_ci],
            "partial_spearman": json_float(self.partial_spearman),
            "n_trials": self.n_trials, "n_points": self.n_points, "note": self.note,
        }


# -------------------------------------------------------------------------------------- weighted statistics
class Resamples(NamedTuple):
    """B weighted samples of m points from T trials: a trial's points come and go together."""

    counts: np.ndarray  # [B, T] how often each trial is in each sample
    index: np.ndarray  # [m] the trial of each point, 0..T-1
    weights: np.ndarray  # [B, m] counts[:, index], how often each point is in each sample

    @classmethod
    def of(cls, counts: np.ndarray, index: np.ndarray) -> Resamples:
        return cls(counts, index, counts[:, index])


class Ranked(NamedTuple):
    """One side of a correlation, ranked in each of B weighted samples of its m points."""

    ranks: np.ndarray  # [B, m] midranks (a point of weight 0 gets the rank it would have)
    ties: np.ndarray  # [B] pairs tied: sum over groups of equal values of W_g (W_g - 1) / 2
    signs: np.ndarray  # [m, m] sign(v_i - v_j)


def rank_sample(values: np.ndarray, weights: np.ndarray) -> Ranked:
    """Rank `values` [m] in each weighted sample `weights` [B, m] (point p present w[b, p] times) at once."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.empty(len(values), dtype=np.int64)
    group[order] = np.cumsum(new_group) - 1
    group_weight = np.add.reduceat(weights[:, order], np.flatnonzero(new_group), axis=1)  # [B, G]
    midrank = np.cumsum(group_weight, axis=1) - (group_weight - 1) / 2
    ties = (group_weight * (group_weight - 1) / 2).sum(axis=1)
    return Ranked(midrank[:, group], ties, np.sign(values[:, None] - values[None, :]))


def weighted_pearson(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson correlation of the rows of `a` and `b` [B, m] under `weights` [B, m]; NaN where a side is
    constant."""
    total = weights.sum(axis=1, keepdims=True)
    da = a - (weights * a).sum(axis=1, keepdims=True) / total
    db = b - (weights * b).sum(axis=1, keepdims=True) / total
    spread = (weights * da * da).sum(axis=1) * (weights * db * db).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights * da * db).sum(axis=1) / np.sqrt(spread)


def spearman_ranked(x: Ranked, y: Ranked, weights: np.ndarray) -> np.ndarray:
    """Spearman's rho [B]: the weighted Pearson correlation of the midranks."""
    return weighted_pearson(x.ranks, y.ranks, weights)


def kendall_ranked(x: Ranked, y: Ranked, samples: Resamples) -> np.ndarray:
    """Kendall's tau-b [B] = (C - D) / sqrt((n0 - n1)(n0 - n2)), n0 = n(n-1)/2 pairs, n1 and n2 the pairs tied
    in x and in y (two copies of one point are a pair tied in both).

    C - D = w' S w / 2 with S [m, m] the pairs' concordance; as w is constant within a trial, it is
    c' S_T c / 2 with S_T [T, T] summed over the trials' points: O(B T^2) rather than O(B m^2).
    """
    onehot = np.zeros((samples.counts.shape[1], len(samples.index)))
    onehot[samples.index, np.arange(len(samples.index))] = 1
    by_trial = onehot @ (x.signs * y.signs) @ onehot.T  # [T, T]
    c_minus_d = ((samples.counts @ by_trial) * samples.counts).sum(axis=1) / 2
    n = samples.weights.sum(axis=1)
    pairs = n * (n - 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return c_minus_d / np.sqrt((pairs - x.ties) * (pairs - y.ties))


def weighted_spearman(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Spearman's rho of `x`, `y` [m] in each weighted sample `weights` [B, m] -> [B]."""
    return spearman_ranked(rank_sample(x, weights), rank_sample(y, weights), weights)


def weighted_kendall(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of `x`, `y` [m] in each weighted sample `weights` [B, m] -> [B]."""
    samples = Resamples.of(weights, np.arange(weights.shape[1]))
    return kendall_ranked(rank_sample(x, weights), rank_sample(y, weights), samples)


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Spearman correlation of `x` and `y` [m] controlling for `z` [m]: the partial correlation of their
    midranks, (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)). NaN when a side is constant or z ranks x or
    y exactly."""
    ones = np.ones((1, len(x)))
    rx, ry, rz = (rank_sample(v, ones).ranks for v in (x, y, z))
    r_xy, r_xz, r_yz = (float(weighted_pearson(a, b, ones)[0]) for a, b in ((rx, ry), (rx, rz), (ry, rz)))
    denominator = (1 - r_xz**2) * (1 - r_yz**2)
    return (r_xy - r_xz * r_yz) / math.sqrt(denominator) if denominator > 1e-12 else math.nan


def resample_trials(trial_index: np.ndarray, n_boot: int, seed: int) -> Resamples:
    """`n_boot` bootstrap samples of the points whose trials are `trial_index` [m] (any labels): each draws as
    many trials as there are, with replacement, from `numpy.random.default_rng(seed)`; a point's weight is how
    often its trial was drawn. The same number of trials and seed give the same samples."""
    trials, index = np.unique(trial_index, return_inverse=True)
    t = len(trials)
    draws = np.random.default_rng(seed).integers(0, t, size=(n_boot, t))
    counts = np.bincount((draws + t * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * t)
    return Resamples.of(counts.reshape(n_boot, t).astype(float), index)


def percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    """The central `CONFIDENCE` percentile interval of the finite `samples` [B] (a resample whose side is
    constant has no correlation and is left out); NaN when there are none."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return (math.nan, math.nan)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return (float(low), float(high))


# -------------------------------------------------------------------------------------- proxy x target rows
class _Samples:
    """Weights and ranked sides shared by the rows of one analysis.

    The samples of a set of kept points are 1 + n_boot: first every trial once (the estimate), then the trial
    resamples. A key is ranked once per set of kept points, and without NaN every row keeps the same points.
    """

    def __init__(self, trial_index: np.ndarray, n_boot: int, seed: int):
        self.trial_index, self.n_boot, self.seed = trial_index, n_boot, seed
        self._samples: dict[bytes, Resamples] = {}
        self._ranked: dict[tuple, Ranked] = {}

    def of(self, keep: np.ndarray) -> Resamples:
        key = keep.tobytes()
        if key not in self._samples:
            boot = resample_trials(self.trial_index[keep], self.n_boot, self.seed)
            counts = np.vstack([np.ones((1, boot.counts.shape[1])), boot.counts])
            self._samples[key] = Resamples.of(counts, boot.index)
        return self._samples[key]

    def ranked(self, side: tuple[str, str], values: np.ndarray, keep: np.ndarray) -> Ranked:
        key = (side, keep.tobytes())
        if key not in self._ranked:
            self._ranked[key] = rank_sample(values[keep], self.of(keep).weights)
        return self._ranked[key]


def _constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values[0]))


def _row(proxy: str, target: str, x: np.ndarray, y: np.ndarray, control: np.ndarray | None,
         samples: _Samples) -> Correlation:
    keep = np.isfinite(x) & np.isfinite(y)
    n_trials, n_points = len(np.unique(samples.trial_index[keep])), int(keep.sum())
    notes = [f"fewer than {MIN_TRIALS} trials ({n_trials})"] if n_trials < MIN_TRIALS else []
    if n_points > 1:  # with none or one point, "constant" would only repeat the first note
        notes += [f"constant {side}" for side, v in (("proxy", x[keep]), ("target", y[keep])) if _constant(v)]
    nan2 = (math.nan, math.nan)
    if notes:
        return Correlation(proxy, target, math.nan, nan2, math.nan, nan2, math.nan, n_trials, n_points,
                           "; ".join(notes))
    resamples = samples.of(keep)
    rx, ry = samples.ranked(("proxy", proxy), x, keep), samples.ranked(("target", target), y, keep)
    rho, tau = spearman_ranked(rx, ry, resamples.weights), kendall_ranked(rx, ry, resamples)
    with_ci = samples.n_boot > 0
    partial = math.nan
    if control is not None:
        has = keep & np.isfinite(control)
        if not has.any():
            notes.append("no last-exit accuracy for the partial")
        elif _constant(control[has]):
            notes.append("constant control")
        elif _constant(x[has]) or _constant(y[has]):
            notes.append("constant proxy or target where the control is defined")
        else:
            partial = partial_spearman(x[has], y[has], control[has])
    return Correlation(proxy, target, float(rho[0]), percentile_interval(rho[1:]) if with_ci else nan2,
                       float(tau[0]), percentile_interval(tau[1:]) if with_ci else nan2, partial, n_trials,
                       n_points, "; ".join(notes))


def correlate(x: np.ndarray, y: np.ndarray, trial_index: np.ndarray, control: np.ndarray | None = None, *,
              proxy: str = "proxy", target: str = "target", n_boot: int = 1000, seed: int = 0) -> Correlation:
    """One `Correlation` of `x` and `y` [P] (already in higher-is-better form) over the points where both are
    finite, bootstrapping the trials `trial_index` [P] (any labels) with `default_rng(seed)`; the partial
    controls for `control` [P] on the points where it is finite too. Degenerate rows carry NaN and a note.

    Raises `AnalysisError` when the arrays are not 1-D of one length.
    """
    x, y, trial_index = (np.asarray(v) for v in (x, y, trial_index))
    if not x.shape == y.shape == trial_index.shape or x.ndim != 1:
        raise AnalysisError("x, y and trial_index must be 1-D arrays of one length, got "
                            f"{x.shape}, {y.shape}, {trial_index.shape}")
    control = None if control is None else np.asarray(control, dtype=float)
    samples = _Samples(trial_index, n_boot, seed)
    return _row(proxy, target, x.astype(float), y.astype(float), control, samples)


def correlations(table: PointTable, targets: list[str] | tuple[str, ...], n_boot: int = 1000,
                 seed: int = 0) -> list[Correlation]:
    """Every proxy key of `table` against every target, target by target in the given order.

    The partial controls for the last exit's accuracy (`exit{K}/accuracy` of each point). Every row draws
    its resamples from a fresh `default_rng(seed)`, so a row's interval does not depend on which other keys
    are present, and rows over the same points share their resamples.
    """
    control = table.last_exit_accuracy()
    samples = _Samples(table.trial_index, n_boot, seed)
    return [_row(proxy, target, table.oriented(proxy), table.oriented(target), control, samples)
            for target in targets for proxy in table.proxy_keys()]


def resolve_targets(table: PointTable, targets: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The caller's targets (each must be a key of the scheme present in some point), or the default targets
    present. Raises `AnalysisError` naming what is available."""
    present = [key for key, parsed in table.parsed.items() if parsed.metric.group == "efficiency"]
    if targets is None:
        found = tuple(t for t in DEFAULT_TARGETS if t in table.parsed)
        if not found:
            raise AnalysisError(f"none of the default targets ({', '.join(DEFAULT_TARGETS)}) is in the "
                                "points; pass targets=[...] (efficiency keys present: "
                                f"{', '.join(present) or 'none'})")
        return found
    for target in targets:
        try:
            parse_key(target)
        except ValueError as error:
            raise AnalysisError(f"target {target!r}: {error}") from None
        if target not in table.parsed:
            raise AnalysisError(f"target {target!r} is in no point (efficiency keys present: "
                                f"{', '.join(present) or 'none'})")
    return tuple(targets)
