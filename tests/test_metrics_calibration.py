"""Calibration metrics against brute-force pure-Python loops and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eeopt.core.metrics import ReliabilityBins, adaptive_ece, brier, ece, mce, nll, reliability_bins

SEEDS = [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------- references
def ref_bins(conf, correct, n_bins):
    """Loop over samples and bins; bin b is (b/n, (b+1)/n], a confidence of 0 goes to bin 0."""
    members = [[] for _ in range(n_bins)]
    for c, y in zip(conf, correct):
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            if lo < c <= hi or (b == 0 and c == 0):
                members[b].append((float(c), float(y)))
                break
    return members


def ref_ece(conf, correct, n_bins):
    total = 0.0
    for m in ref_bins(conf, correct, n_bins):
        if m:
            gap = abs(sum(c for c, _ in m) / len(m) - sum(y for _, y in m) / len(m))
            total += len(m) / len(conf) * gap
    return total


def ref_mce(conf, correct, n_bins):
    gaps = []
    for m in ref_bins(conf, correct, n_bins):
        if m:
            gaps.append(abs(sum(c for c, _ in m) / len(m) - sum(y for _, y in m) / len(m)))
    return max(gaps)


def ref_adaptive_ece(conf, correct, n_bins):
    order = sorted(range(len(conf)), key=lambda i: conf[i])  # Python's sort is stable
    n = len(conf)
    base, extra = divmod(n, n_bins)
    total, pos = 0.0, 0
    for b in range(n_bins):
        size = base + (1 if b < extra else 0)
        chunk = order[pos : pos + size]
        pos += size
        if chunk:
            gap = abs(sum(conf[i] for i in chunk) / size - sum(correct[i] for i in chunk) / size)
            total += size / n * gap
    return total


def ref_brier(probs, labels):
    total = 0.0
    for row, y in zip(probs, labels):
        for c, p in enumerate(row):
            total += (p - (1.0 if c == y else 0.0)) ** 2
    return total / len(labels)


def ref_nll(logits, labels):
    """-log softmax(z)[y] = log(sum_c exp(z_c - z_y)), summed in math.fsum."""
    total = 0.0
    for row, y in zip(logits, labels):
        total += math.log(math.fsum(math.exp(z - row[y]) for z in row))
    return total / len(labels)


def random_case(seed, n=301, c=5, round_to=None):  # 301: not a multiple of 4 or 15
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * rng.uniform(0.5, 3.0)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, c, size=n)
    conf = probs.max(1)
    if round_to is not None:
        conf = np.round(conf, round_to)  # deliberate ties, and values landing on bin edges
    correct = probs.argmax(1) == labels
    return probs, labels, conf, correct


# --------------------------------------------------------------------------------------------------- random data
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [1, 4, 15])
@pytest.mark.parametrize("round_to", [None, 1, 2])
def test_binned_metrics_match_reference(seed, n_bins, round_to):
    _, _, conf, correct = random_case(seed, round_to=round_to)
    assert ece(conf, correct, n_bins) == pytest.approx(ref_ece(conf, correct, n_bins), abs=1e-12)
    assert mce(conf, correct, n_bins) == pytest.approx(ref_mce(conf, correct, n_bins), abs=1e-12)
    assert adaptive_ece(conf, correct, n_bins) == pytest.approx(ref_adaptive_ece(conf, correct, n_bins), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_reliability_bins_match_reference(seed):
    _, _, conf, correct = random_case(seed, round_to=2)
    bins = reliability_bins(conf, correct, n_bins=10)
    assert isinstance(bins, ReliabilityBins)
    assert bins.edges.tolist() == [b / 10 for b in range(11)]
    for b, m in enumerate(ref_bins(conf, correct, 10)):
        assert bins.count[b] == len(m)
        if m:
            assert bins.mean_confidence[b] == pytest.approx(sum(c for c, _ in m) / len(m), abs=1e-12)
            assert bins.accuracy[b] == pytest.approx(sum(y for _, y in m) / len(m), abs=1e-12)
        else:
            assert np.isnan(bins.mean_confidence[b]) and np.isnan(bins.accuracy[b])


@pytest.mark.parametrize("seed", SEEDS)
def test_brier_and_nll_match_reference(seed):
    probs, labels, _, _ = random_case(seed, n=200, c=7)
    probs[0, labels[0]] = 0.0
    assert brier(probs, labels) == pytest.approx(ref_brier(probs.tolist(), labels.tolist()), rel=1e-12)
    logits = np.random.default_rng(seed).normal(size=(200, 7)) * 8
    logits[0, labels[0]] = -60.0  # a confidently wrong sample: its loss is ~60 + log(sum), never clipped
    assert nll(logits, labels) == pytest.approx(ref_nll(logits.tolist(), labels.tolist()), rel=1e-12)


def test_nll_is_exact_for_confidently_wrong_samples():
    # logits [0, 40], label 0: -log softmax = log(1 + e^40) = 40 + log(1 + e^-40); a clipped probability gave 27.63
    assert nll([[0.0, 40.0]], [0]) == pytest.approx(40.0, abs=1e-15)
    assert nll([[0.0, 1000.0]], [0]) == pytest.approx(1000.0)
    # the log-softmax of log-probabilities is the log-probabilities: -log p_label, for any p > 0
    p = np.array([[1e-30, 1 - 1e-30]])
    assert nll(np.log(p), [0]) == pytest.approx(-math.log(1e-30), rel=1e-12)


# --------------------------------------------------------------------------------------------------- hand cases
def test_hand_worked_ece_and_mce():
    # 2 bins (0, .5], (.5, 1]. Bin 0: conf .2, .4 -> mean .3, acc 1/2 -> gap .2, weight .5.
    # Bin 1: conf .9, 1.0 -> mean .95, acc 1 -> gap .05, weight .5.  ECE = .1 + .025 = .125, MCE = .2.
    conf, correct = [0.2, 0.4, 0.9, 1.0], [1, 0, 1, 1]
    assert ece(conf, correct, n_bins=2) == pytest.approx(0.125)
    assert mce(conf, correct, n_bins=2) == pytest.approx(0.2)


def test_perfectly_calibrated_and_worst_case():
    # confidence .75 on four samples, three correct: one bin with gap 0
    assert ece([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)
    # fully confident and always wrong: ECE = MCE = 1
    assert ece([1.0] * 3, [False] * 3) == pytest.approx(1.0)
    assert mce([1.0] * 3, [False] * 3) == pytest.approx(1.0)


def test_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    # 4 bins, edges 0, .25, .5, .75, 1 (exact in binary): .25 -> bin 0, .5 -> 1, .75 -> 2, 1 -> 3, and 0 -> bin 0
    bins = reliability_bins([0.0, 0.25, 0.5, 0.75, 1.0], [1, 1, 1, 1, 1], n_bins=4)
    assert bins.count.tolist() == [2, 1, 1, 1]
    assert bins.mean_confidence[0] == pytest.approx(0.125)
    # 15 bins: 0.2 == 3/15 and 0.6 == 9/15 as floats, so they close bins 2 and 8 (0-based)
    counts = reliability_bins([0.2, 0.6], [1, 1], n_bins=15).count
    assert np.flatnonzero(counts).tolist() == [2, 8]
    # every returned edge, used as a confidence, lands in the bin it closes
    for n_bins in (3, 7, 15):
        edges = reliability_bins([0.5], [1], n_bins).edges
        counts = reliability_bins(edges[1:], np.ones(n_bins), n_bins).count
        assert counts.tolist() == [1] * n_bins


def test_single_sample():
    # one sample, confidence .7, correct: every variant of ECE is |.7 - 1| = .3
    assert ece([0.7], [True]) == pytest.approx(0.3)
    assert mce([0.7], [True]) == pytest.approx(0.3)
    assert adaptive_ece([0.7], [True]) == pytest.approx(0.3)
    assert brier([[0.3, 0.7]], [1]) == pytest.approx(0.18)  # .3^2 + .3^2


def test_adaptive_ece_with_fewer_samples_than_bins():
    # N = 3 < 15 bins: each sample is its own chunk, so adaptive ECE = mean |conf - correct| = (.1 + .6 + .3) / 3
    assert adaptive_ece([0.9, 0.6, 0.3], [1, 0, 0], n_bins=15) == pytest.approx(1 / 3)


def test_adaptive_ece_equal_mass_hand_case():
    # 4 samples, 2 chunks after sorting: {.1 wrong, .2 correct} -> |.15 - .5| = .35; {.8, .9 both correct} -> .15
    # weights 1/2 each: (.35 + .15) / 2 = .25
    assert adaptive_ece([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 1], n_bins=2) == pytest.approx(0.25)


def test_adaptive_ece_uneven_chunks_hand_case():
    # 5 samples, 2 chunks: np.array_split gives sizes 3, 2 (the extra sample goes to the first, low-confidence chunk)
    # chunk {.1 w, .2 c, .3 c}: |.2 - 2/3| = 7/15, weight 3/5; chunk {.8 c, .9 c}: |.85 - 1| = .15, weight 2/5
    # -> 3/5 * 7/15 + 2/5 * .15 = .28 + .06 = .34
    assert adaptive_ece([0.3, 0.9, 0.1, 0.8, 0.2], [1, 1, 0, 1, 1], n_bins=2) == pytest.approx(0.34)


def test_brier_and_nll_hand_case():
    # sample 0: p = (1, 0), label 0 -> brier 0; sample 1: p = (.5, .5), label 1 -> brier .5
    probs, labels = [[1.0, 0.0], [0.5, 0.5]], [0, 1]
    assert brier(probs, labels) == pytest.approx(0.25)
    # logits (log 3, 0) -> p = (3/4, 1/4): label 0 costs log(4/3), label 1 costs log 4; equal logits cost log 2
    assert nll([[math.log(3), 0.0], [2.0, 2.0]], [0, 1]) == pytest.approx((math.log(4 / 3) + math.log(2)) / 2)
    assert nll([[math.log(3), 0.0]], [1]) == pytest.approx(math.log(4))


def test_accepts_array_likes_and_numeric_correct():
    conf = [0.2, 0.9, 0.6]
    assert ece(conf, [0, 1, 1]) == ece(np.array(conf), np.array([False, True, True]))
    assert ece(conf, [0.0, 1.0, 1.0]) == ece(conf, [False, True, True])
    assert brier([[0.4, 0.6]], [1.0]) == brier(np.array([[0.4, 0.6]]), np.array([1]))


# --------------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("fn", [ece, mce, adaptive_ece, reliability_bins])
def test_binned_metrics_reject_bad_input(fn):
    with pytest.raises(ValueError, match="same length"):
        fn([0.5, 0.6], [1])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        fn([[0.5, 0.6]], [[1, 0]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn([0.5, 1.2], [1, 0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn([0.5, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="boolean"):
        fn([0.5, 0.6], [1, 2])
    with pytest.raises(ValueError, match="n_bins"):
        fn([0.5], [1], n_bins=0)
    with pytest.raises(ValueError, match="n_bins"):
        fn([0.5], [1], n_bins=2.5)


@pytest.mark.parametrize("fn", [brier, nll])
def test_probability_metrics_reject_bad_input(fn):
    with pytest.raises(ValueError, match="same N"):
        fn([[0.5, 0.5], [0.2, 0.8]], [0])
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"must have shape \[N, C\]"):
        fn([0.5, 0.5], [0, 1])
    with pytest.raises(ValueError, match=r"labels must have shape \[N\]"):
        fn([[0.5, 0.5]], [[0]])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        fn([[0.5, 0.5]], [2])
    with pytest.raises(ValueError, match="integers"):
        fn([[0.5, 0.5]], [0.5])
    with pytest.raises(ValueError, match="NaN or inf"):
        fn([[np.nan, 0.5]], [0])
