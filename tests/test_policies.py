"""Threshold and patience policies against per-sample brute force; the policy file format."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eeopt.core import policies
from eeopt.errors import ConfigError
from eeopt.core.policies import (
    PolicyEvaluation,
    ThresholdPolicy,
    evaluate_patience,
    evaluate_thresholds,
    patience_exits,
    threshold_exits,
)


# ------------------------------------------------------------------------------------------------ brute force
def brute_exit(score_column, thresholds) -> int:
    """First non-final exit whose score reaches its threshold, else the last exit (plain Python)."""
    k = len(score_column)
    for e in range(k - 1):
        if score_column[e] >= thresholds[e]:  # False for NaN
            return e
    return k - 1


def brute_evaluate(scores, correct, costs, thresholds):
    k, n = scores.shape
    acc, cost, share = [], [], []
    for t in thresholds:
        exits = [brute_exit(scores[:, j], t) for j in range(n)]
        acc.append(sum(bool(correct[e, j]) for j, e in enumerate(exits)) / n)
        cost.append(sum(costs[e] for e in exits) / n)
        share.append([exits.count(e) / n for e in range(k)])
    return np.array(acc), np.array(cost), np.array(share).reshape(len(thresholds), k)


def random_case(seed: int, k: int, n: int, m: int, nan_scores: bool = False):
    """Rounded scores (many ties), thresholds drawn from the scores themselves (exact ties) or +-inf."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((k, n)), 1)
    if nan_scores:
        scores[rng.random((k, n)) < 0.1] = np.nan
    correct = rng.random((k, n)) < 0.6
    costs = np.cumsum(rng.random(k) + 0.1)
    thresholds = rng.choice(np.round(np.linspace(0, 1, 11), 1), size=(m, k - 1))
    thresholds[rng.random((m, k - 1)) < 0.15] = np.inf
    thresholds[rng.random((m, k - 1)) < 0.15] = -np.inf
    return scores, correct, costs, thresholds


