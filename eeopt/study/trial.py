"""One study trial, callable without Ray: train -> exit outputs -> calibrate on val -> metrics -> threshold search
on val, reported on test -> objectives.

`run_trial` is what a Ray Tune worker runs; tests and debugging call it directly. Test numbers are computed and
logged beside the val numbers but never feed an objective.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eeopt.config import TrainConfig
from eeopt.errors import ConfigError
from eeopt.outputs import ExitOutputs

if TYPE_CHECKING:
    from eeopt.assess import Assessment

#: A custom objective: receives the trial's results, returns one float per study objective.
ObjectiveFn = Callable[["TrialResult"], "float | Sequence[float]"]


@dataclasses.dataclass
class TrialResult:
    """Everything one trial produced. `metrics` uses the MLflow keys (`val/acc_cost_auc`, `test/exit2/ece`, ...)."""

    config: TrainConfig
    val: ExitOutputs
    test: ExitOutputs
    metrics: dict[str, float]
    evaluation: Assessment
    history: list[dict[str, Any]]
    output_dir: Path | None = None


def evaluate_trial(val: ExitOutputs, test: ExitOutputs, cfg: TrainConfig) -> Assessment:
    """Metrics of a trained model's exit outputs (`eeopt.assess.assess_model` with the trial's settings).

    `metrics` uses `eeopt.names` keys with the split in front: `val/...` and `test/...` for the per-exit metrics,
    their means, the per-exit search's efficiency (`acc_cost_auc`, ..., val in-sample, test with the val-chosen
    policies) and the global sweep's (`sweep/...`), under the configured calibrator (fitted once, on val) and score;
    the same under `calib/{name}/` for each of `calibration.compare` and under `score/{name}/` for the other score
    of a model with failure heads. `eeopt exits evaluate` / `exits search --json` print the same numbers under the
    same keys (without the split) for the same calibrator, score and `policy` settings.
    """
    from eeopt.assess import assess_model

    return assess_model(
        val, test, calibration=cfg.calibration.method, compare=cfg.calibration.compare, score=cfg.policy.score,
        trials=cfg.policy.trials, sampler=cfg.policy.sampler, seed=cfg.policy.seed,
    )


def run_trial(
    cfg: TrainConfig,
    *,
    output_dir: str | Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    objectives: Sequence[str] = ("val/acc_cost_auc",),
    objective: ObjectiveFn | str | None = None,
    progress: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[TrialResult, list[float]]:
    """Train and evaluate one configuration; return the result and its objective values.

    Args:
        objectives: metric names (val/...) whose values are returned, in order, when `objective` is None.
        objective: a custom objective (callable or 'package.module:function') returning one value per objective.
        on_batch: `(steps done, steps in the epoch)` after every optimizer step (`eeopt.training.train`).
    Raises:
        TrainingDiverged, DataError, ConfigError: from training or from an objective that returns the wrong thing.
    """
    from eeopt.training import train

    output_dir = Path(output_dir) if output_dir is not None else None
    trained = train(cfg, output_dir, progress=progress, callback=on_epoch, on_batch=on_batch)
    evaluation = evaluate_trial(trained.val, trained.test, cfg)
    result = TrialResult(cfg, trained.val, trained.test, evaluation.metrics, evaluation, trained.history, output_dir)
    if output_dir is not None:
        from eeopt.evaluation import jsonable

        (output_dir / "metrics.json").write_text(json.dumps(jsonable(evaluation.metrics), indent=1, sort_keys=True))
        (output_dir / "pareto.json").write_text(json.dumps(jsonable(evaluation.primary.search.to_dict()), indent=1))
    values = objective_values(result, objectives, objective)
    return result, values


def objective_values(
    result: TrialResult, objectives: Sequence[str], objective: ObjectiveFn | str | None = None
) -> list[float]:
    """The study objectives of a finished trial: named metrics, or what a custom objective returns."""
    if objective is None:
        missing = [name for name in objectives if name not in result.metrics]
        if missing:
            known = ", ".join(sorted(k for k in result.metrics if k.startswith("val/") and "/exit" not in k))
            raise ConfigError(f"study.objectives: unknown metric {missing[0]!r} (known: {known})")
        values = [float(result.metrics[name]) for name in objectives]
    else:
        fn = load_objective(objective) if isinstance(objective, str) else objective
        raw = fn(result)
        values = [float(v) for v in (raw if isinstance(raw, (list, tuple)) else [raw])]
        if len(values) != len(objectives):
            raise ConfigError(
                f"study.objective returned {len(values)} values but study.objectives names {len(objectives)}"
            )
    for name, value in zip(objectives, values):
        if math.isnan(value):
            raise ConfigError(f"objective {name} is undefined (NaN) for this trial")
    return values


def check_objective_names(names: Sequence[str]) -> None:
    """Raise `ConfigError` for an objective that no trial can report (`eeopt.names.check_objective`)."""
    from eeopt.names import check_objective

    for name in names:
        try:
            check_objective(name)
        except ValueError as exc:
            raise ConfigError(f"study.objectives: {exc}") from None


def load_objective(ref: str) -> ObjectiveFn:
    """Import 'package.module:function'. This is the only thing a study file can make eeopt import."""
    module_name, _, attr = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"study.objective: cannot import {ref!r} ({exc})") from None
    if not callable(fn):
        raise ConfigError(f"study.objective: {ref!r} is not callable")
    return fn
