"""Certifying a policy on exit outputs: the certificate of a procedure, the certified policy beside the uncontrolled
one, its policy file, and the risk a deployed certified policy realised. `eeopt exits certify`, a study trial and
`eeopt predict` call these. Pure NumPy/SciPy (Optuna for the per-exit search).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from eeopt.errors import ConfigError
from eeopt.core.metrics.efficiency import BUDGET_RTOL, select_by_budget
from eeopt.names import efficiency_key
from eeopt.core.outputs import ExitOutputs, check_compatible
from eeopt.core.policies import float_to_json, threshold_exits
from eeopt.core.prepared import fit_calibrator, prepare
from eeopt.risk_control.candidates import (
    Candidates,
    pareto_front,
    sequence_candidates,
    shared_candidates,
    split_calibration,
)
from eeopt.risk_control.procedures import PROCEDURES, STATISTIC, check_levels, fixed_sequence
from eeopt.risk_control.risks import check_risk, exit_losses

if TYPE_CHECKING:
    from eeopt.core.calibration import Calibrator
    from eeopt.core.policy_file import PolicyFile


@dataclasses.dataclass(frozen=True)
class Certificate:
    """The outcome of one risk-control procedure.

    Attributes:
        thresholds: [K-1] the cheapest certified policy; all +inf (the last exit alone) when none is certified.
        certified: whether some candidate passed (False: even the safest failed; no promise is made).
        n: calibration samples the candidates were tested on.
        statistic: the chosen candidate's p-value (ltt), WSR upper bound (ucb-wsr) or CRC bound (crc); the safest
            candidate's when none passed.
        calibration_risk: the chosen policy's risk on those n samples (the last exit's when none passed).
        candidates: how many candidates were in the sequence; passed: how many passed before the first failure.
    """

    risk: str
    method: str
    epsilon: float
    delta: float
    per_exit: bool
    thresholds: np.ndarray
    certified: bool
    n: int
    statistic: float
    calibration_risk: float
    candidates: int
    passed: int

    @property
    def statistic_name(self) -> str:
        return STATISTIC[self.method]

    def record(self, calibration_source: str) -> dict[str, Any]:
        """The policy file's `certification` record."""
        return {"risk": self.risk, "epsilon": self.epsilon, "delta": self.delta, "method": self.method,
                "per_exit": self.per_exit, "certified": self.certified, "n": self.n,
                "p_value_or_bound": self.statistic, "calibration_risk": self.calibration_risk,
                "calibration_source": calibration_source}


def certify_shared(scores, losses, correct, costs, *, risk: str, epsilon: float, delta: float,
                   method: str = "ltt") -> Certificate:
    """One shared threshold certified on calibration arrays [K, n] (see `shared_candidates`, `fixed_sequence`)."""
    cands = shared_candidates(scores, losses, correct, costs)
    return _certificate(cands, risk, epsilon, delta, method, per_exit=False)


def certify_per_exit(search: tuple, test: tuple, costs, *, risk: str, epsilon: float, delta: float,
                     method: str = "ltt", trials: int = 300, sampler: str = "nsga2", seed: int = 0) -> Certificate:
    """Per-exit thresholds by Pareto Testing: the (cost, risk) front searched on `search` = (scores, losses) [K, n1],
    ordered by its risk there and tested in that order on `test` = (scores, losses, correct) [K, n2]."""
    front = pareto_front(search[0], search[1], costs, trials=trials, sampler=sampler, seed=seed)
    cands = sequence_candidates(front, *test, costs)
    return _certificate(cands, risk, epsilon, delta, method, per_exit=True)


def _certificate(cands: Candidates, risk, epsilon, delta, method, per_exit) -> Certificate:
    result = fixed_sequence(method, cands, epsilon, delta)
    k1 = cands.thresholds.shape[1]
    if result.index >= 0:
        thresholds = cands.thresholds[result.index].copy()
        cal_risk = float(cands.risk[result.index])
    else:
        thresholds = np.full(k1, np.inf)
        cal_risk = float(cands.losses[-1].mean())
    return Certificate(risk, method, float(epsilon), float(delta), per_exit, thresholds, result.index >= 0,
                       cands.n, result.statistic, cal_risk, len(cands), result.passed)


def policy_numbers(scores, losses, correct, costs, thresholds) -> dict[str, float]:
    """{risk, accuracy, mean_cost, speedup} of one threshold policy [K-1] on a split's arrays [K, N], plus
    "exit_shares" [K]."""
    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    exits = threshold_exits(scores, np.asarray(thresholds, dtype=np.float64)).astype(np.intp)
    samples = np.arange(scores.shape[1])
    mean_cost = float(costs[exits].mean())
    return {"risk": float(np.asarray(losses)[exits, samples].mean()),
            "accuracy": float(np.asarray(correct)[exits, samples].mean()),
            "mean_cost": mean_cost, "speedup": float(costs[-1] / mean_cost) if mean_cost > 0 else math.inf,
            "exit_shares": (np.bincount(exits, minlength=costs.size) / exits.size).tolist()}


