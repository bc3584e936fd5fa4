"""Certified exit policies: bounds against independent computations, candidates against brute force, and the
guarantee itself by simulation (many calibration draws from a population whose risk at every threshold is known)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from eeopt.errors import ConfigError
from eeopt.core.policies import evaluate_thresholds
from eeopt.risk_control import (
    certify_per_exit,
    certify_policy,
    exit_losses,
    fixed_sequence,
    naive_index,
    policy_numbers,
    sequence_candidates,
    shared_candidates,
    split_calibration,
)
from eeopt.risk_control.bounds import hb_p_value, wsr_bound, wsr_rejects
from eeopt.core.synthetic import synthetic_exit_outputs


# ------------------------------------------------------------------------------------------------ bounds
@pytest.mark.parametrize("n", [1, 20, 500])
@pytest.mark.parametrize("epsilon", [0.01, 0.1, 0.37])
def test_hb_p_value_equals_hoeffding_and_scipy_binomial(n, epsilon):
    losses = np.arange(n + 1, dtype=np.float64)  # every possible count of 0-1 losses
    got = hb_p_value(losses, n, epsilon)
    for count, p in zip(losses.astype(int), got):
        r = count / n
        a = min(r, epsilon)
        kl = (a * math.log(a / epsilon) if a > 0 else 0.0) + (1 - a) * math.log((1 - a) / (1 - epsilon))
        expected = min(1.0, math.exp(-n * kl), math.e * binom.cdf(count, n, epsilon))
        assert p == pytest.approx(expected, rel=1e-12, abs=1e-300), (n, epsilon, count)


def test_hb_p_value_of_continuous_losses_rounds_the_sum_up():
    # a summed loss of 2.5 over 10 samples: Bentkus counts ceil(2.5) = 3
    p = hb_p_value(np.array([2.5]), 10, 0.4)[0]
    kl = 0.25 * math.log(0.25 / 0.4) + 0.75 * math.log(0.75 / 0.6)
    assert p == pytest.approx(min(math.exp(-10 * kl), math.e * binom.cdf(3, 10, 0.4)), rel=1e-12)
    assert hb_p_value(np.array([0.0]), 1000, 0.0)[0] == 1.0  # no sample certifies a zero risk


def direct_wsr_log_capital(x, mu, delta):
    """The WSR capital process written out sample by sample (plain Python floats)."""
    n = len(x)
    total, sq, var_prev, log_k, best = 0.0, 0.0, 0.25, 0.0, -math.inf
    for t, xt in enumerate(x, start=1):
        nu = min(1.0, math.sqrt(2 * math.log(1 / delta) / (n * var_prev)))
        step = 1 - nu * (xt - mu)
        log_k += math.log(step) if step > 0 else -math.inf
        best = max(best, log_k)
        total += xt
        mean = (0.5 + total) / (t + 1)
        sq += (xt - mean) ** 2
        var_prev = (0.25 + sq) / (t + 1)
    return best


def direct_wsr_bound(x, delta):
    f = lambda mu: direct_wsr_log_capital(x, mu, delta) - math.log(1 / delta)  # noqa: E731
    if f(1.0) < 0:
        return 1.0
    if f(1e-12) >= 0:
        return 0.0
    return brentq(f, 1e-12, 1.0, xtol=1e-14, rtol=1e-14, maxiter=500)


@pytest.mark.parametrize("delta", [0.05, 0.2])
def test_wsr_bound_and_test_equal_a_direct_implementation(delta):
    rng = np.random.default_rng(7)
    rows = np.vstack([
        (rng.random(200) < 0.05).astype(float),  # rare 0-1 losses
        (rng.random(200) < 0.4).astype(float),
        rng.random(200) ** 3,  # continuous losses
        np.zeros(200),
        np.ones(200),
    ])
    bounds = wsr_bound(rows, delta)
    for row, bound in zip(rows, bounds):
        assert bound == pytest.approx(direct_wsr_bound(list(row), delta), abs=1e-9)
    for eps in (0.02, 0.1, 0.5):
        expected = [direct_wsr_log_capital(list(row), eps, delta) >= math.log(1 / delta) for row in rows]
        assert wsr_rejects(rows, eps, delta).tolist() == expected
        assert (bounds <= eps).tolist() == expected


# ------------------------------------------------------------------------------------------------ risks, candidates
def test_exit_losses_follow_their_definitions():
    out = synthetic_exit_outputs(3, 300, 5, seed=4)
    pred, correct, probs = out.predictions, out.correct, out.probs
    for k in range(3):
        for j in range(0, 300, 37):
            assert exit_losses("error", out)[k, j] == (not correct[k, j])
            assert exit_losses("consistency", out)[k, j] == (pred[k, j] != pred[2, j])
            assert exit_losses("performance-gap", out)[k, j] == (correct[2, j] and not correct[k, j])
            onehot = np.eye(5)[out.labels[j]]
            gap = (np.sum((probs[k, j] - onehot) ** 2) - np.sum((probs[2, j] - onehot) ** 2)) / 2
            assert exit_losses("brier-gap", out)[k, j] == pytest.approx(min(max(gap, 0.0), 1.0), abs=1e-12)
    with pytest.raises(ConfigError, match="unknown risk 'gap'"):
        exit_losses("gap", out)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_candidates_equal_brute_force(seed, binary):
    rng = np.random.default_rng(seed)
    k, n = 4, 60
    scores = np.round(rng.random((k, n)), 1)  # many ties
    scores[rng.random((k, n)) < 0.1] = np.nan
    losses = (rng.random((k, n)) if not binary else 1.0) * (rng.random((k, n)) < 0.5)
    correct = rng.random((k, n)) < 0.6
    costs = np.array([1.0, 2.0, 3.5, 4.0])
    c = shared_candidates(scores, losses, correct, costs)
    values = c.thresholds[:, 0]
    assert values[0] == np.inf and np.all(np.diff(values) < 0) and np.all(c.thresholds == values[:, None])
    # every value where some sample's exit changes, and no other
    finite = np.unique(scores[:-1][~np.isnan(scores[:-1])])
    exits_at = lambda t: [next((e for e in range(k - 1) if scores[e, j] >= t), k - 1) for j in range(n)]  # noqa
    changing = [t for t in finite if exits_at(t) != exits_at(np.nextafter(t, np.inf))]
    assert sorted(values[1:].tolist()) == sorted(changing)
    worst = np.full(n, -np.inf)
    for i, t in enumerate(values):
        exits = exits_at(t)
        row = np.array([losses[e, j] for j, e in enumerate(exits)])
        worst = np.maximum(worst, row)
        assert c.loss_sum[i] == pytest.approx(row.sum(), abs=1e-9)
        assert c.monotone_sum[i] == pytest.approx(worst.sum(), abs=1e-9)
        assert c.correct_sum[i] == sum(correct[e, j] for j, e in enumerate(exits))
        assert c.cost_sum[i] == pytest.approx(sum(costs[e] for e in exits), rel=1e-12)
        np.testing.assert_array_equal(c.loss_rows(i, i + 1)[0], row)
        if i >= 2:  # several rows at once (0-1 losses: built by cumulative sums)
            np.testing.assert_array_equal(c.loss_rows(i - 2, i + 1)[-1], row)
    assert (c.steps is not None) == binary
    np.testing.assert_array_equal(c.loss_rows(0, len(c)), np.array([
        [losses[e, j] for j, e in enumerate(exits_at(t))] for t in values]))


def test_fixed_sequence_stops_at_the_first_failure():
    # candidate risks 0, 0.5 (fails), 0: a later candidate that would pass is never certified
    scores = np.zeros((2, 100))
    losses = np.zeros((2, 100))
    thresholds = np.array([[np.inf], [np.inf], [np.inf]])
    c = sequence_candidates(thresholds, scores, losses, np.ones((2, 100), bool), np.array([1.0, 2.0]))
    c.loss_sum[1] = 50.0  # frozen dataclass, mutable arrays: a test-only edit of the sums
    c.monotone_sum[1:] = 50.0
    for method in ("ltt", "crc"):
        result = fixed_sequence(method, c, 0.1, 0.1)
        assert result.index == 0 and result.passed == 1, method
    none = fixed_sequence("ltt", c, 0.0, 0.1)
    assert none.index == -1 and none.statistic == 1.0


# ------------------------------------------------------------------------------------------------ the guarantee
@pytest.fixture(scope="module")
def population():
    """A large population (the risk of every threshold is known exactly: it is its share of losses there)."""
    pop = synthetic_exit_outputs(3, 100_000, 10, seed=11)
    scores, losses, correct = pop.confidence, exit_losses("performance-gap", pop), pop.correct
    curve = shared_candidates(scores, losses, correct, pop.costs)
    return pop, scores, losses, correct, curve


def population_risk(curve, thresholds):
    """Population risk of shared thresholds [D]: the curve's point with the smallest value >= t."""
    ascending = curve.thresholds[::-1, 0]
    i = ascending.size - np.searchsorted(ascending, thresholds, side="left") - 1
    return curve.risk[np.maximum(i, 0)]


