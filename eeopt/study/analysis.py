"""`eeopt study analyze`: every finished trial of a study (Optuna, joined to MLflow by run id) as analysis points.

A point is a (trial, calibrator) pair read from the trial's metrics on one split (`eeopt.analysis.gather`): its
`metrics.json` artifact, which holds every calibrator's and score's, or the run's own metrics for older runs;
the report's before/after curves come from the best uncalibrated model's exit outputs (its MLflow artifacts), and
`log_report` logs the report to the study's latest MLflow parent run (`study analyze --log`).
`analyze_replicate` compares a study with its replicate, the same file run again with another training seed
(`study analyze --replicate`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from eeopt.analysis import Analysis, Point, analyze
from eeopt.analysis.gather import points_from_metrics
from eeopt.analysis.replicate import Replicate, compare_replicate
from eeopt.errors import AnalysisError
from eeopt.stores import translate_errors
from eeopt.study import tracking
from eeopt.study.trials import ATTR_MLFLOW_RUN

#: Artifact folder of the parent run that holds the analysis.
ARTIFACT_PATH = "analysis"


@dataclasses.dataclass(frozen=True)
class StudyAnalysis:
    """The analysis of a study and where it came from; `curves` are {calibrator: (cost share, accuracy)} of the
    model named `curves_model` (the best uncalibrated one on the main target), empty when its outputs are
    gone. `params` are the sampled parameters of each analysed trial, by number, and `seeds` the training
    seeds (the top-level `seed`) their runs logged: what `analyze_replicate` pairs and checks."""

    analysis: Analysis
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    curves_model: str
    split: str
    parent_run_id: str | None
    params: dict[int, dict] = dataclasses.field(default_factory=dict)
    seeds: tuple[str, ...] = ()


def analyze_study(study, *, split: str = "test", targets: list[str] | None = None, n_boot: int = 1000,
                  seed: int = 0) -> StudyAnalysis:
    """Points of every COMPLETE trial with an MLflow run, analysed.

    Raises:
        StudyError: no such study; AnalysisError: no trial has metrics on `split`; StorageError: a store is gone.
    """
    client = _client(study)
    trials, points, runs = _gather(study, client, split)
    analysis = analyze(points, targets=targets, n_boot=n_boot, seed=seed)
    best = _best_uncalibrated(analysis)
    calibrators = [p.calibrator for p in analysis.points if p.trial == best]
    curves = _curves(client, runs[best], split, calibrators) if best is not None else {}
    return StudyAnalysis(analysis, curves, f"trial {best}" if best is not None else "", split,
                         _latest_parent_run(client, study), {n: dict(t.params) for n, t in trials.items()},
                         _seeds(runs))


def _gather(study, client, split: str) -> tuple[dict, list[Point], dict]:
    """The study's COMPLETE trials with an MLflow run ({number: FrozenTrial}), their points on `split`, and
    their runs ({number: mlflow Run}). Raises `AnalysisError` when no trial has metrics on `split`."""
    from optuna.trial import TrialState

    complete = study.trial_store(create=False).trials(states=(TrialState.COMPLETE,))
    trials, points, runs = {}, [], {}
    with translate_errors(study.tracking_uri, what="MLflow tracking store"):
        for trial in complete:
            run_id = trial.user_attrs.get(ATTR_MLFLOW_RUN)
            if not run_id:
                continue
            run = client.get_run(run_id)
            primary = run.data.params.get("calibration.method", "none")
            points += points_from_metrics(trial.number, run_id, tracking.trial_metrics(client, run), split,
                                          primary=primary)
            trials[trial.number], runs[trial.number] = trial, run
    if not points:
        raise AnalysisError(f"study {study.name!r}: no finished trial has {split}/ metrics in MLflow yet "
                            f"({len(complete)} complete trials); run the study first")
    return trials, points, runs


# ------------------------------------------------------------------------------------------------ replicate
@dataclasses.dataclass(frozen=True)
class StudyReplicate:
    """A study against its replicate `name` (the same study file run again with another training seed).

    `other_params` are the trial numbers both finished with different sampled parameters (left out);
    `seeds` the training seeds (the top-level `seed`) the runs of each study logged.
    """

    name: str
    replicate: Replicate
    other_params: tuple[int, ...]
    seeds: tuple[tuple[str, ...], tuple[str, ...]]

    def warnings(self) -> list[str]:
        """What makes the comparison weaker than it looks, one line each."""
        lines = []
        if self.seeds[0] and self.seeds[0] == self.seeds[1]:
            lines.append(f"both studies trained with seed {', '.join(self.seeds[0])}: the spread shown is "
                         "the trainings' nondeterminism only (run the replicate with --set seed=...)")
        if self.other_params:
            lines.append(f"{len(self.other_params)} trial numbers finished in both with other sampled "
                         "parameters (left out): " + _other_params_hint())
        return lines

    def print(self, first_name: str) -> None:
        """The replicate as `study analyze` prints it: the proxies' Spearman in both studies (fitted to the
        terminal, `eeopt.display`), the order's agreement, then the target's change per calibrator."""
        from eeopt import display
        from eeopt.analysis.replicate import order_sentence
        from eeopt.display import Column, fmt

        r = self.replicate
        out = display.console()
        seeds = " vs ".join(",".join(s) or "?" for s in self.seeds)
        left = (f" (left out: {len(r.unpaired_first)} trials of {first_name}, {len(r.unpaired_replicate)} of "
                f"{self.name})" if r.unpaired_first or r.unpaired_replicate else "")
        notes = list(dict.fromkeys(row.note for row in r.proxies if row.note))
        mark = {note: f" ({i})" for i, note in enumerate(notes, 1)}
        columns = [Column("proxy", [row.proxy + mark.get(row.note, "") for row in r.proxies], justify="left",
                          key=True),
                   Column("first", [_ranked(row.spearman, row.rank) for row in r.proxies]),
                   Column("replicate", [_ranked(row.replicate_spearman, row.replicate_rank)
                                        for row in r.proxies]),
                   Column("change", [fmt(row.change, 3) for row in r.proxies]),
                   Column("family", [row.family for row in r.proxies], justify="left")]
        title = (f"Retraining spread: {first_name} vs {self.name} (seed {seeds}), {len(r.pairs)} paired "
                 f"models{left}: Spearman (rank) with {r.target} in each")
        display.print_fitted(columns, out=out, title=title,
                             notes=[f"({i}) {note}" for i, note in enumerate(notes, 1)])
        out.print(order_sentence(r), markup=False)
        columns = [Column("calibrator", [row.calibrator for row in r.targets], justify="left", key=True),
                   Column("models", [str(row.n_models) for row in r.targets]),
                   Column("Spearman", [fmt(row.spearman, 3) for row in r.targets]),
                   Column("median\n|change|", [fmt(row.median_abs_change) for row in r.targets]),
                   Column("max\n|change|", [fmt(row.max_abs_change) for row in r.targets])]
        target_notes = {row.calibrator: row.note for row in r.targets if row.note}
        shared = len(set(target_notes.values())) == 1 and len(target_notes) == len(r.targets)
        display.print_fitted(columns, out=out, title=f"{r.target} of each model, first vs replicate", notes=(
            [f"every row: {next(iter(target_notes.values()))}"] if shared else
            [f"{name}: {note}" for name, note in target_notes.items()]))
        for line in self.warnings():
            out.print(f"warning: {line}", markup=False)

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"name": self.name, **self.replicate.to_dict(), "other_params": list(self.other_params),
                "seeds": {"first": list(self.seeds[0]), "replicate": list(self.seeds[1])}}


def _other_params_hint() -> str:
    return ("the replicate must be the same study file with only seed and study.name changed, and with "
            "sampler tpe or nsga2 later trials' parameters depend on earlier results (use study.sampler "
            "random)")


def analyze_replicate(study, first: StudyAnalysis, replicate_study) -> StudyReplicate:
    """Compare `first` (the analysis of `study`) with the same analysis of `replicate_study`: trials paired
    by number, kept only where both studies sampled the same parameters (`eeopt.analysis.replicate`).

    Raises:
        StudyError: no such replicate study; AnalysisError: it has no metrics on the split, or no trial
        paired with one of `study`; StorageError: a store is gone.
    """
    split, analysis = first.split, first.analysis
    twins, points, twin_runs = _gather(replicate_study, _client(replicate_study), split)
    numbers = [n for n in dict.fromkeys(p.trial for p in analysis.points) if n in twins]
    other = tuple(n for n in numbers if first.params[n] != twins[n].params)
    pairs = [(n, n) for n in numbers if n not in other]
    if not pairs:
        why = (f"{len(other)} trial numbers finished in both with other sampled parameters; "
               f"{_other_params_hint()}" if other else "no trial number finished in both")
        raise AnalysisError(f"study {replicate_study.name!r} has no trial paired with {study.name!r}: {why}")
    twin_analysis = analyze(points, targets=[analysis.main_target], n_boot=0)
    replicate = compare_replicate(analysis, twin_analysis, pairs)
    return StudyReplicate(replicate_study.name, replicate, other, (first.seeds, _seeds(twin_runs)))


def _seeds(runs: dict) -> tuple[str, ...]:
    """The training seeds the runs logged (their `seed` param), sorted."""
    return tuple(sorted({run.data.params.get("seed", "") for run in runs.values()} - {""}))


def _ranked(spearman: float, rank: int | None) -> str:
    from eeopt.display import fmt

    return "-" if rank is None else f"{fmt(spearman, 3)} ({rank})"


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
    from eeopt.core.evaluation import evaluate_exits
    from eeopt.core.outputs import ExitOutputs

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

