"""The one trial pipeline: train -> (measure latency) -> exit outputs -> calibrate on val -> metrics -> threshold
search on val, reported on test -> objectives -> policy files -> plots -> files.

`run_trial` is what `eeopt train` runs and what a study's Ray Tune worker runs (which only adds MLflow tracking
around it); tests and debugging call it directly. It imports no Ray, Optuna or MLflow. Test numbers are computed
and logged beside the val numbers but never feed an objective.

Costs: with `policy.cost: latency` the trained model is profiled on the device it trained on
(`eeopt.inference.profile_latency`), the per-sample latency goes into the exit outputs as `latency_ms` (val.npz and
test.npz keep the counted FLOPs as `costs`), and everything is evaluated with the latency as the cost, so every
efficiency metric and objective is accuracy-latency. Both cost vectors are reported as `cost/{unit}/exit{k}`.

A trial with an output folder writes the val-chosen policy of its search for 25, 50 and 75 % of the last exit's
cost as `policies/budget_{b}.json` (`eeopt.core.policy_file`), ready for `eeopt predict`.

With `policy.risk_control`, `calibration_share` of val is held out (the same samples in every trial, seeded by
`policy.seed`): the calibrator, the threshold search and every other `val/` metric use the rest of val, and the
held-out share alone certifies the trial's policy (`eeopt.risk_control.certify_policy`), logged as
`val/certified/...` (on the held-out share) and `test/certified/...`, and written as `policies/certified.json`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eeopt.config import PolicyConfig, TrainConfig
from eeopt.errors import ConfigError
from eeopt.names import BUDGETS, cost_metrics
from eeopt.core.outputs import ExitOutputs

if TYPE_CHECKING:
    from eeopt.assess import Assessment
    from eeopt.inference import LatencyProfile

log = logging.getLogger("eeopt.study")
#: Budgets (percent of the last exit's cost) a trial writes a policy file for: `policies/budget_{b}.json`.
POLICY_BUDGETS = tuple(b for b in BUDGETS if b < 100)
#: Every metric of a trial as a table (a row per metric, a column per split and calibrator or score), beside
#: metrics.json; MLflow shows it as a table among the run's artifacts.
METRICS_TABLE = "metrics_table.csv"
POLICY_DIR = "policies"
#: The folder of a trial's standard plots (`eeopt.plots.TRIAL_PLOTS`), in its output folder and its MLflow run.
PLOT_DIR = "plots"
#: The certified policy's file in `POLICY_DIR` (with `policy.risk_control`).
CERTIFIED_POLICY = "certified.json"
#: The latency profile of a trial that measured one (`LatencyProfile.to_dict()`), in its output folder.
LATENCY_FILE = "latency.json"

#: A custom objective: receives the trial's results, returns one float per study objective.
ObjectiveFn = Callable[["TrialResult"], "float | Sequence[float]"]


@dataclasses.dataclass
class TrialResult:
    """Everything one trial produced.

    Attributes:
        val, test: the exit outputs as evaluated: `costs` in `cost_unit` (the latency with `policy.cost: latency`),
            `latency_ms` set when latency was measured.
        metrics: MLflow keys (`val/acc_cost_auc`, `test/exit2/ece`, ..., `cost/flops/exit1`).
        costs: {unit: cumulative cost per exit [K]} for each unit known ("flops", and "latency_ms" when measured).
        latency: the latency profile, when measured.
        policies: {budget percent: policy file written} (with an output folder), and "certified": the certified
            policy's file with `policy.risk_control`.
        certified: the certified policy and its numbers, with `policy.risk_control`.
    """

    config: TrainConfig
    val: ExitOutputs
    test: ExitOutputs
    metrics: dict[str, float]
    evaluation: Assessment
    history: list[dict[str, Any]]
    output_dir: Path | None = None
    cost_unit: str = "flops"
    costs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    latency: LatencyProfile | None = None
    policies: dict[int | str, Path] = dataclasses.field(default_factory=dict)
    certified: Any = None  # eeopt.risk_control.RiskControlReport
    plots: dict[str, Path] = dataclasses.field(default_factory=dict)  # {name: PNG} in `eeopt.plots.TRIAL_PLOTS`


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
    source: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> tuple[TrialResult, list[float]]:
    """Train and evaluate one configuration; return the result and its objective values.

    Args:
        objectives: metric names (val/...) whose values are returned, in order, when `objective` is None.
        objective: a custom objective (callable or 'package.module:function') returning one value per objective.
        on_batch: `(steps done, steps in the epoch)` after every optimizer step (`eeopt.training.train`).
        source: provenance recorded in the policy files (`trial`, `run_id`, `model_dir`: the folder holding
            model.pt, `output_dir` by default).
        plots: write the standard plots into `output_dir/plots` (a study's worker passes False and has them
            written off the trial's critical path, `eeopt.study.worker`).
    Raises:
        TrainingDiverged, DataError, ConfigError: from training or from an objective that returns the wrong thing.
    """
    from eeopt.training import train

    output_dir = Path(output_dir) if output_dir is not None else None
    trained = train(cfg, output_dir, progress=progress, callback=on_epoch, on_batch=on_batch)
    val, test = trained.val, trained.test
    costs = {"flops": val.costs}
    profile = None
    if cfg.policy.measures_latency:
        profile = measure_latency(trained.model, cfg.policy)
        costs["latency_ms"] = profile.per_sample_ms
        val, test = (dataclasses.replace(o, latency_ms=profile.per_sample_ms) for o in (val, test))
        if output_dir is not None:
            from eeopt.files import atomic_write_text
            from eeopt.training.checkpoint import atomic_save_outputs

            atomic_save_outputs(val, output_dir / "val.npz")
            atomic_save_outputs(test, output_dir / "test.npz")
            atomic_write_text(output_dir / LATENCY_FILE, json.dumps(profile.to_dict(), indent=1))
    unit = cfg.policy.cost_unit
    val, test = with_cost(val, unit), with_cost(test, unit)
    assessed_val, held_out = held_out_split(val, cfg)
    evaluation = evaluate_trial(assessed_val, test, cfg)
    metrics = dict(evaluation.metrics)
    for name, vector in costs.items():
        metrics.update(cost_metrics(name, vector))
    result = TrialResult(cfg, val, test, metrics, evaluation, trained.history, output_dir, unit, costs, profile)
    if held_out is not None:
        result.certified = certify_trial(held_out, test, assessed_val, cfg, evaluation)
        metrics.update(certified_metrics(result.certified))
    if output_dir is not None:
        from eeopt.files import atomic_write_text, jsonable

        atomic_write_text(output_dir / "metrics.json", json.dumps(jsonable(metrics), indent=1, sort_keys=True))
        atomic_write_text(output_dir / METRICS_TABLE, metrics_table(metrics))
        atomic_write_text(output_dir / "pareto.json", json.dumps(jsonable(evaluation.primary.search.to_dict()),
                                                                  indent=1))
        result.policies = write_policies(result, {"model_dir": str(output_dir), **(source or {})})
        if plots:
            from eeopt.plots import save_trial_plots

            result.plots = save_trial_plots(result, output_dir / PLOT_DIR)
    values = objective_values(result, objectives, objective)
    return result, values


def metrics_table(metrics: Mapping[str, float]) -> str:
    """CSV of `metrics`: a row per metric without split and variant (`exit2/ece`, `mean/auroc`, `sweep/acc_at_50`),
    a column per split and variant (`test`, `test calib/temperature`, `test score/learned`, ...; `-` for keys
    without a split, such as costs); an empty cell where a variant lacks the metric, NaN as `nan`."""
    import csv
    import io

    from eeopt.names import parse_key

    columns: dict[str, None] = {}
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        try:
            parsed = parse_key(key)
        except ValueError:
            parsed = None
        if parsed is None or parsed.split is None:
            column, row = "-", key
        else:
            column = parsed.split + ("" if parsed.variant is None else " " + "/".join(parsed.variant))
            row = parsed.base
        columns.setdefault(column, None)
        rows.setdefault(row, {})[column] = value
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["metric", *columns])
    for row, values in rows.items():
        writer.writerow([row, *("" if values.get(c) is None else repr(float(values[c])) for c in columns)])
    return buf.getvalue()


def held_out_split(val: ExitOutputs, cfg: TrainConfig) -> tuple[ExitOutputs, ExitOutputs | None]:
    """(the val samples the trial assesses and searches on, the held-out share that certifies) with
    `policy.risk_control`; (val, None) without."""
    rc = cfg.policy.risk_control
    if rc is None:
        return val, None
    from eeopt.risk_control import split_calibration

    if val.num_samples < 2:
        raise ConfigError(f"policy.risk_control: val has {val.num_samples} sample; holding out a share needs 2")
    held, rest = split_calibration(val.num_samples, rc.calibration_share, cfg.policy.seed)
    return val.subset(rest), val.subset(held)


def certify_trial(held_out: ExitOutputs, test: ExitOutputs, assessed_val: ExitOutputs, cfg: TrainConfig,
                  evaluation: Assessment):
    """The trial's certified policy (`eeopt.risk_control.certify_policy`): the calibrator the trial fitted on the
    rest of val, the per-exit front searched there, the certificate computed on the held-out share alone."""
    from eeopt.risk_control import certify_policy

    rc, policy = cfg.policy.risk_control, cfg.policy
    calibrator = evaluation.primary.calibrator
    return certify_policy(held_out, test, risk=rc.risk, epsilon=rc.epsilon, delta=rc.delta, method=rc.method,
                          per_exit=rc.per_exit, calibrate=calibrator if calibrator is not None else "none",
                          score=policy.score, seed=policy.seed, trials=policy.trials, sampler=policy.sampler,
                          search_on=assessed_val)


def certified_metrics(report) -> dict[str, float]:
    """`val/certified/...` (the held-out share of val), `test/certified/...` and `uncontrolled/...` beside them."""
    from eeopt.names import with_split

    return {**with_split("val", report.metrics("fit")), **with_split("test", report.metrics("report"))}


def measure_latency(model, policy: PolicyConfig) -> LatencyProfile:
    """Profile a trained model where it is (the device it trained on) as `policy` says: random inputs of its input
    shape (latency does not depend on the values: every timed run goes through all exits)."""
    import torch

    from eeopt.inference import profile_latency

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((policy.latency_batch_size, *model.input_shape), generator=generator)
    return profile_latency(model, example, device=device, warmup=policy.latency_warmup,
                           repeats=policy.latency_repeats)


def with_cost(outputs: ExitOutputs, unit: str) -> ExitOutputs:
    """`outputs` with `costs` in `unit`: "flops" leaves them as they are, "latency_ms" takes `latency_ms`.

    Raises:
        ConfigError: "latency_ms" asked for outputs without a `latency_ms` array.
    """
    if unit == "flops":
        return outputs
    if unit != "latency_ms":
        raise ConfigError(f"cost unit: expected flops or latency_ms, got {unit!r}")
    if outputs.latency_ms is None:
        raise ConfigError(f"{outputs.source}: has no latency_ms (measure it with `eeopt profile`)")
    return dataclasses.replace(outputs, costs=outputs.latency_ms)


def policy_path(folder: str | Path, budget: int) -> Path:
    """Where a trial's folder keeps the policy file of `budget` percent: `policies/budget_{budget}.json`."""
    return Path(folder) / POLICY_DIR / f"budget_{int(budget)}.json"


def write_policies(result: TrialResult, source: Mapping[str, Any]) -> dict[int, Path]:
    """Write the val-chosen policy of the trial's search (its configured calibrator and score) for each of
    `POLICY_BUDGETS` into `result.output_dir` (`policy_path`); `report` holds its test numbers, the same as
    `test/acc_at_{b}` and `test/mean_cost_at_{b}`. A budget no val policy fits (the first exit alone costs more) gets
    no file. Returns {budget: path}."""
    from eeopt.core.policy_choice import policy_from_search
    from eeopt.core.policy_file import PolicyFileError

    primary = result.evaluation.primary
    written = {}
    for budget in POLICY_BUDGETS:
        try:
            policy = policy_from_search(primary.search, budget / 100, calibrator=primary.calibrator,
                                        source=dict(source), cost_unit=result.cost_unit)
        except PolicyFileError as exc:
            log.info("no policy file for the %d %% budget: %s", budget, exc)
            continue
        path = policy_path(result.output_dir, budget)
        path.parent.mkdir(parents=True, exist_ok=True)
        policy.save(path)
        written[budget] = path
    if result.certified is not None:
        rc = result.config.policy.risk_control
        path = Path(result.output_dir) / POLICY_DIR / CERTIFIED_POLICY
        path.parent.mkdir(parents=True, exist_ok=True)
        result.certified.policy_file(
            source=dict(source), cost_unit=result.cost_unit,
            calibration_source=f"val: the held-out share {rc.calibration_share:g} ({result.certified.certificate.n} "
                               "samples)").save(path)
        written["certified"] = path
    return written


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