@pytest.mark.slow  # 1000 certifications: about 3.5 s
def test_certified_shared_threshold_keeps_its_promise_over_1000_calibration_draws(population):
    pop, scores, losses, correct, curve = population
    eps, delta, n, draws = 0.05, 0.1, 300, 1000
    rng = np.random.default_rng(0)
    chosen = {m: np.empty(draws) for m in ("ltt", "ucb-wsr", "crc", "naive")}
    for d in range(draws):
        idx = rng.integers(0, pop.num_samples, n)  # i.i.d. draws from the population
        c = shared_candidates(scores[:, idx], losses[:, idx], correct[:, idx], pop.costs)
        for method in chosen:
            i = naive_index(c, eps) if method == "naive" else fixed_sequence(method, c, eps, delta).index
            chosen[method][d] = c.thresholds[i, 0] if i >= 0 else np.inf
    risk = {m: population_risk(curve, t) for m, t in chosen.items()}
    exceed = {m: float(np.mean(r > eps)) for m, r in risk.items()}
    mean = {m: float(np.mean(r)) for m, r in risk.items()}
    tolerance = 3 * math.sqrt(delta * (1 - delta) / draws)
    numbers = ", ".join(f"{m}: P(risk > eps) = {exceed[m]:.3f}, mean risk {mean[m]:.4f}" for m in chosen)
    print(numbers)
    assert exceed["ltt"] <= delta + tolerance, numbers
    assert exceed["ucb-wsr"] <= delta + tolerance, numbers
    assert mean["crc"] <= eps + 3 * np.std(risk["crc"]) / math.sqrt(draws), numbers
    assert exceed["naive"] >= 3 * max(exceed["ltt"], exceed["ucb-wsr"], delta), numbers
    # the promise is not free: the certified policies are no cheaper than the naive one
    assert np.median(chosen["ltt"]) >= np.median(chosen["naive"]), numbers


