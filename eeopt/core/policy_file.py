"""The policy file (`policy.json`): one chosen early-exit policy, everything needed to deploy it, validated on load.

A policy file holds the exit score, the K-1 per-exit thresholds, the calibrator and its fitted parameters, the
exits' cumulative costs (and their unit) and the budget it was chosen for, plus what it achieved on val (where it
was chosen) and, when known, on test. `PolicyFile.decide` applies it to exit outputs: calibrate, score, threshold,
exactly as the threshold search evaluated it. `eeopt.inference.EarlyExitPredictor` runs the same policy on a network
stage by stage and must agree with `decide`. `eeopt.core.policy_choice` picks which policy of a threshold search to write.

Example (JSON; infinities are written "inf" / "-inf")::

    {"format": "eeopt.policy/1", "score": "msp", "thresholds": [0.93, 0.88, "inf"],
     "costs": [1.2e5, 2.5e5, 3.9e5, 5.1e5], "cost_unit": "flops", "budget": 0.5,
     "calibrator": "temperature", "calibrator_state": {"name": "temperature", ...},
     "chosen_on": {"split": "val", "accuracy": 0.95, "mean_cost": 2.4e5},
     "report": {"split": "test", "accuracy": 0.94, "mean_cost": 2.5e5, "exit_shares": [0.6, 0.2, 0.0, 0.2]},
     "source": {"fit_on": "val.npz", "evaluate_on": "test.npz"}}

Pure numpy: no torch here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eeopt.errors import ConfigError, EeoptError
from eeopt.files import atomic_write_text, jsonable
from eeopt.core.outputs import ExitOutputs
from eeopt.core.policies import float_to_json, threshold_exits
from eeopt.core.scores import SCORES, compute_score, create_score

if TYPE_CHECKING:
    from eeopt.core.calibration import Calibrator

FORMAT = "eeopt.policy/1"
COST_UNITS = ("flops", "latency_ms")
_FIELDS = ("format", "score", "thresholds", "costs", "cost_unit", "budget", "calibrator", "calibrator_state",
           "chosen_on", "report", "source", "certification")
#: Keys every `certification` record has (written by `eeopt.risk_control`; more keys are kept as they are).
CERTIFICATION_KEYS = ("risk", "epsilon", "delta", "method", "n", "p_value_or_bound", "calibration_source")


class PolicyFileError(ConfigError):
    """A policy file (or a `PolicyFile` built in code) is invalid; one line: where, the dotted field, the value."""


@dataclasses.dataclass(frozen=True)
class PolicyFile:
    """One deployable threshold policy; validated on construction (see the module docstring for the JSON form).

    Attributes:
        score: exit score name (`eeopt.core.scores` registry: msp, entropy, margin, doctor, learned, ...).
        thresholds: K-1 thresholds; exit k (0-based) is taken when score_k >= thresholds[k] (the rule of
            `eeopt.core.policies.threshold_exits`), the last exit takes the rest; +-inf allowed.
        costs: K cumulative costs of the exits, in `cost_unit` ("flops" or "latency_ms").
        budget: the share of the last exit's cost the policy was chosen for on val; None when it was chosen for an
            objective (see `policy_from_search`).
        calibrator: registered calibrator name, or "none".
        calibrator_state: `Calibrator.state_dict()` of the calibrator fitted on val (None without a calibrator).
        chosen_on: {"split": "val", "accuracy", "mean_cost"}; report: the same on test with "exit_shares" [K];
        source: provenance (files, trial number, run id, ...).
        certification: for a certified policy (`eeopt exits certify`), what it promises: {risk, epsilon, delta,
            method, n, p_value_or_bound, calibration_source, ...}; None for a policy chosen without a guarantee.

    Raises:
        PolicyFileError: any field is invalid (the message names it and its value).
    """

    score: str
    thresholds: tuple[float, ...]
    costs: tuple[float, ...]
    cost_unit: str
    budget: float | None
    calibrator: str = "none"
    calibrator_state: dict | None = None
    chosen_on: dict | None = None
    report: dict | None = None
    source: dict | None = None
    certification: dict | None = None

    def __post_init__(self) -> None:
        fields = _check_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "policy")
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------------------------------------------- shape
    @property
    def num_exits(self) -> int:
        return len(self.costs)

    # ----------------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form: infinities as "inf"/"-inf" in thresholds, NaN as null elsewhere."""
        return {
            "format": FORMAT,
            "score": self.score,
            "thresholds": [float_to_json(t) for t in self.thresholds],
            "costs": list(self.costs),
            "cost_unit": self.cost_unit,
            "budget": self.budget,
            "calibrator": self.calibrator,
            "calibrator_state": jsonable(self.calibrator_state),
            "chosen_on": jsonable(self.chosen_on),
            "report": jsonable(self.report),
            "source": jsonable(self.source),
            "certification": jsonable(self.certification),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the policy as JSON (atomically: a temporary file renamed over `path`)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def from_dict(cls, data: Any, where: str = "policy") -> PolicyFile:
        """Read and validate the `to_dict` form; `where` starts every message (a file name, or "policy").

        Raises:
            PolicyFileError: wrong format or version, a missing or unknown field, K inconsistent between thresholds,
                costs and the calibrator, an unregistered score or calibrator, a state the calibrator cannot load.
        """
        if not isinstance(data, dict):
            raise PolicyFileError(f"{where}: expected a JSON object with \"format\": {FORMAT!r}, "
                                  f"got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != FORMAT:
            if isinstance(fmt, str) and fmt.startswith("eeopt.policy/"):
                raise PolicyFileError(f"{where}: format: unsupported version {fmt!r} (this eeopt reads {FORMAT!r})")
            raise PolicyFileError(f"{where}: format: expected {FORMAT!r}, got {fmt!r} (not an eeopt policy file)")
        unknown = [k for k in data if k not in _FIELDS]
        if unknown:
            raise PolicyFileError(f"{where}: {unknown[0]}: unknown field (known: {', '.join(_FIELDS)})")
        for key in ("score", "thresholds", "costs", "cost_unit"):
            if key not in data:
                raise PolicyFileError(f"{where}: {key}: missing")
        fields = {k: v for k, v in data.items() if k != "format"}
        fields.setdefault("budget", None)
        return cls(**_check_fields(fields, where))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PolicyFile:
        """Read and validate a policy file.

        Raises:
            PolicyFileError: the file is missing, is not JSON, or fails validation (see `from_dict`).
        """
        path = Path(path)
        if not path.is_file():
            raise PolicyFileError(f"{path}: no such file (write one with `eeopt exits search --policy-out`)")
        try:
            data = json.loads(path.read_text(), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise PolicyFileError(f"{path}: not a JSON policy file ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(data, where=str(path))

    # ----------------------------------------------------------------------------------------------- use
    def build_calibrator(self) -> Calibrator | None:
        """The fitted calibrator the file describes (a new object each call), or None for "none"."""
        if self.calibrator == "none":
            return None
        from eeopt.core.calibration import create_calibrator

        return create_calibrator(self.calibrator).load_state_dict(self.calibrator_state)

    def decide(self, outputs: ExitOutputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply the policy to exit outputs: calibrate all exits, score, threshold.

        This is the reference `EarlyExitPredictor` must equal, and what the threshold search evaluated.

        Returns:
            (predictions int64 [N]: the calibrated prediction of the exit taken, exits int64 [N] (0-based),
            scores float64 [N]: the score at the exit taken).

        Raises:
            ExitOutputsError: the outputs have another number of exits (or classes, with a calibrator), or lack
                the arrays the score needs.
        """
        check_outputs(self, outputs)
        calibrator = self.build_calibrator()
        calibrated = calibrator.apply(outputs) if calibrator is not None else outputs
        scores = compute_score(self.score, calibrated)  # [K, N]
        exits = threshold_exits(scores, np.asarray(self.thresholds, dtype=np.float64)).astype(np.int64)
        samples = np.arange(outputs.num_samples)
        return calibrated.predictions[exits, samples].astype(np.int64), exits, scores[exits, samples]

    def evaluate(self, outputs: ExitOutputs) -> dict[str, Any]:
        """{"accuracy", "mean_cost" (in `cost_unit`, from this file's costs), "exit_shares" [K]} on labelled
        outputs, through `decide`."""
        predictions, exits, _ = self.decide(outputs)
        return decision_summary(self, predictions, exits, outputs.labels)


class ExitDecider:
    """The policy's decision at one exit for a batch of samples that reached it: what `EarlyExitPredictor` calls
    between network stages.

    Calibration and scoring go through the same calibrator and score code as `PolicyFile.decide`, on the batch
    alone: without a calibrator the batch is a one-exit `ExitOutputs` (`ExitOutputs.unchecked`: the batch comes from
    the network, and at batch 1 full validation would cost as much as the decision); with one it sits at its exit
    among K-1 exits of zeros (so the calibrator's per-exit parameters line up) and only that exit is read.
    Calibrators and scores act on each sample on its own (all built-ins do), so a sample gets the score `decide`
    gives it.

    Whether one sample leaves (`leaves`, the predictor at batch 1) is decided on Python floats where the policy
    allows it: the msp or learned score, without a calibrator or with temperature or vector scaling, at most
    `ONE_ROW_MAX_CLASSES` classes. At batch 1 each NumPy call costs more than its arithmetic (a few microseconds,
    several times that right after a network stage), and the decision needs none: the msp from `math.exp` is within
    1e-13 of `decide`'s, so only a sample within 1e-9 of the threshold needs the batch path. The predictions and
    scores of the samples that left are then computed by the batch path, many samples at once.
    """

    def __init__(self, policy: PolicyFile):
        self.policy = policy
        self.calibrator = policy.build_calibrator()
        self.num_exits = policy.num_exits
        # the last exit takes every sample that reaches it
        self.thresholds = np.append(np.asarray(policy.thresholds, dtype=np.float64), -np.inf)
        self._thresholds = self.thresholds.tolist()  # the same as Python floats, for leaves
        self._one_cost = np.ones(1)
        self._costs = np.ones(self.num_exits)
        self._lean = _lean_decision(policy.score, self.calibrator)  # None: leaves goes through __call__
        self._classes = None if self.calibrator is None else self.calibrator.state_dict()["num_classes"]

    def __call__(
        self, k: int, logits: np.ndarray, scores: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exit `k`'s decision for B samples.

        Args:
            k: the exit (0-based).
            logits: [B, C] exit k's logits (as the network gave them, e.g. float32).
            scores: [B] exit k's learned scores (sigmoid of the failure head), needed by the ``learned`` score.

        Returns:
            (predictions int64 [B], scores float64 [B], leave bool [B]: the sample exits here).

        Raises:
            ExitOutputsError: NaN or inf in the logits or scores (naming the network's exit), another number of
                classes than the calibrator's, or the ``learned`` score without scores.
        """
        logits = np.asarray(logits)
        b, c = logits.shape
        k_all = self.num_exits
        if self.calibrator is None:
            view = ExitOutputs.unchecked(logits[None], np.zeros(b, dtype=np.int64), self._one_cost,
                                         scores=None if scores is None else np.asarray(scores)[None],
                                         source="network batch", first_exit=k + 1)
            row = 0
        else:
            padded = np.zeros((k_all, b, c), dtype=logits.dtype)
            padded[k] = logits
            padded_scores = None
            if scores is not None:
                padded_scores = np.zeros((k_all, b), dtype=np.asarray(scores).dtype)
                padded_scores[k] = scores
            view = self.calibrator.apply(ExitOutputs.unchecked(padded, np.zeros(b, dtype=np.int64), self._costs,
                                                               scores=padded_scores, source="network batch"))
            row = k
        score = compute_score(self.policy.score, view)[row]
        leave = score >= self.thresholds[k]  # NaN never passes
        return view.predictions[row].astype(np.int64), score, leave

    def leaves(self, k: int, logits: list[float], score: float | None = None) -> bool:
        """Whether one sample leaves at exit `k`: ``self(k, [logits], [score])[2][0]``, the same answer always.

        Args:
            logits: its C logits at exit k as Python floats (`tensor.tolist()`: float32 and float16 widen exactly).
            score: its learned score at exit k (the sigmoid of the failure head), for the ``learned`` score.

        Raises:
            as `__call__`.
        """
        lean = self._lean
        if lean is not None and len(logits) <= ONE_ROW_MAX_CLASSES and self._classes in (None, len(logits)):
            transform, learned = lean
            z = logits if transform is None else transform(k, logits)
            threshold = self._thresholds[k]
            if learned:
                if score is not None and math.isfinite(score) and math.isfinite(sum(z)):
                    return score >= threshold
            elif math.isfinite(sum(z)):
                top = max(z)
                ratio = threshold * sum([math.exp(v - top) for v in z])  # threshold / msp, msp = 1 / sum(...)
                if ratio > 1.0 + _MSP_MARGIN:
                    return False
                if ratio < 1.0 - _MSP_MARGIN:
                    return True
        # near the threshold, outside the lean path, or an error to report: the batch path decides
        return bool(self(k, np.asarray([logits]), None if score is None else np.asarray([score]))[2][0])


#: `ExitDecider.leaves` works on Python floats up to this many classes: its cost grows with C (warm: about 2 us at
#: 10 classes, 13 us at 128), while the NumPy batch path's stays near 20 us warm and several times that right after
#: a network stage.
ONE_ROW_MAX_CLASSES = 128

#: How far (relative) the msp from `math.exp` and a float sum must lie from the threshold for `ExitDecider.leaves` to
#: decide on it. `decide`'s msp is 1 / S with S the order-free `row_sum` of NumPy's exp(z - max) (>= 1): the two exps
#: lie within an ulp or two of exp, the float sum within C * 2^-53 of S (relative), `row_sum`'s fixed-point cut within
#: C * 2^-51 (absolute), so for C <= ONE_ROW_MAX_CLASSES the two msps differ by under 1e-13 (relative), far inside
#: this margin.
_MSP_MARGIN = 1e-9


def _lean_decision(score: str, calibrator: Calibrator | None) -> tuple[Callable | None, bool] | None:
    """(the calibrator's map of one row of logits, or None without one; whether the score is the learned one) when
    `ExitDecider.leaves` can decide on Python floats; None when it cannot (other scores or calibrators)."""
    from eeopt.core import scores

    fn = create_score(score)
    if fn is not scores.msp and fn is not scores.learned:
        return None
    learned = fn is scores.learned
    if calibrator is None:
        return None, learned
    from eeopt.core.calibration.builtin import TemperatureScaling, VectorScaling

    if type(calibrator) is TemperatureScaling:  # logits.astype(float64) / T_k
        t = calibrator.temperature.tolist()
        return (lambda k, row: [v / t[k] for v in row]), learned
    if type(calibrator) is VectorScaling:  # logits.astype(float64) * w_k + b_k: a product, then a sum
        w, b = calibrator.weight.tolist(), calibrator.bias.tolist()
        return (lambda k, row: [v * wc + bc for v, wc, bc in zip(row, w[k], b[k])]), learned
    return None


def check_outputs(policy: PolicyFile, outputs: ExitOutputs) -> None:
    """Raise `ExitOutputsError` unless `outputs` has the policy's number of exits."""
    from eeopt.errors import ExitOutputsError

    if outputs.num_exits != policy.num_exits:
        raise ExitOutputsError(f"{outputs.source}: has {outputs.num_exits} exits but the policy has "
                               f"{policy.num_exits} (costs) and {len(policy.thresholds)} thresholds")


def decision_summary(policy: PolicyFile, predictions, exits, labels) -> dict[str, Any]:
    """Accuracy, mean cost (from the policy's costs) and share of samples at each exit of decided samples."""
    exits = np.asarray(exits, dtype=np.int64)
    n = exits.size
    shares = np.bincount(exits, minlength=policy.num_exits) / max(n, 1)
    return {
        "accuracy": float(np.mean(np.asarray(predictions) == np.asarray(labels))) if n else math.nan,
        "mean_cost": float(shares @ np.asarray(policy.costs)) if n else math.nan,
        "cost_unit": policy.cost_unit,
        "exit_shares": shares.tolist(),
        "samples": int(n),
    }


# --------------------------------------------------------------------------------------------------- validation
def _check_fields(fields: dict[str, Any], where: str) -> dict[str, Any]:
    """Validated, normalised field values (tuples of floats, plain dicts); raises `PolicyFileError`."""
    out = dict(fields)
    score = fields["score"]
    if not isinstance(score, str) or score not in SCORES:
        raise PolicyFileError(f"{where}: score: {SCORES.unknown(score)}")
    costs = _floats(fields["costs"], "costs", where)
    k = len(costs)
    if k < 1:
        raise PolicyFileError(f"{where}: costs: needs at least one exit, got []")
    if any(not math.isfinite(c) or c < 0 for c in costs):
        raise PolicyFileError(f"{where}: costs: must be finite and >= 0, got {list(costs)}")
    if any(b < a for a, b in zip(costs, costs[1:])):
        raise PolicyFileError(f"{where}: costs: must be cumulative (non-decreasing), got {list(costs)}")
    if not costs[-1] > 0:
        raise PolicyFileError(f"{where}: costs: the last exit's cost must be > 0, got {list(costs)}")
    thresholds = _floats(fields["thresholds"], "thresholds", where)
    if len(thresholds) != k - 1:
        raise PolicyFileError(f"{where}: thresholds: expected K-1 = {k - 1} thresholds for {k} exits (costs), "
                              f"got {len(thresholds)}")
    unit = fields["cost_unit"]
    if unit not in COST_UNITS:
        raise PolicyFileError(f"{where}: cost_unit: expected one of {', '.join(COST_UNITS)}, got {unit!r}")
    budget = fields.get("budget")
    out.update(costs=costs, thresholds=thresholds,
               budget=None if budget is None else check_budget(budget, f"{where}: budget"))
    out["calibrator_state"] = _check_calibrator(fields.get("calibrator", "none"), fields.get("calibrator_state"),
                                                k, where)
    for key in ("chosen_on", "report", "source"):
        value = fields.get(key)
        if value is not None and not isinstance(value, dict):
            raise PolicyFileError(f"{where}: {key}: expected an object or null, got {value!r}")
    out["certification"] = _check_certification(fields.get("certification"), where)
    shares = (fields.get("report") or {}).get("exit_shares")
    if shares is not None and (not isinstance(shares, (list, tuple)) or len(shares) != k):
        raise PolicyFileError(f"{where}: report.exit_shares: expected {k} shares (one per exit), got {shares!r}")
    return out


def _check_certification(record: Any, where: str) -> dict | None:
    """A certification record with its required keys, levels in range; None stays None."""
    if record is None:
        return None
    if not isinstance(record, dict):
        raise PolicyFileError(f"{where}: certification: expected an object or null, got {record!r}")
    for key in CERTIFICATION_KEYS:
        if key not in record:
            raise PolicyFileError(f"{where}: certification.{key}: missing")
    for key in ("risk", "method", "calibration_source"):
        if not isinstance(record[key], str):
            raise PolicyFileError(f"{where}: certification.{key}: expected a string, got {record[key]!r}")
    checks = (("epsilon", lambda v: 0 <= v < 1, "a risk level in [0, 1)"),
              ("delta", lambda v: 0 < v < 1, "a probability in (0, 1)"),
              ("p_value_or_bound", lambda v: v >= 0, "a number >= 0"))
    for key, ok, what in checks:
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(value):
            raise PolicyFileError(f"{where}: certification.{key}: expected {what}, got {value!r}")
    n = record["n"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise PolicyFileError(f"{where}: certification.n: expected a number of samples >= 1, got {n!r}")
    return json.loads(json.dumps(jsonable(record)))  # a plain, private copy


def _check_calibrator(name: Any, state: Any, k: int, where: str) -> dict | None:
    from eeopt.core.calibration import CALIBRATORS, create_calibrator

    if name == "none":
        if state is not None:
            raise PolicyFileError(f"{where}: calibrator_state: must be null when calibrator is 'none'")
        return None
    if not isinstance(name, str) or name not in CALIBRATORS:
        raise PolicyFileError(f"{where}: calibrator: {CALIBRATORS.unknown(name)} (or 'none')")
    if not isinstance(state, dict):
        raise PolicyFileError(f"{where}: calibrator_state: calibrator {name!r} needs its fitted state "
                              f"(Calibrator.state_dict()), got {state!r}")
    try:
        create_calibrator(name).load_state_dict(state)
    except EeoptError as exc:
        raise PolicyFileError(f"{where}: calibrator_state: {exc}") from None
    if state.get("num_exits") != k:
        raise PolicyFileError(f"{where}: calibrator_state.num_exits: {state.get('num_exits')!r}, but the policy "
                              f"has {k} exits (costs)")
    return json.loads(json.dumps(state))  # a plain, private copy


def check_budget(value: Any, where: str) -> float:
    """A budget as a float in (0, 1]; raises `PolicyFileError` naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not 0 < float(value) <= 1:
        raise PolicyFileError(f"{where}: expected a share of the last exit's cost in (0, 1] (0.5 for 50 %), "
                              f"got {value!r}")
    return float(value)


def _floats(value: Any, name: str, where: str) -> tuple[float, ...]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise PolicyFileError(f"{where}: {name}: expected a list of numbers, got {value!r}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", "infinity", "-inf", "-infinity"):
            v = -math.inf if v.strip().startswith("-") else math.inf
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or math.isnan(float(v)):
            raise PolicyFileError(f"{where}: {name}.{i}: expected a number, 'inf' or '-inf', got {v!r}")
        out.append(float(v))
    return tuple(out)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (write infinities as \"inf\" / \"-inf\")")
