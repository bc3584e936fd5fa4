"""The retraining spread (`eeopt.analysis.replicate`, `study analyze --replicate`): every number against scipy
on the paired points, the pairing and what it leaves out, the errors; and two tiny real studies end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from eeopt.analysis import AnalysisError, Point, analyze
from eeopt.analysis.replicate import compare_replicate, markdown_section

CALIBRATORS = ("none", "temperature")
#: The mean proxies of the synthetic points and their direction (+1: higher is better); `exit2/ece` is per
#: exit and `score/learned/mean/ece` repeats a calibration key, so neither is a row.
PROXIES = {"mean/ece": -1, "mean/nll": -1, "mean/aurc": -1, "mean/auroc": 1, "score/learned/mean/auroc": 1}
TARGET = "acc_cost_auc"


def _models(trials, seed: int, noise: float) -> dict[int, dict[str, float]]:
    """Per trial, the model's latent qualities: the same configuration (trial) trained with another `seed`
    moves them by `noise`."""
    base = np.random.default_rng(100)
    latent = {t: base.uniform(0.6, 0.9, size=3) for t in range(max(trials) + 1)}
    rng = np.random.default_rng(seed)
    return {t: latent[t] + rng.normal(0, noise, size=3) for t in trials}


def _points(trials, seed: int, noise: float = 0.02, skip=(), label=lambda t: t) -> list[Point]:
    """A point per (trial, calibrator), `skip` (trial, calibrator) left out; trials labelled by `label`."""
    rng = np.random.default_rng(seed + 1)
    points = []
    for trial, (quality, ranking, over) in _models(trials, seed, noise).items():
        for calibrator in CALIBRATORS:
            if (trial, calibrator) in skip:
                continue
            ece = over / 4 if calibrator == "temperature" else over / 2
            metrics = {"mean/ece": ece + rng.normal(0, 0.02), "mean/nll": 1 - quality + ece,
                       "mean/aurc": (1 - quality) * (1 - ranking) + rng.normal(0, 0.005),
                       "mean/auroc": ranking + rng.normal(0, 0.01),
                       "score/learned/mean/auroc": ranking + rng.normal(0, 0.03),
                       "score/learned/mean/ece": ece, "exit2/ece": ece, "exit3/accuracy": quality,
                       TARGET: quality / 2 + ranking / 2 + rng.normal(0, 0.01)}
            points.append(Point(label(trial), calibrator, None, metrics))
    return points


def _spearman(x, y) -> float:
    return float(spearmanr(x, y).statistic)


def test_every_number_is_scipy_on_the_paired_points():
    """Trials 0-11 against a replicate of trials 2-13 that lacks one point: each proxy's Spearman over the
    shared (trial, calibrator) points of trials 2-11 in each study, the order of the proxies, the target's
    change."""
    skip = {(5, "temperature")}
    first = analyze(_points(range(12), seed=0), n_boot=50)
    second = analyze(_points(range(2, 14), seed=1, skip=skip), n_boot=0)
    replicate = compare_replicate(first, second)

    paired = list(range(2, 12))
    assert replicate.pairs == tuple((t, t) for t in paired)
    assert replicate.unpaired_first == (0, 1) and replicate.unpaired_replicate == (12, 13)
    keys = [(t, c) for t in paired for c in CALIBRATORS if (t, c) not in skip]
    assert replicate.n_points == len(keys) == 19
    by_key = [{(p.trial, p.calibrator): p.metrics for p in a.points} for a in (first, second)]
    target = [[m[k][TARGET] for k in keys] for m in by_key]
    expected = {proxy: [_spearman([sign * m[k][proxy] for k in keys], y) for m, y in zip(by_key, target)]
                for proxy, sign in PROXIES.items()}

    assert {r.proxy for r in replicate.proxies} == set(PROXIES)
    for row in replicate.proxies:
        assert row.spearman == pytest.approx(expected[row.proxy][0], abs=1e-12)
        assert row.replicate_spearman == pytest.approx(expected[row.proxy][1], abs=1e-12)
        assert row.change == pytest.approx(expected[row.proxy][1] - expected[row.proxy][0], abs=1e-12)
        assert row.family == ("calibration" if "ece" in row.proxy or "nll" in row.proxy else "failure")
        assert row.note == ""
    for side, rank in ((0, "rank"), (1, "replicate_rank")):
        best_first = sorted(PROXIES, key=lambda p: -expected[p][side])
        in_order = sorted(replicate.proxies, key=lambda r: best_first.index(r.proxy))
        assert [getattr(r, rank) for r in in_order] == [1, 2, 3, 4, 5]
        assert replicate.top[side] == best_first[0]
    assert [r.proxy for r in replicate.proxies] == sorted(PROXIES, key=lambda p: -expected[p][0])
    assert replicate.order_spearman == pytest.approx(
        _spearman(*zip(*(expected[p] for p in PROXIES))), abs=1e-12) and replicate.n_ordered == 5
    families = ["calibration" if p in ("mean/ece", "mean/nll") else "failure" for p in replicate.top]
    assert replicate.same_top_family == (families[0] == families[1])

    for row in replicate.targets:
        shared = [t for t in paired if (t, row.calibrator) not in skip]
        a, b = ([m[t, row.calibrator][TARGET] for t in shared] for m in by_key)
        assert row.n_models == len(shared) and row.note == ""
        assert row.spearman == pytest.approx(_spearman(a, b), abs=1e-12)
        assert row.median_abs_change == pytest.approx(np.median(np.abs(np.subtract(b, a))), abs=1e-15)
        assert row.max_abs_change == pytest.approx(np.max(np.abs(np.subtract(b, a))), abs=1e-15)
    assert [r.calibrator for r in replicate.targets] == list(CALIBRATORS)
    assert [m[0] for m in replicate.models] == paired
    assert replicate.models[3][2] == {"none": (by_key[0][5, "none"][TARGET], by_key[1][5, "none"][TARGET])}

    data = json.loads(json.dumps(replicate.to_dict(), allow_nan=False))
    assert data["unpaired"] == {"first": [0, 1], "replicate": [12, 13]} and len(data["proxies"]) == 5
    text = "\n".join(markdown_section(replicate, "study", "study-seed1"))
    assert "## Retraining spread: `study` against its replicate `study-seed1`" in text
    assert all(f"| `{p}` |" in text for p in PROXIES) and "10 paired models, 19 (model, calibrator)" in text


def test_pairs_can_join_other_labels_and_retraining_noise_shows():
    """Explicit pairs join trials labelled differently; the same analysis with equal labels gives the same
    numbers. A replicate trained with more noise moves the target more."""
    first = analyze(_points(range(10), seed=0), n_boot=0)
    same = compare_replicate(first, analyze(_points(range(10), seed=1), n_boot=0))
    named = compare_replicate(first, analyze(_points(range(10), seed=1, label=lambda t: f"r{t}"), n_boot=0),
                              pairs=[(t, f"r{t}") for t in range(10)])
    assert [(r.proxy, r.spearman, r.replicate_spearman) for r in named.proxies] == [
        (r.proxy, r.spearman, r.replicate_spearman) for r in same.proxies]
    assert named.pairs[0] == (0, "r0") and named.targets == same.targets
    noisy = compare_replicate(first, analyze(_points(range(10), seed=1, noise=0.2), n_boot=0))
    assert noisy.targets[0].median_abs_change > same.targets[0].median_abs_change
    assert noisy.targets[0].spearman < same.targets[0].spearman


def test_too_few_pairs_say_so_and_bad_pairs_are_errors():
    first = analyze(_points(range(8), seed=0), n_boot=0)
    few = compare_replicate(first, analyze(_points(range(5, 12), seed=1), n_boot=0))  # trials 5, 6, 7
    assert len(few.pairs) == 3 and all(math.isnan(r.spearman) for r in few.proxies)
    assert {r.note for r in few.proxies} == {"fewer than 5 trials (3)"}
    assert math.isnan(few.order_spearman) and few.top == (None, None) and few.same_top_family is None
    assert {r.note for r in few.targets} == {"fewer than 5 models (3)"} and few.targets[0].n_models == 3
    assert "a study ranks no proxy first" in "\n".join(markdown_section(few, "a", "b"))
    json.dumps(few.to_dict(), allow_nan=False)

    with pytest.raises(AnalysisError, match="no paired trial"):
        compare_replicate(first, analyze(_points(range(20, 26), seed=1), n_boot=0))
    with pytest.raises(AnalysisError, match="trial 30"):
        compare_replicate(first, first, pairs=[(0, 30)])
    with pytest.raises(AnalysisError, match="twice"):
        compare_replicate(first, first, pairs=[(0, 1), (1, 1)])
    other = [Point(p.trial, "isotonic", None, p.metrics) for p in _points(range(8), seed=1)
             if p.calibrator == "none"]
    with pytest.raises(AnalysisError, match="share no calibrator"):
        compare_replicate(first, analyze(other, n_boot=0))
    with pytest.raises(AnalysisError, match="sweep/acc_cost_auc"):
        compare_replicate(first, first, target="sweep/acc_cost_auc")