# --------------------------------------------------------------------------------------------------- on outputs
@dataclasses.dataclass(frozen=True, eq=False)
class RiskControlReport:
    """A certified policy on exit outputs, beside the uncontrolled val-optimal policy at the same val cost.

    Attributes:
        certificate: the procedure's outcome.
        uncontrolled: [K-1] the most accurate policy of the per-exit search on the whole calibration split whose
            mean cost there is at most the certified policy's: what eeopt deploys at that cost without a guarantee.
        fit: {"certified": numbers, "uncontrolled": numbers} on the calibration split (`policy_numbers`);
        report: the same on the evaluated split (None without one).
        calibrator: fitted on the calibration data's first part (None without a calibrator).
    """

    certificate: Certificate
    uncontrolled: np.ndarray
    score: str
    calibration: str
    costs: np.ndarray
    split_share: float | None
    fit: dict[str, dict]
    report: dict[str, dict] | None
    calibrator: Calibrator | None

    def metrics(self, split: str = "report") -> dict[str, float]:
        """The numbers under the metric-name scheme (`certified/risk`, `uncontrolled/mean_cost`, ...) on the
        `fit` (calibration) or `report` (evaluated) split."""
        numbers = self.fit if split == "fit" else self.report
        if numbers is None:
            return {}
        out = {}
        for method in ("certified", "uncontrolled"):
            for metric in ("risk", "accuracy", "mean_cost", "speedup"):
                out[efficiency_key(metric, method)] = numbers[method][metric]
        out[efficiency_key("certified", "certified")] = float(self.certificate.certified)
        return out

    def to_dict(self) -> dict[str, Any]:
        c = self.certificate
        return {
            "risk": c.risk, "epsilon": c.epsilon, "delta": c.delta, "method": c.method, "per_exit": c.per_exit,
            "certified": c.certified, "n": c.n, c.statistic_name: c.statistic,
            "calibration_risk": c.calibration_risk, "candidates": c.candidates, "passed": c.passed,
            "split_share": self.split_share, "score": self.score, "calibration": self.calibration,
            "costs": [float(x) for x in self.costs],
            "thresholds": [float_to_json(t) for t in c.thresholds],
            "uncontrolled_thresholds": [float_to_json(t) for t in self.uncontrolled],
            "metrics": self.metrics("report"), "fit_metrics": self.metrics("fit"),
        }

    def policy_file(self, *, source: dict | None = None, calibration_source: str = "val",
                    cost_unit: str = "flops") -> PolicyFile:
        """The certified policy as a policy file, with its `certification` record."""
        from eeopt.core.policy_file import PolicyFile

        c = self.certificate
        fit = self.fit["certified"]
        report = None
        if self.report is not None:
            r = self.report["certified"]
            report = {"split": "test", "accuracy": r["accuracy"], "mean_cost": r["mean_cost"],
                      "exit_shares": r["exit_shares"], "risk": r["risk"]}
        rule = (f"certified: {c.risk} <= {c.epsilon} with probability >= {1 - c.delta:g} ({c.method})"
                if c.method != "crc" else f"certified: expected {c.risk} <= {c.epsilon} (crc)")
        return PolicyFile(
            score=self.score, thresholds=tuple(float(t) for t in c.thresholds),
            costs=tuple(float(x) for x in self.costs), cost_unit=cost_unit, budget=None,
            calibrator=self.calibration, calibrator_state=None if self.calibrator is None else
            self.calibrator.state_dict(),
            chosen_on={"split": "val", "accuracy": fit["accuracy"], "mean_cost": fit["mean_cost"],
                       "exit_shares": fit["exit_shares"], "risk": fit["risk"],
                       "rule": rule if c.certified else "no policy certified: the last exit alone"},
            report=report, source=source, certification=c.record(calibration_source),
        )