@pytest.mark.slow  # over 1.5 s on an idle core
def test_pareto_testing_keeps_its_promise(population):
    """Per-exit thresholds by Pareto Testing; fewer draws (each runs an Optuna search): 100, so the tolerance is
    3 standard errors of a 100-draw frequency (~0.09)."""
    pop, scores, losses, correct, _ = population
    eps, delta, n, draws = 0.05, 0.1, 400, 100
    rng = np.random.default_rng(1)
    risk = np.empty(draws)
    for d in range(draws):
        idx = rng.integers(0, pop.num_samples, n)
        first, second = split_calibration(n, 0.5, seed=d)
        a, b = idx[first], idx[second]
        cert = certify_per_exit((scores[:, a], losses[:, a]), (scores[:, b], losses[:, b], correct[:, b]),
                                pop.costs, risk="performance-gap", epsilon=eps, delta=delta, trials=40, seed=d)
        risk[d] = 1 - evaluate_thresholds(scores, losses == 0, pop.costs, cert.thresholds).accuracy[0]
    exceed = float(np.mean(risk > eps))
    numbers = f"per-exit ltt: P(risk > eps) = {exceed:.3f}, mean risk {risk.mean():.4f}"
    print(numbers)
    assert exceed <= delta + 3 * math.sqrt(delta * (1 - delta) / draws), numbers


