"""Failure-prediction metrics against brute-force pure-Python loops and hand-worked cases."""

from __future__ import annotations

import itertools
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from eeopt.core.metrics import (
    RiskCoverage,
    aupr_error,
    aurc,
    auroc,
    eaurc,
    eefp,
    exit_target,
    fpr95,
    risk_coverage,
)

SEEDS = [0, 1, 2, 3, 4, 5]


# --------------------------------------------------------------------------------------------------- references
def ref_auroc(score, correct):
    """Count all (correct, wrong) pairs; a tie counts half."""
    pos = [s for s, c in zip(score, correct) if c]
    neg = [s for s, c in zip(score, correct) if not c]
    if not pos or not neg:
        return float("nan")
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return wins / (len(pos) * len(neg))


def ref_aupr_error(score, correct):
    """Errors are positives ranked by -score: sum over distinct thresholds of (recall step) * precision."""
    n_err = sum(1 for c in correct if not c)
    if n_err == 0:
        return float("nan")
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(score)):  # -score >= -t  <=>  score <= t; increasing t = decreasing -score threshold
        tp = sum(1 for s, c in zip(score, correct) if s <= t and not c)
        fp = sum(1 for s, c in zip(score, correct) if s <= t and c)
        recall = tp / n_err
        total += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return total


def ref_fpr95(score, correct):
    n_pos = sum(1 for c in correct if c)
    n_neg = len(correct) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    for t in sorted(set(score), reverse=True):
        tp = sum(1 for s, c in zip(score, correct) if s >= t and c)
        fp = sum(1 for s, c in zip(score, correct) if s >= t and not c)
        if Fraction(tp, n_pos) >= Fraction(95, 100):
            return fp / n_neg
    raise AssertionError("unreachable: the lowest threshold accepts everything")


def ref_aurc_ordered(errors_in_order):
    total, errs = 0.0, 0
    for i, e in enumerate(errors_in_order, start=1):
        errs += e
        total += errs / i
    return total / len(errors_in_order)


def ref_aurc(score, correct):
    """Average the plain AURC over every ordering within each group of equal scores (all orders equally likely)."""
    groups = {}
    for s, c in zip(score, correct):
        groups.setdefault(s, []).append(0 if c else 1)
    blocks = [groups[s] for s in sorted(groups, reverse=True)]
    per_block = [list(itertools.permutations(b)) for b in blocks]
    values = [ref_aurc_ordered([e for block in combo for e in block]) for combo in itertools.product(*per_block)]
    return sum(values) / len(values)


def ref_exit_target(correct):
    k_exits, n = len(correct), len(correct[0])
    out = []
    for k in range(k_exits - 1):
        row = []
        for i in range(n):
            later = any(correct[j][i] for j in range(k + 1, k_exits))
            row.append(bool(correct[k][i]) or not later)
        out.append(row)
    return out


def random_case(seed, n=120, levels=None):
    """Scores correlated with correctness; `levels` rounds scores onto that many values to force ties."""
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < rng.uniform(0.2, 0.9)
    score = rng.normal(size=n) + 1.2 * correct
    if levels is not None:
        score = np.floor((score - score.min()) / (np.ptp(score) + 1e-9) * levels) / levels
    return score, correct


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


# --------------------------------------------------------------------------------------------------- random data
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("levels", [None, 5, 20])
def test_ranking_metrics_match_reference(seed, levels):
    score, correct = random_case(seed, levels=levels)
    s, c = score.tolist(), correct.tolist()
    assert same(auroc(score, correct), ref_auroc(s, c))
    assert same(aupr_error(score, correct), ref_aupr_error(s, c))
    assert same(fpr95(score, correct), ref_fpr95(s, c))


