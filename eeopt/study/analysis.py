"""`eeopt study analyze`: every finished trial of a study (Optuna, joined to MLflow by run id) as analysis points.

A point is a (trial, calibrator) pair read from the trial's metrics on one split (`eeopt.analysis.gather`): its
`metrics.json` artifact, which holds every calibrator's and score's, or the run's own metrics for older runs;
the report's before/after curves come from the best uncalibrated model's exit outputs (its MLflow artifacts), and
`log_report` logs the report to the study's latest MLflow parent run (`study analyze --log`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from eeopt.analysis import Analysis, analyze
from eeopt.analysis.gather import points_from_metrics
from eeopt.errors import AnalysisError
from eeopt.stores import translate_errors
from eeopt.study import tracking
from eeopt.study.trials import ATTR_MLFLOW_RUN

#: Artifact folder of the parent run that holds the analysis.
ARTIFACT_PATH = "analysis"


@dataclasses.dataclass(frozen=True)
class StudyAnalysis:
    """The analysis of a study and where it came from; `curves` are {calibrator: (cost share, accuracy)} of the
    model named `curves_model` (the best uncalibrated one on the main target), empty when its outputs are gone."""

    analysis: Analysis
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    curves_model: str
    split: str
    parent_run_id: str | None


def analyze_study(study, *, split: str = "test", targets: list[str] | None = None, n_boot: int = 1000,
                  seed: int = 0) -> StudyAnalysis:
    """Points of every COMPLETE trial with an MLflow run, analysed.

    Raises:
        StudyError: no such study; AnalysisError: no trial has metrics on `split`; StorageError: a store is gone.
    """
    from optuna.trial import TrialState

    trials = study.trial_store(create=False).trials(states=(TrialState.COMPLETE,))
    client = _client(study)
    points, runs = [], {}
    with translate_errors(study.tracking_uri, what="MLflow tracking store"):
        for trial in trials:
            run_id = trial.user_attrs.get(ATTR_MLFLOW_RUN)
            if not run_id:
                continue
            run = client.get_run(run_id)
            primary = run.data.params.get("calibration.method", "none")
            points += points_from_metrics(trial.number, run_id, tracking.trial_metrics(client, run), split, primary=primary)
            runs[trial.number] = run
    if not points:
        raise AnalysisError(f"study {study.name!r}: no finished trial has {split}/ metrics in MLflow yet "
                            f"({len(trials)} complete trials); run the study first")
    analysis = analyze(points, targets=targets, n_boot=n_boot, seed=seed)
    best = _best_uncalibrated(analysis)
    calibrators = [p.calibrator for p in analysis.points if p.trial == best]
    curves = _curves(client, runs[best], split, calibrators) if best is not None else {}
    return StudyAnalysis(analysis, curves, f"trial {best}" if best is not None else "", split,
                         _latest_parent_run(client, study))


def log_report(study, result: StudyAnalysis, paths: list[Path]) -> str | None:
    """Log the report files (and the analysis as JSON) to the study's latest parent run; its id, or None."""
    if result.parent_run_id is None:
        return None
    import json

    study.stores.require_tracking()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / f"analysis_{result.split}.json"
        data.write_text(json.dumps(result.analysis.to_dict(), indent=1))
        run = study.stores.run(result.parent_run_id)
        run.log_artifacts([*paths, data], artifact_path=ARTIFACT_PATH)
        run.set_note_section(f"analysis-{result.split}", _note(result.analysis, result.split))
    return result.parent_run_id


def _note(analysis: Analysis, split: str) -> str:
    """The proxy table for the parent run's description: every proxy averaged over exits (the configured score),
    with its family, best first (the full report, per-exit and other scores included, is in `analysis/`)."""
    from eeopt.names import parse_key

    target = analysis.main_target
    lines = [f"**Which proxy predicts {target}?** ({split} split, {analysis.n_trials} models; "
             f"report: artifacts `{ARTIFACT_PATH}/report.md`)", "",
             "| proxy (mean over exits) | family | Spearman | 95 % CI | models |",
             "| --- | --- | ---: | :---: | ---: |"]
    for r in analysis.ranked(target):
        key = parse_key(r.proxy)
        if key.scope != "mean" or key.variant is not None:
            continue
        family = "failure prediction" if key.metric.group == "failure" else key.metric.group
        if not np.isfinite(r.spearman):
            lines.append(f"| {r.proxy} | {family} | - | - | {r.n_trials} |")
            continue
        lines.append(f"| {r.proxy} | {family} | {r.spearman:+.2f} | [{r.spearman_ci[0]:+.2f}, "
                     f"{r.spearman_ci[1]:+.2f}] | {r.n_trials} |")
    return "\n".join(lines + ["", analysis.sign_convention])


def _client(study):
    study.stores.require_tracking()
    return study.stores.mlflow_client()


def _best_uncalibrated(analysis: Analysis):
    """The trial whose uncalibrated point scores best on the main target (None without such points)."""
    target = analysis.main_target
    scored = [(p.metrics.get(target, np.nan), p.trial) for p in analysis.points if p.calibrator == "none"]
    scored = [(v, t) for v, t in scored if v is not None and np.isfinite(v)]
    return max(scored)[1] if scored else None


def _curves(client, run, split: str, calibrators: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{calibrator: (cost share, accuracy)} frontiers of one trial's model on `split`, each calibrator fitted on
    val; empty when the trial's exit outputs are not among its artifacts."""
    from eeopt.evaluation import evaluate_exits
    from eeopt.outputs import ExitOutputs

    with tempfile.TemporaryDirectory() as tmp:
        try:
            val = ExitOutputs.load(client.download_artifacts(run.info.run_id, "val.npz", tmp))
            evaluated = val if split == "val" else ExitOutputs.load(
                client.download_artifacts(run.info.run_id, "test.npz", tmp))
        except Exception:  # noqa: BLE001 - artifacts removed or never logged: the report goes without the plot
            return {}
    last = float(evaluated.costs[-1])
    curves = {}
    for name in calibrators:
        front = evaluate_exits(evaluated, fit_on=val, calibrate=name).frontier
        curves[name] = (np.asarray(front.cost) / last, np.asarray(front.accuracy))
    return curves


def _latest_parent_run(client, study) -> str | None:
    experiment = client.get_experiment_by_name(study.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`eeopt.role` = 'study' and tags.`eeopt.study` = '{study.name}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None