# ------------------------------------------------------------------------------------------------ on exit outputs
def test_certify_policy_reports_what_it_certified(outputs_pair):
    val, test = outputs_pair
    report = certify_policy(val, test, risk="error", epsilon=0.3, delta=0.1, method="ltt")
    c = report.certificate
    assert c.certified and c.statistic <= 0.1 and c.n == val.num_samples and report.split_share is None
    numbers = policy_numbers(test.confidence, exit_losses("error", test), test.correct, test.costs, c.thresholds)
    assert report.metrics()["certified/risk"] == numbers["risk"] == pytest.approx(1 - numbers["accuracy"])
    assert report.metrics()["certified/mean_cost"] == numbers["mean_cost"]
    assert report.metrics("fit")["certified/risk"] == pytest.approx(c.calibration_risk)
    # the uncontrolled policy costs no more on val than the certified one and is at least as accurate there
    fit = report.metrics("fit")
    assert fit["uncontrolled/mean_cost"] <= fit["certified/mean_cost"] * (1 + 1e-12)
    assert fit["uncontrolled/accuracy"] >= fit["certified/accuracy"]


def test_certify_policy_with_a_calibrator_or_per_exit_certifies_on_the_held_out_part(outputs_pair):
    val, test = outputs_pair
    report = certify_policy(val, test, risk="consistency", epsilon=0.1, delta=0.1, calibrate="temperature",
                            split_share=0.3, seed=5)
    assert report.certificate.n == val.num_samples - round(0.3 * val.num_samples)
    assert report.calibration == "temperature" and report.split_share == 0.3
    per_exit = certify_policy(val, test, risk="consistency", epsilon=0.1, delta=0.1, per_exit=True, trials=50)
    assert per_exit.certificate.per_exit and per_exit.certificate.n == val.num_samples // 2
    assert per_exit.certificate.certified


