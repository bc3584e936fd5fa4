"""The one metric-name scheme: every exit metric, every efficiency metric and every key eeopt reports.

Everything else derives its names from here: evaluation reports, the threshold search, a trial's MLflow keys,
objective validation, the study summary, exports, tables and the proxy analysis. Keys without a split:

    exit{k}/{metric}        a per-exit metric, exits numbered from 1           exit2/ece, exit1/auroc
    mean/{metric}           its mean over the exits that define it             mean/auroc
    {efficiency}            per-exit threshold search, policies chosen on val  acc_cost_auc, acc_at_50, mean_cost
    sweep/{efficiency}      one shared threshold (exact global sweep)          sweep/acc_cost_auc
    certified/{metric}      the risk-controlled (certified) policy             certified/risk, certified/mean_cost
    uncontrolled/{metric}   the val-optimal policy at the certified val cost   uncontrolled/risk
    calib/{name}/{key}      any of the above under another calibrator          calib/temperature/mean/ece
    score/{name}/{key}      any of the above under another exit score          score/learned/mean/auroc
    cost/{unit}/exit{k}     cumulative cost of reaching exit k, per sample     cost/flops/exit2, cost/latency_ms/exit1
    train/{name}            a training-history column (step: the epoch)        train/train_loss, train/images_per_s

MLflow and study objectives put the split in front: `val/...` (what objectives read) or `test/...` (held out,
reported only). The same key means the same number everywhere. Cost keys belong to the model, not to a split, and
never carry one; the efficiency metrics (`mean_cost_at_50`, ...) are in the unit of the cost the trial evaluated
with (`COST_UNITS`: FLOPs, or measured milliseconds per sample).
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

#: Budget shares (percent of the last exit's cost) reported as acc_at_{b} and mean_cost_at_{b}.
BUDGETS = (25, 50, 75, 100)
SPLITS = ("val", "test")
#: Threshold methods: the per-exit search (no prefix) and the exact global sweep.
METHODS = ("search", "sweep")
#: Risk-controlled policies (`eeopt.risk_control`): the certified policy, and the uncontrolled val-optimal policy at
#: the certified policy's val cost beside it. Their keys are `{method}/{metric}` with a metric of `CERTIFIED_METRICS`.
RISK_CONTROL_METHODS = ("certified", "uncontrolled")
#: Variant kinds: the same keys under another calibrator or another exit score.
VARIANTS = ("calib", "score")
#: Units of a per-exit cost: counted FLOPs, or measured latency in milliseconds per sample (`policy.cost`).
COST_UNITS = ("flops", "latency_ms")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric's name, the family it belongs to and which way is better.

    `group` is one of accuracy, calibration, failure (failure prediction), ranking, efficiency, cost.
    """

    name: str
    group: str
    higher_is_better: bool
    summary: str