def certify_policy(
    fit: ExitOutputs,
    evaluate: ExitOutputs | None = None,
    *,
    risk: str = "performance-gap",
    epsilon: float = 0.02,
    delta: float = 0.1,
    method: str = "ltt",
    per_exit: bool = False,
    calibrate: str | Calibrator | None = "none",
    score: str = "msp",
    split_share: float = 0.5,
    seed: int = 0,
    trials: int = 300,
    sampler: str = "nsga2",
    search_on: ExitOutputs | None = None,
) -> RiskControlReport:
    """Certify a policy on `fit` (the calibration split, e.g. val) and report it on `evaluate` (e.g. test).

    Whatever is fitted or searched before the test (a calibrator named by `calibrate`, the per-exit search) runs on
    samples the test does not see: on `search_on` when given (a study trial: the rest of its val), else on a
    seeded `split_share` of `fit` (part 1), the test then running on the rest of `fit` (part 2). A shared threshold
    with no calibrator to fit (or one fitted elsewhere) is certified on all of `fit`.

    Raises:
        ConfigError: an unknown risk or method, epsilon outside [0, 1), delta outside (0, 1), split_share outside
            (0, 1), or fewer than 2 samples to split.
        ExitOutputsError: `fit`, `evaluate` and `search_on` do not come from one model.
    """
    check_risk(risk)
    if method not in PROCEDURES:
        raise ConfigError(f"method: unknown procedure {method!r} (known: {', '.join(PROCEDURES)})")
    try:
        check_levels(epsilon, delta)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for other in (evaluate, search_on):
        if other is not None:
            check_compatible(fit, other)
    to_fit = calibrate not in (None, "none") and not getattr(calibrate, "is_fitted", False)
    split = search_on is None and (per_exit or to_fit)
    if split and not 0 < split_share < 1:
        raise ConfigError(f"split_share: expected a share in (0, 1), got {split_share!r}")
    if split and fit.num_samples < 2:
        raise ConfigError(f"{fit.source}: splitting the calibration data needs at least 2 samples, "
                          f"got {fit.num_samples}")
    certify_on = slice(None)
    if split:
        part1, certify_on = split_calibration(fit.num_samples, split_share, seed)
        search_on = fit.subset(part1)
    calibrator = fit_calibrator(calibrate, search_on if search_on is not None else fit)
    val = prepare(fit, calibrator, score, "val")
    costs = val.costs
    arrays = (val.scores, exit_losses(risk, val.outputs), val.correct)
    tested = tuple(a[:, certify_on] for a in arrays)
    if per_exit:
        searched = prepare(search_on, calibrator, score, "search")
        certificate = certify_per_exit((searched.scores, exit_losses(risk, searched.outputs)), tested, costs,
                                       risk=risk, epsilon=epsilon, delta=delta, method=method, trials=trials,
                                       sampler=sampler, seed=seed)
    else:
        certificate = certify_shared(*tested, costs, risk=risk, epsilon=epsilon, delta=delta, method=method)
    fit_numbers = {"certified": policy_numbers(*arrays, costs, certificate.thresholds)}
    uncontrolled = _uncontrolled(val, fit_numbers["certified"]["mean_cost"], trials, sampler, seed)
    fit_numbers["uncontrolled"] = policy_numbers(*arrays, costs, uncontrolled)
    report = None
    if evaluate is not None:
        test = prepare(evaluate, calibrator, score, "test")
        test_arrays = (test.scores, exit_losses(risk, test.outputs), test.correct)
        report = {"certified": policy_numbers(*test_arrays, costs, certificate.thresholds),
                  "uncontrolled": policy_numbers(*test_arrays, costs, uncontrolled)}
    return RiskControlReport(certificate, uncontrolled, score, val.calibration, costs,
                             split_share if split else None, fit_numbers, report, calibrator)


def _uncontrolled(val, cost: float, trials: int, sampler: str, seed: int) -> np.ndarray:
    """[K-1] what eeopt picks without a guarantee: the most accurate policy of the per-exit search on all of val
    (whose candidates include the exact shared-threshold front) with val mean cost <= `cost`."""
    from eeopt.core.search import search_thresholds

    res = search_thresholds(val.scores, val.correct, val.costs, trials=trials, sampler=sampler, seed=seed,
                            fit_sweep=val.sweep)
    i = select_by_budget(res.fit.mean_cost, res.fit.accuracy, cost, BUDGET_RTOL * val.costs[-1])
    return res.thresholds[i] if i >= 0 else np.full(val.num_exits - 1, np.inf)


def realised_risk(policy: PolicyFile, predictions, exits, labels, outputs: ExitOutputs | None) -> dict[str, Any]:
    """What a certified policy promised and the risk it realised on labelled samples the predictor decided.

    Args:
        policy: a policy file with a `certification` record.
        predictions, exits: [N] the predictor's predictions and exits (0-based); labels: [N].
        outputs: the same samples' exit outputs (a model folder's val.npz / test.npz), for what the risk compares
            with (the last exit's prediction, the exits' probabilities); None: only ``error`` can be computed.

    Returns:
        {"risk", "epsilon", "delta", "method", "certified", "realised_risk" (None when it cannot be computed),
        "note" (why not, when so)}.
    """
    record = policy.certification or {}
    risk = record.get("risk")
    out = {key: record.get(key) for key in ("risk", "epsilon", "delta", "method", "certified")}
    predictions, exits, labels = (np.asarray(a).astype(np.int64) for a in (predictions, exits, labels))
    if risk == "error":
        return {**out, "realised_risk": float(np.mean(predictions != labels)), "note": None}
    if outputs is None or outputs.num_samples != labels.size or not np.array_equal(outputs.labels, labels) \
            or outputs.num_exits != policy.num_exits:
        return {**out, "realised_risk": None,
                "note": f"{risk} compares with the exits' outputs: none match these samples"}
    calibrator = policy.build_calibrator()
    calibrated = calibrator.apply(outputs) if calibrator is not None else outputs
    samples = np.arange(labels.size)
    if risk == "consistency":
        value = np.mean(predictions != calibrated.predictions[-1])
    elif risk == "performance-gap":
        value = np.mean((predictions != labels) & calibrated.correct[-1])
    else:
        value = exit_losses(risk, calibrated)[exits, samples].mean()
    return {**out, "realised_risk": float(value), "note": None}
