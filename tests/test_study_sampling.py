"""Fresh parameters in every process: the per-trial seeded sampler on a shared storage (no Ray, no servers)."""

from __future__ import annotations

import optuna
import pytest

from eeopt.study.trials import create_sampler
from eeopt.study.trials import TrialStore

DIST = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "width": optuna.distributions.IntDistribution(4, 64)}
KW = {"directions": ["maximize"], "objectives": ["val/a"]}


def _store(url: str, kind: str, seed: int = 0) -> TrialStore:
    return TrialStore(url, "s", sampler=create_sampler(kind, seed, trials=12), **KW)


@pytest.mark.parametrize("kind", ["tpe", "random", "nsga2"])
def test_workers_and_a_rerun_never_draw_the_same_parameters(tmp_path, kind):
    """Three 'workers' (each its own sampler, as in its own process) ask in turn on one storage, then a 'rerun'
    does: every trial has parameters of its own. With one sampler seeded per process, as before, the workers
    drew the same points (checked below, so this test can tell the two apart)."""
    url = f"sqlite:///{tmp_path / 'eeopt.db'}"
    workers = [_store(url, kind) for _ in range(3)]
    for _ in range(3):
        for worker in workers:
            ticket = worker.ask(DIST)
            worker.complete(ticket, [ticket.params["lr"]])
    rerun = _store(url, kind)
    for _ in range(3):
        rerun.complete(ticket := rerun.ask(DIST), [ticket.params["lr"]])
    params = [tuple(sorted(t.params.items())) for t in rerun.trials()]
    assert len(params) == 12 and len(set(params)) == 12

    old = [optuna.samplers.RandomSampler(seed=0) for _ in range(2)]
    firsts = [optuna.create_study(sampler=s).ask(DIST).params for s in old]
    assert firsts[0] == firsts[1]  # the failure mode the per-trial seed removes


def test_the_study_seed_makes_a_study_reproducible(tmp_path):
    """The same seed and the same order of trials give the same parameters; another seed other ones."""
    def draws(folder, seed):
        store = _store(f"sqlite:///{tmp_path / folder / 'eeopt.db'}", "tpe", seed)
        return [store.ask(DIST).params for _ in range(4)]

    assert draws("a", 7) == draws("b", 7) != draws("c", 8)


def test_queued_and_requeued_trials_are_the_only_repeats_and_say_so(tmp_path):
    store = _store(f"sqlite:///{tmp_path / 'eeopt.db'}", "random")
    store.study.enqueue_trial({"lr": 0.01, "width": 8})
    queued = store.ask(DIST)
    assert (queued.origin, queued.params) == ("queued", {"lr": 0.01, "width": 8})
    sampled = store.ask(DIST)
    assert sampled.origin == "sampled"
    store.set_attrs(sampled, {"mlflow_run_id": "run-1"})
    store.requeue(sampled)
    again = _store(f"sqlite:///{tmp_path / 'eeopt.db'}", "random").ask(DIST)
    assert (again.number, again.params, again.origin, again.requeued) == (
        sampled.number, sampled.params, "requeued", True)