EXIT_METRICS = (
    Metric("accuracy", "accuracy", True, "share of correct predictions"),
    Metric("ece", "calibration", False, "expected calibration error, 15 equal-width bins"),
    Metric("mce", "calibration", False, "largest calibration gap over non-empty bins"),
    Metric("adaptive_ece", "calibration", False, "ECE with 15 equal-mass bins"),
    Metric("brier", "calibration", False, "multi-class Brier score"),
    Metric("nll", "calibration", False, "negative log-likelihood, from log-softmax of the logits"),
    Metric("auroc", "failure", True, "ROC AUC of the score against correctness"),
    Metric("aupr_error", "failure", True, "average precision of finding errors by a low score"),
    Metric("fpr95", "failure", False, "share of errors accepted at 95 % of correct samples accepted"),
    Metric("aurc", "failure", False, "area under the risk-coverage curve"),
    Metric("eaurc", "failure", False, "AURC minus its optimum for the same error rate"),
    Metric("eefp", "failure", True, "AUROC against 'exiting here loses nothing' (exits 1..K-1)"),
    Metric("kendall_tau", "ranking", True, "Kendall tau of the score ranking before vs after calibration"),
)
EFFICIENCY_METRICS = (
    *(Metric(f"acc_at_{b}", "efficiency", True, f"accuracy of the val-chosen policy within {b} % of the cost")
      for b in BUDGETS),
    Metric("acc_cost_auc", "efficiency", True, "accuracy averaged over every budget from exit 1's to exit K's cost"),
    *(Metric(f"mean_cost_at_{b}", "cost", False, f"mean cost of the policy chosen for the {b} % budget")
      for b in BUDGETS),
    Metric("mean_cost", "cost", False, "mean cost of the most accurate val-chosen policy (the 100 % budget's)"),
)
COST_METRICS = (
    Metric("flops", "cost", False, "counted FLOPs of reaching the exit, per sample"),
    Metric("latency_ms", "cost", False, "measured milliseconds of reaching the exit, per sample (median)"),
)
CERTIFIED_METRICS = (
    Metric("risk", "accuracy", False, "mean loss of the risk (policy.risk_control.risk) the policy is certified for"),
    Metric("accuracy", "accuracy", True, "accuracy of the policy"),
    Metric("mean_cost", "cost", False, "mean cost of the policy per sample"),
    Metric("speedup", "efficiency", True, "the last exit's cost over the policy's mean cost"),
    Metric("certified", "efficiency", True, "1 if a policy was certified, 0 if none was (the last exit alone)"),
)
_CERTIFIED_BY_NAME = {m.name: m for m in CERTIFIED_METRICS}
CERTIFIED_METRIC_NAMES = tuple(_CERTIFIED_BY_NAME)
_BY_NAME = {m.name: m for m in (*EXIT_METRICS, *EFFICIENCY_METRICS)}
_COST_BY_UNIT = {m.name: m for m in COST_METRICS}
EXIT_METRIC_NAMES = tuple(m.name for m in EXIT_METRICS)
EFFICIENCY_METRIC_NAMES = tuple(m.name for m in EFFICIENCY_METRICS)
#: Exit metrics that are proxies in the analysis: calibration and failure prediction.
PROXY_METRIC_NAMES = tuple(m.name for m in EXIT_METRICS if m.group in ("calibration", "failure"))


# --------------------------------------------------------------------------------------------------- keys
def exit_key(k: int, metric: str) -> str:
    """`exit{k}/{metric}`; `k` counts from 1."""
    return f"exit{int(k)}/{metric}"


def mean_key(metric: str) -> str:
    return f"mean/{metric}"


def efficiency_key(metric: str, method: str = "search") -> str:
    """`{metric}` for the per-exit search, `sweep/{metric}` for the global sweep, `certified/{metric}` and
    `uncontrolled/{metric}` for risk-controlled policies."""
    if method in RISK_CONTROL_METHODS:
        return f"{method}/{metric}"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS + RISK_CONTROL_METHODS}, got {method!r}")
    return metric if method == "search" else f"sweep/{metric}"


def variant_key(key: str, kind: str, name: str) -> str:
    """`calib/{name}/{key}` or `score/{name}/{key}`: the same metric under another calibrator or score."""
    if kind not in VARIANTS:
        raise ValueError(f"variant kind must be one of {VARIANTS}, got {kind!r}")
    return f"{kind}/{name}/{key}"


def cost_key(unit: str, k: int) -> str:
    """`cost/{unit}/exit{k}`: the model's cumulative cost of reaching exit `k` (from 1) in `unit` (`COST_UNITS`)."""
    if unit not in COST_UNITS:
        raise ValueError(f"cost unit must be one of {COST_UNITS}, got {unit!r}")
    return f"cost/{unit}/exit{int(k)}"


def cost_metrics(unit: str, costs) -> dict[str, float]:
    """{`cost/{unit}/exit{k}`: cost} for a vector of K cumulative costs."""
    return {cost_key(unit, k): float(c) for k, c in enumerate(costs, start=1)}