@pytest.mark.parametrize("seed", SEEDS)
def test_aurc_without_ties_is_the_plain_sorted_answer(seed):
    score, correct = random_case(seed, n=150)
    assert len(set(score.tolist())) == score.size
    errors_in_order = [0 if correct[i] else 1 for i in np.argsort(-score)]
    assert aurc(score, correct) == pytest.approx(ref_aurc_ordered(errors_in_order), abs=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_aurc_with_ties_matches_average_over_tie_orderings(seed):
    rng = np.random.default_rng(seed)
    n = 8
    score = rng.integers(0, 4, size=n).astype(float)  # four levels over eight samples: many ties
    correct = rng.random(n) < 0.5
    expected = ref_aurc(score.tolist(), correct.tolist())
    assert aurc(score, correct) == pytest.approx(expected, abs=1e-12)
    rc = risk_coverage(score, correct)
    assert rc.risk.mean() == pytest.approx(expected, abs=1e-12)
    r = 1 - correct.mean()
    assert eaurc(score, correct) == pytest.approx(expected - (r + (1 - r) * math.log(1 - r) if r < 1 else 1), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_aurc_does_not_depend_on_input_order(seed):
    score, correct = random_case(seed, n=200, levels=6)
    rng = np.random.default_rng(100 + seed)
    base = aurc(score, correct)
    curve = risk_coverage(score, correct)
    for _ in range(5):
        perm = rng.permutation(score.size)
        assert aurc(score[perm], correct[perm]) == pytest.approx(base, abs=1e-12)
        np.testing.assert_allclose(risk_coverage(score[perm], correct[perm]).risk, curve.risk, atol=1e-12)
        assert auroc(score[perm], correct[perm]) == pytest.approx(auroc(score, correct), abs=1e-12)
        assert fpr95(score[perm], correct[perm]) == pytest.approx(fpr95(score, correct), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_risk_coverage_curve(seed):
    score, correct = random_case(seed, n=50, levels=4)
    rc = risk_coverage(score, correct)
    assert isinstance(rc, RiskCoverage)
    assert rc.coverage.shape == rc.risk.shape == (50,)
    np.testing.assert_allclose(rc.coverage, np.arange(1, 51) / 50)
    assert rc.risk[-1] == pytest.approx(1 - correct.mean())  # everything accepted: the error rate
    assert rc.risk.mean() == pytest.approx(aurc(score, correct), abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_eaurc_is_non_negative_and_perfect_ranking_is_optimal(seed):
    rng = np.random.default_rng(seed)
    n = 7
    correct = rng.random(n) < 0.6
    score = rng.normal(size=n)
    perfect = correct.astype(float)  # every correct sample above every wrong one (ties only within a class)
    # brute force: no ordering of these samples has a lower AURC than the perfect ranking
    best = min(ref_aurc_ordered([0 if c else 1 for c in order]) for order in itertools.permutations(correct.tolist()))
    assert aurc(perfect, correct) == pytest.approx(best, abs=1e-12)
    assert eaurc(perfect, correct) >= -1e-12
    assert eaurc(score, correct) >= eaurc(perfect, correct) - 1e-12


@pytest.mark.parametrize("k_exits", [1, 2, 4])
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_exit_target_and_eefp_match_reference(seed, k_exits):
    rng = np.random.default_rng(seed)
    n = 60
    correct = rng.random((k_exits, n)) < np.linspace(0.3, 0.8, k_exits)[:, None]
    scores = np.round(rng.normal(size=(k_exits, n)) + correct, 1)  # rounded: ties
    target = exit_target(correct)
    assert target.dtype == bool and target.shape == (k_exits - 1, n)
    assert target.tolist() == ref_exit_target(correct.tolist())
    out = eefp(scores, correct)
    assert out.shape == (k_exits,)
    assert np.isnan(out[-1])
    for k in range(k_exits - 1):
        assert same(out[k], ref_auroc(scores[k].tolist(), ref_exit_target(correct.tolist())[k]))


# --------------------------------------------------------------------------------------------------- hand cases
def test_perfect_reversed_and_constant_rankings():
    correct = [1, 1, 0, 0]
    assert auroc([4, 3, 2, 1], correct) == 1.0
    assert auroc([1, 2, 3, 4], correct) == 0.0
    assert auroc([1, 1, 1, 1], correct) == 0.5  # all pairs tied
    assert aupr_error([4, 3, 2, 1], correct) == pytest.approx(1.0)
    assert fpr95([4, 3, 2, 1], correct) == 0.0
    assert fpr95([1, 2, 3, 4], correct) == 1.0
    # perfect: risks 0, 0, 1/3, 2/4 -> AURC = (1/3 + 1/2) / 4 = 5/24; the continuous optimum for r = .5 is
    # .5 + .5 ln .5, so E-AURC = 5/24 - .5 - .5 ln .5 (a small positive finite-N gap)
    assert aurc([4, 3, 2, 1], correct) == pytest.approx(5 / 24)
    assert eaurc([4, 3, 2, 1], correct) == pytest.approx(5 / 24 - 0.5 - 0.5 * math.log(0.5))
    # reversed: risks 1, 1, 2/3, 2/4 -> AURC = (1 + 1 + 2/3 + 1/2) / 4 = 19/24
    assert aurc([1, 2, 3, 4], correct) == pytest.approx(19 / 24)


def test_eaurc_of_a_perfect_ranking_vanishes_as_n_grows():
    rng = np.random.default_rng(0)
    correct = rng.random(20_000) < 0.7
    assert 0 <= eaurc(correct.astype(float), correct) < 1e-4


def test_ties_are_taken_in_expectation():
    # all scores equal, two of four wrong: in expectation the error rate among the first i is 1/2 for every i,
    # whereas the input order (correct, wrong, wrong, correct) would give risks 0, 1/2, 2/3, 1/2
    rc = risk_coverage([0.5] * 4, [1, 0, 0, 1])
    np.testing.assert_allclose(rc.risk, [0.5] * 4)
    assert aurc([0.5] * 4, [1, 0, 0, 1]) == pytest.approx(0.5)


def test_fpr95_hand_case_with_a_tie_at_the_threshold():
    # 20 correct samples scored 100, 99, ..., 81; TPR >= .95 needs 19 of them, reached first at threshold 82.
    # 10 errors scored 90, 85, 82, 81.5, 40, 30, 20, 10, 5, 1: at threshold 82 (score >= 82) three are accepted,
    # including the one tied with a correct sample at 82 -> FPR = 3/10. TPR is exactly .95 there; requiring
    # TPR > .95 instead would move on to threshold 81 and give 4/10.
    score = list(range(100, 80, -1)) + [90, 85, 82, 81.5, 40, 30, 20, 10, 5, 1]
    correct = [True] * 20 + [False] * 10
    assert fpr95(score, correct) == pytest.approx(0.3)


def test_aupr_error_hand_case():
    # scores .9 (correct), .8 (error), .7 (correct), .6 (error); errors ranked by -score: .6, .7, .8, .9
    # thresholds: {.6}: P 1, R 1/2; {.6, .7}: P 1/2, R 1/2; {.6, .7, .8}: P 2/3, R 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert aupr_error([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)


def test_undefined_cases():
    everything_right, everything_wrong = [True] * 3, [False] * 3
    score = [0.1, 0.5, 0.9]
    for correct in (everything_right, everything_wrong):
        assert math.isnan(auroc(score, correct))
        assert math.isnan(fpr95(score, correct))
    assert math.isnan(aupr_error(score, everything_right))  # no errors: recall undefined
    assert aupr_error(score, everything_wrong) == 1.0  # every sample is an error: precision 1 everywhere
    assert aurc(score, everything_right) == 0.0 and eaurc(score, everything_right) == 0.0
    assert aurc(score, everything_wrong) == 1.0 and eaurc(score, everything_wrong) == 0.0


def test_single_sample():
    assert math.isnan(auroc([0.3], [True]))
    assert math.isnan(fpr95([0.3], [False]))
    assert aurc([0.3], [False]) == 1.0
    assert risk_coverage([0.3], [True]).risk.tolist() == [0.0]


def test_exit_target_hand_case():
    # columns are samples, rows exits 1..3; target[k] = correct at k or no later exit correct
    correct = np.array(
        [
            [1, 0, 0, 0, 1, 0],
            [1, 1, 0, 0, 0, 1],
            [1, 1, 0, 1, 0, 0],
        ],
        dtype=bool,
    )
    expected = [
        [True, False, True, False, True, False],  # s1, s3, s5 are fixed later
        [True, True, True, False, True, True],  # only s3 is fixed by exit 3
    ]
    assert exit_target(correct).tolist() == expected
    # exit 1 scores rank the "loses nothing" samples first: AUROC 1; the last exit is NaN
    scores = np.array([[0.9, 0.1, 0.8, 0.2, 0.7, 0.3], [0.5] * 6, [0.5] * 6])
    out = eefp(scores, correct)
    assert out[0] == 1.0 and out[1] == 0.5 and np.isnan(out[2])


def test_eefp_nan_where_target_is_constant_and_for_one_exit():
    correct = np.array([[1, 1, 1], [0, 1, 0]], dtype=bool)  # exit 1 always right: target all True
    assert np.isnan(eefp(np.ones((2, 3)), correct)).all()
    assert exit_target(correct[:1]).shape == (0, 3)
    assert np.isnan(eefp([[0.1, 0.2, 0.3]], [[1, 0, 1]])).tolist() == [True]


def test_no_warnings_leak_on_edge_cases():
    cases = [([0.1, 0.5, 0.9], [True] * 3), ([0.1, 0.5, 0.9], [False] * 3), ([0.4], [True]), ([0.2] * 3, [1, 0, 1])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for score, correct in cases:
            for fn in (auroc, aupr_error, fpr95, aurc, eaurc, risk_coverage):
                fn(score, correct)
        eefp(np.ones((3, 3)), np.ones((3, 3), dtype=bool))


# --------------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("fn", [auroc, aupr_error, fpr95, aurc, eaurc, risk_coverage])
def test_reject_bad_input(fn):
    with pytest.raises(ValueError, match="same length"):
        fn([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        fn([[0.1, 0.2]], [[True, False]])
    with pytest.raises(ValueError, match="NaN or inf"):
        fn([0.1, np.nan], [True, False])
    with pytest.raises(ValueError, match="boolean"):
        fn([0.1, 0.2], [0, 3])


def test_exit_metrics_reject_bad_input():
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        exit_target([True, False])
    with pytest.raises(ValueError, match="empty"):
        exit_target(np.zeros((2, 0), dtype=bool))
    with pytest.raises(ValueError, match="same shape"):
        eefp(np.zeros((2, 3)), np.zeros((2, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        eefp(np.zeros(3), np.zeros((1, 3), dtype=bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        eefp([[0.1, np.inf]], [[True, False]])


# --------------------------------------------------------------------------------------------------- one sort
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("levels", [None, 7])
def test_metrics_agree_with_scikit_learn_at_scale(seed, levels):
    from sklearn.metrics import average_precision_score, roc_auc_score

    score, correct = random_case(seed, n=20_000, levels=levels)
    assert auroc(score, correct) == pytest.approx(roc_auc_score(correct, score), abs=1e-12)
    assert aupr_error(score, correct) == pytest.approx(average_precision_score(~correct, -score), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_failure_metrics_from_one_sort_equal_the_single_metrics(seed):
    from eeopt.core.metrics.failure import failure_metrics, rank_scores

    rng = np.random.default_rng(seed)
    correct = rng.random((3, 500)) < [[0.5], [0.7], [0.9]]
    scores = np.round(rng.normal(size=(3, 500)) + correct, 1)  # ties
    target = exit_target(correct)
    expected_eefp = eefp(scores, correct)
    for k in range(2):
        got = failure_metrics(rank_scores(scores[k]), correct[k], target[k])
        assert got == {
            "auroc": auroc(scores[k], correct[k]), "aupr_error": aupr_error(scores[k], correct[k]),
            "fpr95": fpr95(scores[k], correct[k]), "aurc": aurc(scores[k], correct[k]),
            "eaurc": eaurc(scores[k], correct[k]), "eefp": expected_eefp[k],
        }
