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
from typing import Any

from eeopt.config import TrainConfig
from eeopt.errors import ConfigError
from eeopt.outputs import ExitOutputs

#: A custom objective: receives the trial's results, returns one float per study objective.
ObjectiveFn = Callable[["TrialResult"], "float | Sequence[float]"]


@dataclasses.dataclass
class TrialResult:
    """Everything one trial produced. `metrics` uses the MLflow keys (`val/acc_cost_auc`, `test/exit2/ece`, ...)."""

    config: TrainConfig
    val: ExitOutputs
    test: ExitOutputs
    metrics: dict[str, float]
    search: dict[str, Any]
    history: list[dict[str, Any]]
    output_dir: Path | None = None


def evaluate_trial(val: ExitOutputs, test: ExitOutputs, cfg: TrainConfig, seed: int = 0) -> tuple[dict, dict]:
    """Metrics of a trained model's exit outputs, as flat MLflow keys, plus the threshold-search summary.

    Keys: `{split}/exit{k}/{metric}` and `{split}/mean/{metric}` (after the configured calibration, fitted on val);
    `{split}/acc_at_{25,50,75,100}`, `{split}/acc_cost_auc`, `{split}/mean_cost_at_*` and `{split}/mean_cost` for the
    per-exit threshold search (val in-sample, test with the val-chosen policies); the same under `{split}/sweep/` for
    the global-threshold sweep; `calibration/exit{k}/kendall_tau` when a calibrator is used.
    """
    from eeopt.evaluation import evaluate_exits
    from eeopt.search import search_policies

    method, score = cfg.calibration.method, cfg.policy.score
    if method != "none":  # fitted once on val, shared by every report below
        from eeopt.calibration import create_calibrator

        method = create_calibrator(method).fit(val)
    val_report = evaluate_exits(val, fit_on=val, calibrate=method, score=score)
    test_report = evaluate_exits(test, fit_on=val, calibrate=method, score=score)
    summary = search_policies(
        val, test, trials=cfg.policy.trials, score=score, calibrate=method, sampler=cfg.policy.sampler, seed=seed
    )
    metrics: dict[str, float] = {}
    for split, report in (("val", val_report), ("test", test_report)):
        for key, value in report.flat_metrics(split).items():
            if "/exit" in key and key.endswith("/kendall_tau"):
                continue
            if key.startswith(f"{split}/") and "/exit" not in key and "/mean/" not in key:
                key = key.replace(f"{split}/", f"{split}/sweep/", 1)  # efficiency keys of the global sweep
            metrics[key] = value
        for name, value in summary["per_exit_search"][split].items():
            metrics[f"{split}/{name}"] = value
        metrics[f"{split}/mean_cost"] = summary["per_exit_search"][split]["mean_cost_at_100"]
    if test_report.kendall_tau is not None:
        for k, tau in enumerate(test_report.kendall_tau, start=1):
            metrics[f"calibration/exit{k}/kendall_tau"] = tau
    return metrics, summary


def run_trial(
    cfg: TrainConfig,
    *,
    output_dir: str | Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    objectives: Sequence[str] = ("val/acc_cost_auc",),
    objective: ObjectiveFn | str | None = None,
    progress: bool = False,
    seed: int = 0,
) -> tuple[TrialResult, list[float]]:
    """Train and evaluate one configuration; return the result and its objective values.

    Args:
        objectives: metric names (val/...) whose values are returned, in order, when `objective` is None.
        objective: a custom objective (callable or 'package.module:function') returning one value per objective.
    Raises:
        TrainingDiverged, DataError, ConfigError: from training or from an objective that returns the wrong thing.
    """
    from eeopt.training import train

    output_dir = Path(output_dir) if output_dir is not None else None
    trained = train(cfg, output_dir, progress=progress, callback=on_epoch)
    metrics, summary = evaluate_trial(trained.val, trained.test, cfg, seed=seed)
    result = TrialResult(cfg, trained.val, trained.test, metrics, summary, trained.history, output_dir)
    if output_dir is not None:
        from eeopt.evaluation import jsonable

        (output_dir / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=1, sort_keys=True))
        (output_dir / "pareto.json").write_text(json.dumps(jsonable(summary), indent=1))
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
    """Raise `ConfigError` for an objective that no trial can report (checked before anything runs)."""
    import re

    from eeopt.evaluation import EFFICIENCY_METRICS, EXIT_METRICS

    exit_names = "|".join(EXIT_METRICS)
    eff_names = "|".join((*EFFICIENCY_METRICS, "mean_cost", *(f"mean_cost_at_{s}" for s in (25, 50, 75, 100))))
    pattern = re.compile(rf"val/((exit[1-9]\d*|mean)/({exit_names})|(sweep/)?({eff_names}))")
    for name in names:
        if not pattern.fullmatch(name):
            raise ConfigError(
                f"study.objectives: unknown metric {name!r} (e.g. val/acc_cost_auc, val/acc_at_50, val/mean_cost, "
                f"val/mean/auroc, val/exit2/eefp, val/sweep/acc_cost_auc)"
            )


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