#: Training throughput of an epoch: images trained on per second of its steps (data, forward, backward, update).
IMAGES_PER_S = "images_per_s"


def train_key(name: str) -> str:
    """`train/{name}`: a column of a training history row (`train_loss`, `lr`, `seconds`, `IMAGES_PER_S`,
    `val_acc_exit{k}`) as the MLflow metric a trial logs every epoch."""
    return f"train/{name}"


def split_key(split: str, key: str) -> str:
    """`{split}/{key}`, the MLflow name of a key on a split."""
    return f"{split}/{key}"


def with_split(split: str, metrics: dict[str, float]) -> dict[str, float]:
    """Every key of `metrics` prefixed with `{split}/`."""
    return {split_key(split, key): value for key, value in metrics.items()}


def with_variant(kind: str, name: str, metrics: dict[str, float]) -> dict[str, float]:
    return {variant_key(key, kind, name): value for key, value in metrics.items()}


def on_split(split: str, metrics: dict[str, float]) -> dict[str, float]:
    """The keys of `metrics` on `split`, without the split (`val/exit1/ece` -> `exit1/ece`): `with_split` undone."""
    prefix = split_key(split, "")
    return {key[len(prefix):]: value for key, value in metrics.items() if key.startswith(prefix)}


def of_variant(kind: str, name: str, metrics: dict[str, float]) -> dict[str, float]:
    """The keys of `metrics` under variant `kind`/`name`, without it (`calib/iso/mean/ece` -> `mean/ece`):
    `with_variant` undone."""
    prefix = variant_key("", kind, name)
    return {key[len(prefix):]: value for key, value in metrics.items() if key.startswith(prefix)}


def variant_names(kind: str, metrics: dict[str, float]) -> list[str]:
    """The names of the `kind` variants (`calib` or `score`) among the keys of `metrics` (without a split), in
    order of first appearance."""
    if kind not in VARIANTS:
        raise ValueError(f"variant kind must be one of {VARIANTS}, got {kind!r}")
    return list(dict.fromkeys(key.split("/")[1] for key in metrics if key.startswith(f"{kind}/")))


class Key(NamedTuple):
    """A parsed key. `scope` is 'exit', 'mean', 'efficiency' or 'cost'; `exit` counts from 1 (None unless scope is
    exit or cost); `method` is 'search', 'sweep', 'certified' or 'uncontrolled' for efficiency keys (None
    otherwise). A cost key's metric is its unit (`flops`, `latency_ms`)."""

    split: str | None
    variant: tuple[str, str] | None
    scope: str
    exit: int | None
    method: str | None
    metric: Metric

    @property
    def base(self) -> str:
        """The key without split and variant (`exit2/ece`, `mean/auroc`, `sweep/acc_at_50`)."""
        if self.scope == "exit":
            return exit_key(self.exit, self.metric.name)
        if self.scope == "mean":
            return mean_key(self.metric.name)
        if self.scope == "cost":
            return cost_key(self.metric.name, self.exit)
        return efficiency_key(self.metric.name, self.method)


_NAME = r"[A-Za-z0-9_.\-]+"
_COST_KEY = re.compile(rf"cost/(?P<unit>{'|'.join(COST_UNITS)})/exit(?P<exit>[1-9]\d*)")
_KEY = re.compile(
    rf"(?:(?P<split>{'|'.join(SPLITS)})/)?"
    rf"(?:(?P<kind>{'|'.join(VARIANTS)})/(?P<vname>{_NAME})/)?"
    rf"(?:exit(?P<exit>[1-9]\d*)/(?P<emetric>\w+)|mean/(?P<mmetric>\w+)|(?P<rc>certified|uncontrolled)/(?P<rcmetric>\w+)"
    rf"|(?P<sweep>sweep/)?(?P<effmetric>\w+))"
)


