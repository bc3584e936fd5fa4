"""Candidate policies for certification, ordered from the safest to the cheapest, with their calibration sums.

- `shared_candidates`: one threshold shared by all non-final exits, at every value where some calibration sample
  changes its exit (its *record* scores: above every earlier score of that sample; the same events as
  `eeopt.core.metrics.efficiency.global_sweep`), preceded by +inf (every sample at the last exit). Between two such values
  the calibration risk is constant, so testing these values tests every real threshold: fixed-sequence testing over
  them is fixed-sequence testing over the whole continuum of thresholds, which is why a data-dependent grid keeps
  the guarantee. Summed losses, monotonised losses, correct samples and costs come from one sort of the events and
  cumulative sums; nothing loops over samples.
- `sequence_candidates`: any fixed list of per-exit threshold vectors (Pareto Testing's front), evaluated sample by
  sample ([M, N] at once; fronts are a few hundred policies).
- `pareto_front`: the per-exit search (`eeopt.core.search.search_thresholds`, Optuna) minimising (mean cost, risk) on
  one part of the calibration data; its front ordered by that part's risk, safest first.

Pure NumPy (Optuna for the search).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eeopt.core.metrics.efficiency import record_samples
from eeopt.core.policies import threshold_exits


@dataclasses.dataclass(frozen=True, eq=False)
class Candidates:
    """M candidate threshold policies on n calibration samples, ordered from the safest to the cheapest.

    Attributes:
        thresholds: [M, K-1] per-exit thresholds (+inf: nobody leaves there).
        loss_sum: [M] summed loss of each candidate.
        monotone_sum: [M] summed loss after each sample's loss is replaced by its largest loss over this and every
            safer candidate (conformal risk control needs losses that never fall along the sequence; this bound
            keeps its guarantee for any loss).
        correct_sum: [M] correctly predicted samples; cost_sum: [M] summed cost.
        scores, losses: [K, n] the calibration scores and per-exit losses (`loss_rows` reads them).
        steps: for shared-threshold candidates with 0-1 losses, the events (candidate index [E] ascending, sample
            [E], loss change [E]) that let `loss_rows` build rows by cumulative sums; None otherwise.
    """

    thresholds: np.ndarray
    loss_sum: np.ndarray
    monotone_sum: np.ndarray
    correct_sum: np.ndarray
    cost_sum: np.ndarray
    scores: np.ndarray
    losses: np.ndarray
    steps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def n(self) -> int:
        return self.scores.shape[1]

    def __len__(self) -> int:
        return self.thresholds.shape[0]

    @property
    def risk(self) -> np.ndarray:
        return self.loss_sum / self.n

    @property
    def accuracy(self) -> np.ndarray:
        return self.correct_sum / self.n

    @property
    def mean_cost(self) -> np.ndarray:
        return self.cost_sum / self.n

    def loss_rows(self, start: int, stop: int) -> np.ndarray:
        """Losses [stop - start, n] of candidates start..stop-1, sample by sample in the calibration order."""
        samples = np.arange(self.n)
        if self.steps is None or stop - start < 2:
            exits = threshold_exits(self.scores, self.thresholds[start:stop]).astype(np.intp)
            return self.losses[exits, samples[None, :]]
        # the first row directly, then each next row is the one before plus its samples' changes (0-1 losses:
        # exact in float64)
        group, sample, change = self.steps
        rows = np.zeros((stop - start, self.n))
        first = threshold_exits(self.scores, self.thresholds[start]).astype(np.intp)
        rows[0] = self.losses[first, samples]
        lo, hi = np.searchsorted(group, [start + 1, stop])
        rows[group[lo:hi] - start, sample[lo:hi]] = change[lo:hi]  # a sample changes at most once per candidate
        return np.cumsum(rows, axis=0, out=rows)


def shared_candidates(scores: np.ndarray, losses: np.ndarray, correct: np.ndarray, costs: np.ndarray) -> Candidates:
    """Every distinct shared threshold at which a calibration sample changes its exit, +inf first, descending.

    Args:
        scores: [K, n] exit scores (higher = exit now); NaN never exits early.
        losses: [K, n] loss of each sample at each exit, in [0, 1].
        correct: [K, n] bool.
        costs: [K] cumulative cost of each exit.
    """
    scores = np.asarray(scores, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    costs = np.asarray(costs, dtype=np.float64)
    k, n = scores.shape
    base = np.array([losses[-1].sum(), losses[-1].sum(), correct[-1].sum(), costs[-1] * n])
    values, deltas, samples = _events(scores, losses, correct, costs)
    steps = None
    if values.size == 0:
        sums = base[:, None]
        values = np.array([np.inf])
    else:
        order = np.argsort(-values, kind="stable")  # descending; ties kept together
        values, deltas, samples = values[order], deltas[:, order], samples[order]
        new_group = np.concatenate([[False], values[1:] != values[:-1]])
        ends = np.append(np.flatnonzero(new_group[1:]), values.size - 1)
        sums = base[:, None] + np.cumsum(deltas, axis=1)[:, ends]
        group = np.cumsum(new_group)  # each event's candidate, counted from the first event value
        values = values[ends]
        if values[0] != np.inf:
            values = np.concatenate([[np.inf], values])
            sums = np.concatenate([base[:, None], sums], axis=1)
            group += 1
        if np.all((losses == 0) | (losses == 1)):
            steps = (group, samples, deltas[0])
    sums[3] = np.clip(sums[3], costs[0] * n, costs[-1] * n)  # a running float sum drifts by ulps
    thresholds = np.repeat(values[:, None], k - 1, axis=1)
    return Candidates(thresholds, sums[0], sums[1], np.rint(sums[2]), sums[3], scores, losses, steps)


def _events(scores, losses, correct, costs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each record score of each sample at a non-final exit [E], the changes [4, E] (loss, monotone loss, correct,
    cost) when the threshold falls to it, and its sample [E]. Built from the last exit towards the first, the order
    in which a sample visits its exits as the threshold falls."""
    k, n = scores.shape
    if k == 1:  # a single exit: nothing to move
        return np.empty(0), np.empty((4, 0)), np.empty(0, dtype=np.intp)
    now = np.full(n, k - 1)
    worst = losses[-1].copy()
    values, deltas, samples = [], [], []
    for e, where in record_samples(scores):
        prev = now[where]
        new_worst = np.maximum(worst[where], losses[e, where])
        deltas.append(np.stack([
            losses[e, where] - losses[prev, where],
            new_worst - worst[where],
            correct[e, where].astype(np.float64) - correct[prev, where],
            costs[e] - costs[prev],
        ]))
        values.append(scores[e, where])
        samples.append(where)
        now[where] = e
        worst[where] = new_worst
    return np.concatenate(values), np.concatenate(deltas, axis=1), np.concatenate(samples)


