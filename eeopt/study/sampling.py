"""The Optuna sampler of a study, seeded per trial so that no two trials replay the same random draws.

A sampler seeded once per process replays its draws in every process: parallel workers and reruns of one study
then suggest the same parameters. Here trial `n` draws from a generator seeded with `(study.seed, n)`: the same
study seed gives the same study when its trials run in the same order, and every trial number (unique in the
storage) gets fresh draws. Queued and requeued trials are the only repeats (their parameters are fixed).
"""

from __future__ import annotations

import hashlib
from typing import Any

from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler


def trial_seed(seed: int, number: int) -> int:
    """The 32-bit seed of trial `number` of a study seeded with `seed`."""
    return int.from_bytes(hashlib.sha256(f"eeopt:{seed}:{number}".encode()).digest()[:4], "little")


def create_sampler(kind: str, seed: int, trials: int) -> BaseSampler:
    """The sampler named in `study.sampler` (tpe, nsga2 or random), seeded per trial from `seed`."""

    def make(trial_seed_: int) -> BaseSampler:
        if kind == "tpe":
            return TPESampler(seed=trial_seed_, multivariate=True, constant_liar=True)
        if kind == "nsga2":
            return NSGAIISampler(seed=trial_seed_, population_size=max(4, min(20, trials)))
        return RandomSampler(seed=trial_seed_)

    return SeedPerTrial(make, seed)


class SeedPerTrial(BaseSampler):
    """Delegates each trial to a sampler built by `make(trial_seed(seed, trial.number))`.

    The samplers eeopt uses keep no state between trials besides their random generator (TPE and NSGA-II read the
    history from the storage), so a fresh one per trial number changes only where the draws come from.
    """

    _KEEP = 32  # samplers of recent trial numbers kept (a trial's hooks all come while it is being asked)

    def __init__(self, make, seed: int):
        self._make = make
        self._seed = seed
        self._by_number: dict[int, BaseSampler] = {}

    def _for(self, trial) -> BaseSampler:
        sampler = self._by_number.get(trial.number)
        if sampler is None:
            if len(self._by_number) >= self._KEEP:
                self._by_number.pop(next(iter(self._by_number)))
            sampler = self._by_number[trial.number] = self._make(trial_seed(self._seed, trial.number))
        return sampler

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._by_number.clear()