def parse_key(key: str) -> Key:
    """Split a key into its parts.

    Raises:
        ValueError: the key is not in the scheme (the message lists the forms).
    """
    cost = _COST_KEY.fullmatch(key)
    if cost is not None:
        return Key(None, None, "cost", int(cost["exit"]), None, _COST_BY_UNIT[cost["unit"]])
    if key.startswith(tuple(f"{prefix}cost/" for prefix in ("", *(f"{s}/" for s in SPLITS)))):
        raise ValueError(f"{key!r}: a cost key is cost/{{unit}}/exit{{k}} with unit one of {', '.join(COST_UNITS)}, "
                         "without a split")
    match = _KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"{key!r} is not a metric key ({_FORMS})")
    variant = (match["kind"], match["vname"]) if match["kind"] else None
    if match["emetric"] is not None or match["mmetric"] is not None:
        name = match["emetric"] or match["mmetric"]
        if name not in EXIT_METRIC_NAMES:
            raise ValueError(f"{key!r}: unknown exit metric {name!r} (known: {', '.join(EXIT_METRIC_NAMES)})")
        scope = "exit" if match["emetric"] is not None else "mean"
        exit_ = int(match["exit"]) if scope == "exit" else None
        return Key(match["split"], variant, scope, exit_, None, _BY_NAME[name])
    if match["rc"] is not None:
        name = match["rcmetric"]
        if name not in CERTIFIED_METRIC_NAMES:
            raise ValueError(f"{key!r}: unknown metric {name!r} of a risk-controlled policy (known: "
                             f"{', '.join(CERTIFIED_METRIC_NAMES)})")
        return Key(match["split"], variant, "efficiency", None, match["rc"], _CERTIFIED_BY_NAME[name])
    name = match["effmetric"]
    if name not in EFFICIENCY_METRIC_NAMES:
        raise ValueError(
            f"{key!r}: unknown metric {name!r} (efficiency: {', '.join(EFFICIENCY_METRIC_NAMES)}; "
            f"per exit: exit{{k}}/{{metric}} or mean/{{metric}})"
        )
    method = "sweep" if match["sweep"] else "search"
    return Key(match["split"], variant, "efficiency", None, method, _BY_NAME[name])


_FORMS = "forms: exit{k}/{metric}, mean/{metric}, {efficiency}, sweep/{efficiency}, optionally after calib/{name}/ or " \
         "score/{name}/, after val/ or test/ in MLflow; cost/{unit}/exit{k}"


def metric_of(key: str) -> Metric:
    """The `Metric` a key reports (its direction and group)."""
    return parse_key(key).metric


def higher_is_better(key: str) -> bool:
    return metric_of(key).higher_is_better


def check_objective(key: str, custom: bool = False) -> Key | None:
    """The one rule for study objectives: a `val/` key of the scheme, without a variant.

    Test numbers never steer a search, and the configured calibration and score drive the objective (variants are
    reported beside it). With a `custom` objective function the names only label its values: they must still start
    with `val/`, and None is returned. Raises `ValueError` with the reason.
    """
    if not key.startswith("val/"):
        raise ValueError(f"objective {key!r} must be a val/ metric (test numbers never steer the search)")
    if custom:
        return None
    try:
        parsed = parse_key(key)
    except ValueError:
        raise ValueError(f"unknown metric {key!r} (e.g. val/acc_cost_auc, val/acc_at_50, val/mean_cost, "
                         "val/mean/auroc, val/exit2/eefp, val/sweep/acc_cost_auc, val/certified/mean_cost)") from None
    if parsed.split != "val":
        raise ValueError(f"objective {key!r} must be a val/ metric (test numbers never steer the search)")
    if parsed.variant is not None:
        raise ValueError(
            f"objective {key!r}: the configured calibration.method and policy.score drive objectives; "
            "drop the calib/ or score/ part"
        )
    return parsed
