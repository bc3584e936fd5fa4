"""Post-hoc calibrators: each is checked against an independent computation (grid search, scikit-learn, loops)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import optimize, special, stats
from sklearn.isotonic import IsotonicRegression

from eeopt.core.calibration.functional import _vector_objective
from eeopt.core.calibration import (
    TOP_LABEL_CEIL_GAP,
    TOP_LABEL_MARGIN,
    top_label_probs,
    Calibrator,
    create_calibrator,
    fit_temperature,
    kendall_tau,
    list_calibrators,
    register_calibrator,
    top_label_logits,
)
from eeopt.errors import ConfigError, EeoptError, ExitOutputsError
from eeopt.core.outputs import ExitOutputs, softmax
from eeopt.core.synthetic import synthetic_exit_outputs

LOW, HIGH = 1e-6, 1e-9  # top-label clipping: [1/C + LOW, 1 - HIGH]


# --------------------------------------------------------------------------------------------------- fixtures
def _overconfident(seed: int, n: int) -> ExitOutputs:
    out = synthetic_exit_outputs(4, n, 10, seed=seed, with_scores=True)
    return out.with_logits(out.logits * 3.0)


@pytest.fixture(scope="module")
def val() -> ExitOutputs:
    return _overconfident(seed=1, n=1500)


@pytest.fixture(scope="module")
def test() -> ExitOutputs:
    return _overconfident(seed=2, n=1200)


@pytest.fixture(scope="module")
def fitted(val) -> dict[str, Calibrator]:
    return {name: create_calibrator(name).fit(val) for name in list_calibrators()}


# --------------------------------------------------------------------------------------------------- references
def ref_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    z = np.asarray(logits, dtype=np.float64)
    return float(np.mean(special.logsumexp(z, axis=1) - z[np.arange(labels.size), labels]))


def ref_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        mask = (conf > lo) & (conf <= hi)
        if b == 0:
            mask |= conf == 0
        if mask.any():
            total += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return total


def ref_tau_b(x, y) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        ties_x += dx == 0
        ties_y += dy == 0
        if dx != 0 and dy != 0:
            concordant += dx == dy
            discordant += dx != dy
    n0 = len(x) * (len(x) - 1) / 2
    return (concordant - discordant) / np.sqrt((n0 - ties_x) * (n0 - ties_y))


def clip_top(conf: np.ndarray, c: int) -> np.ndarray:
    return np.clip(conf, 1 / c + LOW, 1 - HIGH)


# --------------------------------------------------------------------------------------------------- registry
def test_registry_names():
    assert set(list_calibrators()) >= {"temperature", "vector", "histogram", "isotonic"}
    assert "none" not in list_calibrators()
    assert list_calibrators() == sorted(list_calibrators())


def test_unknown_calibrator_lists_choices():
    with pytest.raises(ConfigError, match="unknown calibrator 'platt'.*histogram, isotonic, temperature, vector"):
        create_calibrator("platt")


def test_unknown_option_is_config_error():
    with pytest.raises(ConfigError, match="calibrator 'temperature'"):
        create_calibrator("temperature", n_bins=3)
    with pytest.raises(ConfigError, match="n_bins"):
        create_calibrator("histogram", n_bins=0)
    with pytest.raises(ConfigError, match="l2"):
        create_calibrator("vector", l2=-1.0)
    assert create_calibrator("histogram", n_bins=7).n_bins == 7


def test_register_rejects_duplicates_and_non_calibrators():
    with pytest.raises(ValueError, match="already registered"):
        register_calibrator("temperature")(type("Dup", (Calibrator,), {}))
    with pytest.raises(TypeError):
        register_calibrator("not_a_calibrator")(object)
    assert "not_a_calibrator" not in list_calibrators()


# --------------------------------------------------------------------------------------------------- every calibrator
@pytest.mark.parametrize("name", list_calibrators())
def test_apply_returns_new_outputs_with_same_labels_costs_scores(name, fitted, test):
    out = fitted[name].apply(test)
    assert out is not test and isinstance(out, ExitOutputs)
    assert out.logits.shape == test.logits.shape and out.logits.dtype == np.float64
    np.testing.assert_array_equal(out.labels, test.labels)
    np.testing.assert_array_equal(out.costs, test.costs)
    np.testing.assert_array_equal(out.scores, test.scores)
    np.testing.assert_allclose(out.probs.sum(-1), 1.0, atol=1e-12)
    assert np.all(np.isfinite(out.logits))
    if name != "vector":  # vector scaling may change predictions; the others must not
        np.testing.assert_array_equal(out.predictions, test.predictions)


@pytest.mark.parametrize("name", list_calibrators())
def test_state_dict_json_round_trip(name, fitted, test):
    state = json.loads(json.dumps(fitted[name].state_dict()))
    assert state["name"] == name and state["num_exits"] == 4 and state["num_classes"] == 10
    restored = create_calibrator(name).load_state_dict(state)
    assert restored.is_fitted
    np.testing.assert_array_equal(restored.apply(test).logits, fitted[name].apply(test).logits)


@pytest.mark.parametrize("name", list_calibrators())
def test_unfitted_calibrator_raises(name, test):
    cal = create_calibrator(name)
    assert not cal.is_fitted
    with pytest.raises(EeoptError, match=f"calibrator '{name}' is not fitted: call fit\\(val\\) first"):
        cal.apply(test)
    with pytest.raises(EeoptError, match="not fitted"):
        cal.state_dict()


@pytest.mark.parametrize("name", list_calibrators())
def test_mismatched_outputs_raise(name, fitted):
    fewer_classes = synthetic_exit_outputs(4, 50, 7, seed=3)
    with pytest.raises(ExitOutputsError, match="has 7 classes .* fitted on 10 classes"):
        fitted[name].apply(fewer_classes)
    fewer_exits = synthetic_exit_outputs(3, 50, 10, seed=3)
    with pytest.raises(ExitOutputsError, match="has 3 exits .* fitted on 4 exits"):
        fitted[name].apply(fewer_exits)


@pytest.mark.parametrize("name", list_calibrators())
def test_load_state_dict_rejects_bad_state(name, fitted):
    state = fitted[name].state_dict()
    with pytest.raises(EeoptError, match="state is for calibrator"):
        create_calibrator(name).load_state_dict({**state, "name": "other"})
    bad = {**state, "num_exits": 5}  # parameters are for 4 exits
    with pytest.raises(EeoptError, match="invalid state"):
        create_calibrator(name).load_state_dict(bad)


# --------------------------------------------------------------------------------------------------- temperature
@pytest.mark.slow  # over 1.5 s on an idle core
def test_temperature_matches_grid_search(fitted, val):
    temps = fitted["temperature"].temperature
    for k in range(val.num_exits):
        z, y = val.logits[k].astype(np.float64), val.labels
        coarse = np.arange(-3, 3, 0.01)
        best = coarse[np.argmin([ref_nll(z * np.exp(-t), y) for t in coarse])]
        step = 1e-4
        fine = np.arange(best - 0.02, best + 0.02, step)
        nlls = [ref_nll(z * np.exp(-t), y) for t in fine]
        grid_best, grid_log_t = min(nlls), fine[int(np.argmin(nlls))]
        assert 1.3 < temps[k] < 5  # logits were scaled by 3: the fitted T must undo much of it
        assert ref_nll(z / temps[k], y) <= grid_best + 1e-6
        assert abs(np.log(temps[k]) - grid_log_t) <= step
        # first-order optimality in beta = 1/T: mean(E_p[z] - z_y) = 0
        p = softmax(z / temps[k])
        assert abs(np.mean((p * z).sum(1) - z[np.arange(y.size), y])) < 1e-5


def test_temperature_reduces_ece_on_held_out_split_and_keeps_predictions(fitted, test):
    out = fitted["temperature"].apply(test)
    np.testing.assert_array_equal(out.predictions, test.predictions)
    before = np.array([ref_ece(test.confidence[k], test.correct[k]) for k in range(test.num_exits)])
    after = np.array([ref_ece(out.confidence[k], out.correct[k]) for k in range(test.num_exits)])
    assert np.all(after < before), (before, after)
    assert after.mean() < 0.3 * before.mean(), (before, after)
    np.testing.assert_allclose(out.logits, test.logits / fitted["temperature"].temperature[:, None, None])


def test_fit_temperature_is_one_for_calibrated_logits():
    # labels drawn from softmax(z): the NLL-optimal temperature tends to 1
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(20000, 5))
    p = softmax(z)
    y = (p.cumsum(1) > rng.random((20000, 1))).argmax(1)
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)


# --------------------------------------------------------------------------------------------------- vector
def test_vector_nll_not_above_temperature(fitted, val):
    vec, temp = fitted["vector"].apply(val), fitted["temperature"].apply(val)
    for k in range(val.num_exits):
        nll_vec, nll_temp = ref_nll(vec.logits[k], val.labels), ref_nll(temp.logits[k], val.labels)
        assert nll_vec <= nll_temp + 1e-9
    np.testing.assert_allclose(
        vec.logits, val.logits * fitted["vector"].weight[:, None, :] + fitted["vector"].bias[:, None, :]
    )


def test_vector_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    z = rng.normal(scale=3.0, size=(200, 6))
    y = rng.integers(0, 6, size=200)
    w0 = np.full(6, 0.4)
    for l2 in (0.0, 1e-4, 0.5):
        for _ in range(3):
            x = np.concatenate([rng.normal(0.5, 0.5, size=6), rng.normal(0.0, 1.0, size=6)])
            err = optimize.check_grad(
                lambda p: _vector_objective(p, z, y, w0, l2)[0], lambda p: _vector_objective(p, z, y, w0, l2)[1], x
            )
            assert err < 1e-6 * max(1.0, np.linalg.norm(_vector_objective(x, z, y, w0, l2)[1]))
            # and the objective itself against the reference NLL plus the documented penalty
            w, b = x[:6], x[6:]
            expected = ref_nll(z * w + b, y) + 0.5 * l2 * (np.sum((w - w0) ** 2) + np.sum(b**2))
            assert _vector_objective(x, z, y, w0, l2)[0] == pytest.approx(expected, rel=1e-12)


def test_vector_fit_is_stationary(fitted, val):
    cal = fitted["vector"]
    temps = fitted["temperature"].temperature
    for k in range(val.num_exits):
        x = np.concatenate([cal.weight[k], cal.bias[k]])
        w0 = np.full(val.num_classes, 1.0 / temps[k])
        grad = _vector_objective(x, val.logits[k].astype(np.float64), val.labels, w0, 1e-4)[1]  # documented default
        assert np.abs(grad).max() < 1e-5


# --------------------------------------------------------------------------------------------------- top-label
def test_isotonic_matches_sklearn(fitted, val, test):
    out = fitted["isotonic"].apply(test)
    for k in range(test.num_exits):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
        iso.fit(val.confidence[k], val.correct[k])
        expected = clip_top(iso.predict(test.confidence[k]), test.num_classes)
        np.testing.assert_allclose(out.confidence[k], expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out.predictions, test.predictions)


def test_histogram_matches_per_bin_loop(val, test):
    cal = create_calibrator("histogram").fit(val)
    out = cal.apply(test)
    n_bins, c = 15, test.num_classes
    for k in range(test.num_exits):
        acc = np.empty(n_bins)
        for b in range(n_bins):
            in_bin = [i for i, p in enumerate(val.confidence[k]) if b / n_bins < p <= (b + 1) / n_bins]
            acc[b] = np.mean(val.correct[k][in_bin]) if in_bin else (b + 0.5) / n_bins
        expected = []
        for p in test.confidence[k]:
            b = next(b for b in range(n_bins) if p <= (b + 1) / n_bins)
            expected.append(acc[b])
        np.testing.assert_allclose(out.confidence[k], clip_top(np.array(expected), c), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out.predictions, test.predictions)


def _one_exit(logits, labels) -> ExitOutputs:
    return ExitOutputs(np.asarray(logits, dtype=np.float64)[None], np.asarray(labels), np.array([1.0]))


def test_histogram_bins_are_right_closed():
    # C = 2: tied logits give a confidence of exactly 0.5, the edge between bins (0.25, 0.5] and (0.5, 0.75]
    tie = [[0.0, 0.0]] * 4  # predicted class 0; 3 of 4 correct -> bin (0.25, 0.5] has accuracy 0.75
    above = [[np.log(0.6), np.log(0.4)]] * 5  # confidence 0.6; 1 of 5 correct: 0.2 < 1/C, clipped
    val = _one_exit(tie + above, [0, 0, 0, 1] + [0, 1, 1, 1, 1])
    assert np.all(val.confidence[0, :4] == 0.5)
    cal = create_calibrator("histogram", n_bins=4).fit(val)
    np.testing.assert_allclose(cal.bin_confidence[0], [0.125, 0.75, 0.2, 0.875])
    out = cal.apply(val)
    np.testing.assert_allclose(out.confidence[0, :4], 0.75, rtol=1e-12)
    np.testing.assert_allclose(out.confidence[0, 4:], 0.5 + LOW, rtol=1e-12)


def test_isotonic_is_increasing_even_for_anticorrelated_confidence():
    # higher confidence, more errors: the increasing fit pools everything into one level (the mean accuracy)
    logits = np.zeros((8, 3))
    logits[:, 0] = np.linspace(0.5, 4.0, 8)
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    out = create_calibrator("isotonic").fit(_one_exit(logits, labels)).apply(_one_exit(logits, labels))
    np.testing.assert_allclose(out.confidence[0], 0.5, rtol=1e-12)


def test_top_label_clips_below_one_over_c_and_at_one():
    c = 10
    # 20 samples with confidence ~0.3 (bin 5 of 15), all wrong: bin accuracy 0 < 1/C;
    # 20 samples with confidence ~0.99, all right: bin accuracy 1
    low = np.zeros((20, c))
    low[:, 3] = np.log(0.3 / (0.7 / 9)) + np.linspace(0, 0.05, 20)
    high = np.zeros((20, c))
    high[:, 5] = 10.0 + np.linspace(0, 0.1, 20)
    val = _one_exit(np.concatenate([low, high]), [0] * 20 + [5] * 20)
    assert np.all((val.confidence[0, :20] > 4 / 15) & (val.confidence[0, :20] <= 5 / 15))
    for name in ("histogram", "isotonic"):
        out = create_calibrator(name).fit(val).apply(val)
        np.testing.assert_array_equal(out.predictions, val.predictions)
        np.testing.assert_allclose(out.confidence[0, :20], 1 / c + LOW, rtol=0, atol=1e-12)
        np.testing.assert_allclose(out.confidence[0, 20:], 1 - HIGH, rtol=0, atol=1e-12)
        # the prediction is a strict maximum and every logit is finite
        top2 = np.sort(out.probs[0], axis=1)[:, -2:]
        assert np.all(top2[:, 1] > top2[:, 0]) and np.all(np.isfinite(out.logits))
        np.testing.assert_allclose(out.probs.sum(-1), 1.0, atol=1e-12)


def test_top_label_logits_distribution():
    pred = np.array([[0, 2, 1]])
    conf = np.array([[0.9, 0.5, 0.2]])
    probs = softmax(top_label_logits(pred, conf, 4))
    expected = np.array(
        [[[0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3], [0.5 / 3, 0.5 / 3, 0.5, 0.5 / 3], [0.8 / 3, 0.2, 0.8 / 3, 0.8 / 3]]]
    )
    # the last one asked for 0.2 < 1/4: clipped to 1/4 + 1e-6
    expected[0, 2] = [(0.75 - LOW) / 3, 0.25 + LOW, (0.75 - LOW) / 3, (0.75 - LOW) / 3]
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    np.testing.assert_array_equal(probs.argmax(-1), pred)


# --------------------------------------------------------------------------------------------------- kendall tau
def test_kendall_tau_matches_scipy(rng):
    before = rng.random((3, 300))
    after = before + rng.normal(scale=0.2, size=before.shape)
    after[2] = np.round(after[2], 1)  # ties
    expected = [stats.kendalltau(before[k], after[k]).statistic for k in range(3)]
    np.testing.assert_allclose(kendall_tau(before, after), expected, rtol=1e-12)


def test_kendall_tau_matches_pair_count_with_ties():
    x = np.array([[1, 2, 2, 3, 4, 4, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]], dtype=float)
    y = np.array([[2, 1, 3, 3, 4, 5, 5, 4], [0.8, 0.7, 0.6, 0.6, 0.1, 0.2, 0.3, 0.3]], dtype=float)
    np.testing.assert_allclose(kendall_tau(x, y), [ref_tau_b(x[k], y[k]) for k in range(2)], rtol=1e-12)


def test_kendall_tau_undefined_and_bad_shapes():
    taus = kendall_tau([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert np.isnan(taus[0]) and taus[1] == pytest.approx(-1.0)
    assert np.isnan(kendall_tau([[0.5]], [[0.7]])).all()
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        kendall_tau(np.zeros((2, 3)), np.zeros((2, 4)))


def test_temperature_scaling_can_reorder_max_softmax():
    # A is confident against two equal rivals; B has one close rival and one far-off class.
    # At T = 1, A's MSP (0.91) beats B's (0.53); at T = 10 the far-off class of B loses weight and B wins.
    outputs = _one_exit([[3.0, 0.0, 0.0], [3.0, 2.9, -5.0]], [0, 0])
    cal = create_calibrator("temperature").load_state_dict(
        {"name": "temperature", "num_exits": 1, "num_classes": 3, "temperature": [10.0]}
    )
    out = cal.apply(outputs)
    assert outputs.confidence[0, 0] > outputs.confidence[0, 1]
    assert out.confidence[0, 0] < out.confidence[0, 1]
    np.testing.assert_array_equal(out.predictions, outputs.predictions)  # same predictions, different order
    assert kendall_tau(outputs.confidence, out.confidence)[0] < 1


def test_fitted_temperature_reorders_samples_within_exits(fitted, test):
    tau = kendall_tau(test.confidence, fitted["temperature"].apply(test).confidence)
    assert np.all(tau < 1) and np.all(tau > 0.5)


# --------------------------------------------------------------------------------------------------- exact ties
def test_top_label_rows_with_equal_confidence_are_equal_floats():
    # ten rows, the same confidence 0.3 on ten different classes: permutations of one another
    probs = top_label_probs(np.arange(10), np.full(10, 0.3), 10)
    assert np.unique(probs.max(-1)).size == 1
    assert np.unique(softmax(top_label_logits(np.arange(10), np.full(10, 0.3), 10)).max(-1)).size == 1


@pytest.mark.parametrize("name", ["isotonic", "histogram"])
def test_top_label_calibrators_keep_ties_exact(name):
    """The calibrated confidence is exactly the calibrator's value (clipped), so samples it maps to the same value
    tie, and the tie-aware AUROC of the calibrated outputs is scikit-learn's on those exact values."""
    from sklearn.metrics import roc_auc_score

    from eeopt.core.evaluation import evaluate_exits

    val = synthetic_exit_outputs(3, 2000, 10, seed=1)
    test = synthetic_exit_outputs(3, 1500, 10, seed=2)
    cal = create_calibrator(name).fit(val)
    calibrated = cal.apply(test)
    exact = np.clip(cal._confidence(test), 0.1 + TOP_LABEL_MARGIN, 1 - TOP_LABEL_CEIL_GAP)
    np.testing.assert_array_equal(calibrated.confidence, exact)
    metrics = evaluate_exits(test, fit_on=val, calibrate=name).metrics
    for k in range(3):
        assert metrics[f"exit{k + 1}/auroc"] == pytest.approx(roc_auc_score(test.correct[k], exact[k]), abs=1e-12)


def test_softmax_of_permuted_rows_is_permuted():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 10)) * 3
    perm = rng.permutation(10)
    a, b = softmax(z), softmax(z[:, perm])
    np.testing.assert_array_equal(a[:, perm], b)
    from eeopt.core.scores import compute_score

    for score in ("msp", "entropy", "margin", "doctor"):
        s1 = compute_score(score, ExitOutputs(z[None], np.zeros(500, int), np.ones(1)))
        s2 = compute_score(score, ExitOutputs(z[None][:, :, perm], np.zeros(500, int), np.ones(1)))
        np.testing.assert_array_equal(s1, s2)