def test_impossible_request_certifies_nothing_and_falls_back_to_the_last_exit(outputs_pair):
    val, test = outputs_pair
    report = certify_policy(val.subset(np.arange(100)), test, risk="performance-gap", epsilon=0.0, delta=0.01)
    assert not report.certificate.certified
    assert np.all(np.isinf(report.certificate.thresholds))
    assert report.metrics()["certified/mean_cost"] == test.costs[-1]
    assert report.metrics()["certified/certified"] == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"risk": "gap"}, "unknown risk"),
    ({"method": "bonferroni"}, "unknown procedure"),
    ({"epsilon": 1.0}, "epsilon"),
    ({"delta": 0.0}, "delta"),
    ({"per_exit": True, "split_share": 1.0}, "split_share"),
])
def test_certify_policy_rejects_bad_requests(outputs_pair, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        certify_policy(outputs_pair[0], **kwargs)


def test_certified_policy_file_round_trips_and_decides_as_certified(outputs_pair, tmp_path):
    from eeopt.core.policy_file import PolicyFile, PolicyFileError

    val, test = outputs_pair
    report = certify_policy(val, test, risk="performance-gap", epsilon=0.03, delta=0.1, calibrate="temperature")
    path = tmp_path / "certified.json"
    report.policy_file(calibration_source="val.npz").save(path)
    policy = PolicyFile.load(path)
    record = policy.certification
    assert record["risk"] == "performance-gap" and record["n"] == report.certificate.n
    assert record["p_value_or_bound"] == report.certificate.statistic <= 0.1
    assert policy.evaluate(test)["accuracy"] == report.metrics()["certified/accuracy"]
    data = policy.to_dict()
    data["certification"]["delta"] = 1.5
    with pytest.raises(PolicyFileError, match=r"certification\.delta: expected a probability in \(0, 1\), got 1.5"):
        PolicyFile.from_dict(data)
    del data["certification"]["n"]
    with pytest.raises(PolicyFileError, match=r"certification\.n: missing"):
        PolicyFile.from_dict(data)


def test_search_on_other_samples_certifies_on_all_of_fit(outputs_pair):
    """A study trial's way: calibrator and per-exit front from `search_on`, the whole of `fit` tests them."""
    val, test = outputs_pair
    rest, held = val.subset(np.arange(0, 900)), val.subset(np.arange(900, 1500))
    from eeopt.core.prepared import fit_calibrator

    calibrator = fit_calibrator("temperature", rest)
    report = certify_policy(held, test, risk="error", epsilon=0.3, delta=0.1, per_exit=True, calibrate=calibrator,
                            search_on=rest, trials=40)
    assert report.certificate.n == 600 and report.split_share is None and report.calibrator is calibrator
    assert report.certificate.certified and report.certificate.per_exit


@pytest.mark.parametrize("eps", [0.02, 0.08, 0.2])
def test_wsr_sequence_in_blocks_equals_testing_every_candidate(population, eps):
    pop, scores, losses, correct, _ = population
    idx = np.random.default_rng(3).integers(0, pop.num_samples, 400)
    c = shared_candidates(scores[:, idx], losses[:, idx], correct[:, idx], pop.costs)
    ok = wsr_rejects(c.loss_rows(0, len(c)), eps, 0.1)
    expected = int(np.argmin(ok)) if not ok.all() else len(c)
    result = fixed_sequence("ucb-wsr", c, eps, 0.1)
    assert result.passed == expected and result.index == expected - 1
    if expected:
        assert result.statistic == pytest.approx(wsr_bound(c.loss_rows(expected - 1, expected), 0.1)[0])
        assert result.statistic <= eps


def test_a_single_exit_has_one_candidate():
    val, test = synthetic_exit_outputs(1, 300, 5, seed=1), synthetic_exit_outputs(1, 200, 5, seed=2)
    for per_exit in (False, True):
        report = certify_policy(val, test, risk="error", epsilon=0.5, per_exit=per_exit, trials=10)
        assert report.certificate.candidates == 1 and report.certificate.thresholds.shape == (0,)
        assert report.metrics()["certified/accuracy"] == test.accuracy[0]


def test_per_exit_front_for_a_continuous_risk(outputs_pair):
    """brier-gap losses are not 0-1: the front comes from the (cost, mean loss) search, safest first, and it is no
    worse anywhere than the exact shared-threshold candidates."""
    from eeopt.risk_control import pareto_front

    val, test = outputs_pair
    losses = exit_losses("brier-gap", val)
    front = pareto_front(val.confidence, losses, val.costs, trials=40)
    rows = sequence_candidates(front, val.confidence, losses, val.correct, val.costs)
    assert np.all(np.diff(rows.loss_sum) > 0) and np.all(np.diff(rows.cost_sum) < 0)
    shared = shared_candidates(val.confidence, losses, val.correct, val.costs)
    for risk, cost in zip(shared.loss_sum, shared.cost_sum):  # no shared threshold dominates a front point
        assert not np.any((risk < rows.loss_sum - 1e-9) & (cost < rows.cost_sum - 1e-6))
    report = certify_policy(val, test, risk="brier-gap", epsilon=0.05, delta=0.1, per_exit=True, trials=40)
    assert report.certificate.certified and report.certificate.per_exit