# ------------------------------------------------------------------------------------------------ threshold policies
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_exits_match_brute_force(k, seed):
    scores, _, _, thresholds = random_case(seed, k, 70, 25, nan_scores=seed == 2)
    exits = threshold_exits(scores, thresholds)
    assert exits.shape == (25, 70)
    expected = [[brute_exit(scores[:, j], t) for j in range(70)] for t in thresholds]
    np.testing.assert_array_equal(exits, expected)
    np.testing.assert_array_equal(threshold_exits(scores, thresholds[3]), expected[3])  # one policy: [N]


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_evaluate_thresholds_matches_brute_force(k, seed):
    scores, correct, costs, thresholds = random_case(seed, k, 150, 40, nan_scores=seed == 3)
    result = evaluate_thresholds(scores, correct, costs, thresholds)
    assert isinstance(result, PolicyEvaluation)
    acc, cost, share = brute_evaluate(scores, correct, costs, thresholds)
    np.testing.assert_allclose(result.accuracy, acc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.mean_cost, cost, rtol=1e-12)
    np.testing.assert_allclose(result.exit_share, share, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_thresholds_with_tiny_chunks_and_blocks(monkeypatch, seed):
    """Force many policy blocks and cache chunks (and N not a multiple of 64) so every boundary path runs."""
    scores, correct, costs, thresholds = random_case(seed, 5, 200, 53)
    words = -(-200 // 64)
    monkeypatch.setattr(policies, "_CHUNK_BYTES", 8 * words * 3)  # 3 policies per chunk
    monkeypatch.setattr(policies, "_BLOCK_BYTES", 8 * words * 11)  # 11 policies per block
    monkeypatch.setattr(policies, "_MIN_BLOCK", 1)
    result = evaluate_thresholds(scores, correct, costs, thresholds)
    acc, cost, share = brute_evaluate(scores, correct, costs, thresholds)
    np.testing.assert_allclose(result.accuracy, acc, atol=1e-12)
    np.testing.assert_allclose(result.mean_cost, cost, rtol=1e-12)
    np.testing.assert_allclose(result.exit_share, share, atol=1e-12)


def test_evaluate_thresholds_agrees_with_exits_on_synthetic_outputs(outputs_pair):
    val, _ = outputs_pair
    scores, correct, costs = val.confidence, val.correct, val.costs
    rng = np.random.default_rng(7)
    thresholds = rng.uniform(0.2, 1.0, size=(300, val.num_exits - 1))
    result = evaluate_thresholds(scores, correct, costs, thresholds)
    exits = threshold_exits(scores, thresholds).astype(np.int64)
    samples = np.arange(val.num_samples)
    np.testing.assert_allclose(result.accuracy, correct[exits, samples].mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(result.mean_cost, costs[exits].mean(axis=1), rtol=1e-12)
    for e in range(val.num_exits):
        np.testing.assert_allclose(result.exit_share[:, e], (exits == e).mean(axis=1), atol=1e-12)


def test_single_exit_and_single_policy_shapes():
    rng = np.random.default_rng(0)
    scores, correct = rng.random((1, 30)), rng.random((1, 30)) < 0.5
    result = evaluate_thresholds(scores, correct, [2.0], np.zeros((4, 0)))
    np.testing.assert_allclose(result.accuracy, correct[0].mean())
    np.testing.assert_allclose(result.mean_cost, 2.0)
    np.testing.assert_allclose(result.exit_share, np.ones((4, 1)))
    np.testing.assert_array_equal(threshold_exits(scores, np.zeros((4, 0))), np.zeros((4, 30)))

    scores, correct = rng.random((3, 30)), rng.random((3, 30)) < 0.5
    one = evaluate_thresholds(scores, correct, [1.0, 2.0, 3.0], [0.5, 0.7])
    assert one.accuracy.shape == (1,) and one.exit_share.shape == (1, 3)
    never = evaluate_thresholds(scores, correct, [1.0, 2.0, 3.0], [[np.inf, np.inf], [-np.inf, 0.0]])
    np.testing.assert_allclose(never.exit_share, [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_allclose(never.accuracy, [correct[2].mean(), correct[0].mean()])
    # an exit that no policy uses (all +inf) and one that every policy uses (all -inf)
    thresholds = [[np.inf, 0.5], [np.inf, -np.inf], [np.inf, 0.2]]
    result = evaluate_thresholds(scores, correct, [1.0, 2.0, 3.0], thresholds)
    acc, cost, share = brute_evaluate(scores, correct, np.array([1.0, 2.0, 3.0]), np.array(thresholds))
    np.testing.assert_allclose(result.accuracy, acc, atol=1e-12)
    np.testing.assert_allclose(result.exit_share, share, atol=1e-12)
    result = evaluate_thresholds(scores, correct, [1.0, 2.0, 3.0], [[-np.inf, 0.5], [-np.inf, np.inf]])
    np.testing.assert_allclose(result.exit_share, [[1, 0, 0], [1, 0, 0]])


def test_bad_threshold_inputs():
    scores, correct = np.zeros((3, 5)), np.ones((3, 5), dtype=bool)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_thresholds(scores, correct, [1, 2, 3], [[0.1, np.nan]])
    with pytest.raises(ValueError, match="K-1"):
        evaluate_thresholds(scores, correct, [1, 2, 3], [[0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="correct"):
        evaluate_thresholds(scores, correct[:2], [1, 2, 3], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="costs"):
        evaluate_thresholds(scores, correct, [1, 2], [[0.1, 0.2]])


def test_popcount_fallback_matches_bit_counting():
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**63, size=(5, 7), dtype=np.uint64) | np.uint64(1 << 63)
    out = np.empty(words.shape, dtype=np.uint8)
    policies._popcount_table(words, out)
    np.testing.assert_array_equal(out, [[bin(int(w)).count("1") for w in row] for row in words])


# ------------------------------------------------------------------------------------------------ patience
def brute_patience_exit(pred_column, patience: int) -> int:
    k = len(pred_column)
    for e in range(k):
        if e - patience + 1 >= 0 and len(set(pred_column[e - patience + 1 : e + 1].tolist())) == 1:
            return e
    return k - 1


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_patience_matches_brute_force(k, seed):
    rng = np.random.default_rng(seed)
    n = 200
    predictions = rng.integers(0, 3, size=(k, n))  # 3 classes: plenty of agreement runs
    labels = rng.integers(0, 3, size=n)
    correct = predictions == labels[None]
    costs = np.cumsum(rng.random(k) + 0.5)
    patiences = list(range(1, k + 2))
    for p in patiences:
        expected = [brute_patience_exit(predictions[:, j], p) for j in range(n)]
        np.testing.assert_array_equal(patience_exits(predictions, p), expected)
    result = evaluate_patience(predictions, correct, costs, patiences)
    for i, p in enumerate(patiences):
        exits = np.array([brute_patience_exit(predictions[:, j], p) for j in range(n)])
        assert result.accuracy[i] == pytest.approx(correct[exits, np.arange(n)].mean(), abs=1e-12)
        assert result.mean_cost[i] == pytest.approx(costs[exits].mean(), rel=1e-12)
        np.testing.assert_allclose(result.exit_share[i], np.bincount(exits, minlength=k) / n, atol=1e-12)
    np.testing.assert_array_equal(patience_exits(predictions, 1), np.zeros(n))  # P = 1: the first exit


def test_patience_rejects_bad_values():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="patience"):
            patience_exits(np.zeros((3, 4), dtype=int), bad)


# ------------------------------------------------------------------------------------------------ policy files
def test_threshold_policy_round_trip_with_infinities():
    policy = ThresholdPolicy("msp", (0.9, math.inf, -math.inf, 0.25))
    data = policy.to_dict()
    assert data == {"score": "msp", "thresholds": [0.9, "inf", "-inf", 0.25]}
    text = json.dumps(data, allow_nan=False)  # strict JSON
    back = ThresholdPolicy.from_dict(json.loads(text))
    assert back == policy
    assert back.thresholds[1] == math.inf and back.thresholds[2] == -math.inf
    # numpy thresholds become plain floats; extra keys of a search policy file are ignored
    assert ThresholdPolicy("msp", np.array([0.5, np.inf])).thresholds == (0.5, math.inf)
    assert ThresholdPolicy.from_dict({"score": "margin", "thresholds": [1], "budget": 50}).thresholds == (1.0,)
    assert ThresholdPolicy("msp", ()).to_dict() == {"score": "msp", "thresholds": []}


def test_threshold_policy_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        ThresholdPolicy("msp", (0.5, math.nan))
    with pytest.raises(ConfigError, match="policy.thresholds.1"):
        ThresholdPolicy.from_dict({"score": "msp", "thresholds": [0.5, "high"]})
    with pytest.raises(ConfigError, match="policy.thresholds.0"):
        ThresholdPolicy.from_dict({"score": "msp", "thresholds": [None]})
    with pytest.raises(ConfigError, match="policy.score"):
        ThresholdPolicy.from_dict({"thresholds": [0.5]})
