"""One trained model assessed from its val and test exit outputs, under several calibrators and exit scores.

The configured calibrator and score give the headline keys (`val/acc_cost_auc`, `test/exit2/ece`, ...: what study
objectives read). Every calibrator in `compare` gives the same keys under `calib/{name}/`, and the other score of
a model with a failure head (`learned` beside `msp`, or `msp` beside `learned`) under `score/{name}/`, so one model's
calibrators can be compared and the proxy analysis can read a (model, calibrator) point from any run. Each
calibrator is fitted once, on val; thresholds are chosen on val; test only reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from eeopt.core.evaluation import EvaluationReport, evaluate
from eeopt.names import on_split, with_split, with_variant
from eeopt.core.outputs import ExitOutputs, check_compatible
from eeopt.core.prepared import PreparedSplit, fit_calibrator, prepare
from eeopt.core.search import PolicySearch, search_policies

if TYPE_CHECKING:
    from eeopt.core.calibration import Calibrator


@dataclasses.dataclass(frozen=True)
class Variant:
    """The model under one calibrator and one score: both splits prepared, reported and searched."""

    val: PreparedSplit
    test: PreparedSplit
    val_report: EvaluationReport
    test_report: EvaluationReport
    search: PolicySearch
    calibrator: Calibrator | None = None  # fitted on val; None for "none" (what a policy file of `search` keeps)

    def metrics(self) -> dict[str, float]:
        """`val/...` and `test/...` keys of this variant (without a variant prefix)."""
        return {
            **with_split("val", {**self.val_report.metrics, **self.search.metrics("fit")}),
            **with_split("test", {**self.test_report.metrics, **self.search.metrics("report")}),
        }


@dataclasses.dataclass(frozen=True)
class Assessment:
    """The headline variant, the compared ones by calibrator name, the extra scores by score name, and all their
    metrics as flat MLflow keys."""

    primary: Variant
    calibrators: dict[str, Variant]
    scores: dict[str, Variant]
    metrics: dict[str, float]


def other_scores(outputs: ExitOutputs, score: str) -> tuple[str, ...]:
    """The scores reported beside `score`: a model with a failure head has two natural ones, msp and learned."""
    if outputs.scores is None:
        return ()
    return tuple(s for s in ("msp", "learned") if s != score)


def assess_model(
    val: ExitOutputs,
    test: ExitOutputs,
    *,
    calibration: str = "none",
    compare: Sequence[str] = (),
    score: str = "msp",
    trials: int = 300,
    sampler: str = "nsga2",
    seed: int = 0,
) -> Assessment:
    """Assess a model: the configured `calibration` and `score`, every calibrator of `compare` and the other score.

    Raises:
        ExitOutputsError: val and test do not come from one model, or a score needs arrays they lack.
        UnknownNameError: an unknown calibrator or score.
    """
    check_compatible(val, test)
    settings = {"trials": trials, "sampler": sampler, "seed": seed}
    calibrators = {name: fit_calibrator(name, val) for name in dict.fromkeys([calibration, *compare])}
    cache: dict[tuple[str, str], Variant] = {}

    def variant(cal: str, sc: str) -> Variant:
        if (cal, sc) not in cache:
            cache[(cal, sc)] = _variant(val, test, calibrators[cal], sc, settings)
        return cache[(cal, sc)]

    primary = variant(calibration, score)
    compared = {name: variant(name, score) for name in compare}
    extra = {sc: variant(calibration, sc) for sc in other_scores(val, score)}
    metrics = dict(primary.metrics())
    for name, v in compared.items():
        metrics.update(_under("calib", name, v.metrics()))
    for name, v in extra.items():
        metrics.update(_under("score", name, v.metrics()))
    return Assessment(primary, compared, extra, metrics)


def _variant(val: ExitOutputs, test: ExitOutputs, calibrator, score: str, settings: dict) -> Variant:
    v, t = prepare(val, calibrator, score, "val"), prepare(test, calibrator, score, "test")
    return Variant(v, t, evaluate(v, v), evaluate(t, v), search_policies(v, t, **settings), calibrator)


def _under(kind: str, name: str, split_metrics: dict[str, float]) -> dict[str, float]:
    """`val/exit1/ece` -> `val/{kind}/{name}/exit1/ece`: the variant goes after the split."""
    out = {}
    for split in ("val", "test"):
        out.update(with_split(split, with_variant(kind, name, on_split(split, split_metrics))))
    return out