def sequence_candidates(thresholds: np.ndarray, scores: np.ndarray, losses: np.ndarray, correct: np.ndarray,
                        costs: np.ndarray) -> Candidates:
    """A fixed sequence of per-exit policies [M, K-1] (safest first) evaluated on calibration data [K, n]."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    n = scores.shape[1]
    exits = threshold_exits(scores, thresholds).astype(np.intp)  # [M, n]
    samples = np.arange(n)[None, :]
    rows = losses[exits, samples]
    return Candidates(
        thresholds=thresholds,
        loss_sum=rows.sum(axis=1),
        monotone_sum=np.maximum.accumulate(rows, axis=0).sum(axis=1),
        correct_sum=np.asarray(correct, dtype=bool)[exits, samples].sum(axis=1).astype(np.float64),
        cost_sum=np.asarray(costs, dtype=np.float64)[exits].sum(axis=1),
        scores=scores,
        losses=losses,
    )


def pareto_front(scores: np.ndarray, losses: np.ndarray, costs: np.ndarray, *, trials: int = 300,
                 sampler: str = "nsga2", seed: int = 0) -> np.ndarray:
    """Per-exit thresholds [P, K-1] of the (mean cost, risk) Pareto front found on search data, safest first.

    With 0-1 losses the search is `eeopt.core.search.search_thresholds` with "correct" meaning "no loss": it maximises
    1 - risk and minimises cost (its candidates include the exact shared-threshold front and the last exit alone).
    Other losses (brier-gap) go through the same Optuna search over score quantiles (`_loss_front`). The front is
    strictly ordered by risk, so ordering it by estimated risk reverses its cost order.

    Args:
        scores: [K, n1] exit scores of the search part.
        losses: [K, n1] losses in [0, 1].
        costs: [K].
    """
    losses = np.asarray(losses, dtype=np.float64)
    if not np.all((losses == 0) | (losses == 1)):
        return _loss_front(np.asarray(scores, dtype=np.float64), losses, np.asarray(costs, dtype=np.float64),
                           trials, sampler, seed)
    from eeopt.core.search import search_thresholds

    result = search_thresholds(scores, losses == 0, costs, trials=trials, sampler=sampler, seed=seed)
    return result.thresholds[::-1]


def _loss_front(scores, losses, costs, trials: int, sampler: str, seed: int, batch_size: int = 50) -> np.ndarray:
    """The (mean cost, mean loss) front [P, K-1], safest first, of an Optuna search over per-exit score quantiles
    (`eeopt.core.search.quantile_thresholds`, asked in batches) for losses that are not 0-1, with the shared-threshold
    candidates, "every sample at the first exit" and "every sample at the last exit" among the candidates."""
    import optuna

    from eeopt.core.metrics.efficiency import frontier_indices
    from eeopt.core.search import quantile_thresholds, threshold_sampler

    k, n = scores.shape
    samples = np.arange(n)[None, :]

    def evaluate(thresholds):
        exits = threshold_exits(scores, thresholds).astype(np.intp)
        return losses[exits, samples].mean(axis=1), costs[exits].mean(axis=1)

    shared = shared_candidates(scores, losses, np.ones_like(losses, dtype=bool), costs).thresholds
    fixed = np.concatenate([shared, np.full((1, k - 1), -np.inf)])
    if k < 2:
        return fixed[:1]
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=threshold_sampler(sampler, seed, trials, batch_size))
    names = [f"q_exit{i + 1}" for i in range(k - 1)]
    distributions = {name: optuna.distributions.FloatDistribution(0.0, 1.0) for name in names}
    sorted_scores = np.sort(scores[:-1], axis=1)
    searched, done = [], 0
    while done < trials:
        batch = [study.ask(distributions) for _ in range(min(batch_size, trials - done))]
        thresholds = quantile_thresholds(sorted_scores, np.array([[t.params[m] for m in names] for t in batch]))
        risk, cost = evaluate(thresholds)
        for t, r, c in zip(batch, risk, cost):
            study.tell(t, [float(r), float(c)])
        searched.append(thresholds)
        done += len(batch)
    candidates = np.unique(np.concatenate([fixed, *searched]), axis=0)
    risk, cost = evaluate(candidates)
    front = frontier_indices(cost, -risk)  # cost ascending, risk strictly falling
    return candidates[front][::-1]


def split_calibration(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices of the two parts of n calibration samples: a seeded random `share` of them (at least one) and
    the rest (at least one), each in increasing order."""
    if n < 2:
        raise ValueError(f"splitting calibration data needs at least 2 samples, got {n}")
    first = int(np.clip(round(share * n), 1, n - 1))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:first]), np.sort(perm[first:])
