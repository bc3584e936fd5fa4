"""`eeopt study ...`: run, inspect, export and analyze studies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eeopt.cli.common import JsonFlag, SetOpt, StudyArg, check_output_dir, check_output_file

study_app = typer.Typer(help="Studies: Optuna search over training and exit policies, run by Ray Tune, "
                             "recorded in MLflow.", no_args_is_help=True)

@study_app.command("run")
def study_run(
    study_file: StudyArg,
    overrides: SetOpt = None,
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="Override study.trials (the total).")] = None,
) -> None:
    """Run or continue a study until it holds study.trials finished trials."""
    from eeopt import display
    from eeopt.cli.common import STARTED
    from eeopt.study import Reporter, Study

    study = Study.from_yaml(study_file, overrides or [], trials=trials)
    if not study.settings.ray.storage_path:  # trials write under runs_dir: refuse now, not after the first trial
        check_output_dir(study.runs_dir, f"{study_file}: study.runs_dir")
    summary = study.run(progress=Reporter(started=STARTED))
    display.print_study_summary(summary, study)
    if summary.interrupted:
        raise typer.Exit(130)


@study_app.command("status")
def study_status(study_file: StudyArg, overrides: SetOpt = None,
                 as_json: JsonFlag = False) -> None:
    """Every trial (state, objectives, sampled values, headline test metrics, duration), the counts and the best
    trials of a study. Reads the Optuna storage only."""
    from eeopt import display
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    summary = study.summary()
    rows = study.trial_rows()
    if as_json:
        import dataclasses

        from eeopt.files import jsonable

        typer.echo(json.dumps(jsonable({**dataclasses.asdict(summary), "trials": rows}), indent=2))
        return
    display.print_trials(rows, study.objectives, {row["number"] for row in summary.best})
    display.print_study_summary(summary, study)


@study_app.command("list")
def study_list(
    storage: Annotated[str, typer.Option("--storage", help="Optuna storage URL, e.g. sqlite:///eeopt.db")],
    as_json: JsonFlag = False,
) -> None:
    """Every study in an Optuna storage."""
    from eeopt import display
    from eeopt.study import list_studies
    from eeopt.stores import mask_url

    rows = list_studies(storage)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    display.print_rows(rows, title=f"studies in {mask_url(storage)}")


@study_app.command("export")
def study_export(
    study_file: StudyArg,
    fmt: Annotated[str, typer.Option("--format", help="csv, json or table.")] = "csv",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    overrides: SetOpt = None,
    best: Annotated[bool, typer.Option("--best", help="With --policy: the best trial's (by the first objective; "
                                       "with several objectives, the Pareto-optimal trial best on the first).")] = False,
    trial: Annotated[Optional[int], typer.Option("--trial", min=0, help="With --policy: this trial's.")] = None,
    policy: Annotated[Optional[Path], typer.Option(
        "--policy", help="Write a trial's policy file here (for `eeopt predict --policy`) instead of the rows.")] = None,
    budget: Annotated[Optional[float], typer.Option(
        "--budget", help="With --policy: the budget, a share of the last exit's cost the trial's policy was chosen "
        "for on val: 0.25, 0.5 (default) or 0.75.")] = None,
    certified: Annotated[bool, typer.Option(
        "--certified", help="With --policy: the trial's certified policy (policies/certified.json, written with "
        "policy.risk_control) instead of a budget's.")] = False,
) -> None:
    """One row per trial: MLflow run id, number, state, objectives, params, val/test metrics. CSV writes an
    undefined number (NaN) as an empty cell, JSON as null; the table shows the headline columns only.

    With --best --policy FILE (or --trial N --policy FILE): the policy file that trial wrote for --budget instead."""
    from eeopt.errors import ConfigError

    if certified and budget is not None:
        raise ConfigError("--certified: the certified policy has no budget; drop --budget")
    if policy is not None or best or trial is not None or certified:
        _export_policy(study_file, overrides or [], policy, best, trial, 0.5 if budget is None else budget, fmt,
                       output, certified)
        return
    if budget is not None:
        raise ConfigError("--budget: only with --policy FILE (and --best or --trial N)")
    if fmt not in ("csv", "json", "table"):
        raise ConfigError(f"--format: expected csv, json or table, got {fmt!r}")
    if output is not None:
        check_output_file(output, "--output", inputs=(study_file,))
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    rows = [{"mlflow_run_id": row.get("mlflow_run_id"), **row} for row in study.export()]  # the id first
    if fmt == "table":
        from eeopt import display

        best = {row["number"] for row in study.summary().best}
        text = display.trials_text(rows, study.objectives, run_ids=True, best=best)
    else:
        text = _export_text(rows, fmt)
    if output is None:
        typer.echo(text, nl=False if fmt == "csv" else True)
    else:
        from eeopt.files import atomic_write_text

        atomic_write_text(output, text)
        typer.echo(f"wrote {len(rows)} trials to {output}", err=True)


def _export_policy(study_file: Path, overrides: list[str], policy: Optional[Path], best: bool,
                   trial: Optional[int], budget: float, fmt: str, output: Optional[Path],
                   certified: bool = False) -> None:
    """`study export --best --policy FILE`: copy the chosen trial's policy file (validated) to FILE."""
    from eeopt.errors import ConfigError

    if certified and policy is None:
        raise ConfigError("--certified: say where to write the trial's certified policy with --policy FILE")
    if policy is None:
        raise ConfigError("--best/--trial: say where to write the trial's policy file with --policy FILE")
    if best == (trial is not None):
        raise ConfigError("--policy: say which trial's policy: --best or --trial N (one of them)")
    if output is not None or fmt != "csv":
        raise ConfigError("--policy writes a policy file; --output and --format are for the trial rows")
    check_output_file(policy, "--policy", inputs=(study_file,))
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides)
    if certified:
        _export_certified(study, trial, policy)
        return
    chosen, number = study.trial_policy(budget, trial)
    chosen.save(policy)
    report = chosen.report or {}
    numbers = (f": test accuracy {report['accuracy']:.4f}, mean cost {report['mean_cost']:.4g} {chosen.cost_unit}"
               if {"accuracy", "mean_cost"} <= set(report) else "")
    model_dir = (chosen.source or {}).get("model_dir", "MODEL_DIR")
    typer.echo(f"wrote trial {number}'s policy for budget {budget:g} to {policy}{numbers}", err=True)
    typer.echo(f"next: eeopt predict {model_dir} --policy {policy} --split test", err=True)


def _export_certified(study, trial: Optional[int], policy: Path) -> None:
    """The certified policy of the trial `Study.trial_policy` picks (the best, or number `trial`): found beside
    that trial's budget policy files, in its folder or among its MLflow run's artifacts."""
    from eeopt.errors import StudyError
    from eeopt.core.policy_file import PolicyFile
    from eeopt.pipeline import CERTIFIED_POLICY, POLICY_DIR

    error = None
    for share in (0.5, 0.75, 0.25):  # any budget file names the trial's folder and MLflow run
        try:
            budget_policy, number = study.trial_policy(share, trial)
            break
        except StudyError as exc:
            error = exc
    else:
        raise error
    source = budget_policy.source or {}
    where = f"{POLICY_DIR}/{CERTIFIED_POLICY}"
    local = Path(source.get("model_dir", "")) / where if source.get("model_dir") else None
    if local is not None and local.is_file():
        chosen = PolicyFile.load(local)
    elif source.get("run_id"):
        import tempfile

        client = study.stores.mlflow_client()
        names = {Path(f.path).name for f in client.list_artifacts(source["run_id"], POLICY_DIR)}
        if CERTIFIED_POLICY not in names:
            raise StudyError(f"trial {number} of study {study.name!r} has no certified policy ({where}): run the "
                             "study with policy.risk_control")
        with tempfile.TemporaryDirectory() as tmp:
            chosen = PolicyFile.load(client.download_artifacts(source["run_id"], where, tmp))
    else:
        raise StudyError(f"trial {number} of study {study.name!r} has no certified policy ({where}): run the study "
                         "with policy.risk_control")
    chosen.save(policy)
    record, report = chosen.certification or {}, chosen.report or {}
    promise = (f"{record.get('risk')} <= {record.get('epsilon')} with probability >= {1 - record.get('delta', 0):g} "
               f"({record.get('method')})" if record.get("certified", True) else "no policy certified (the last exit)")
    numbers = (f"; test {record.get('risk')} {report['risk']:.4f}, accuracy {report['accuracy']:.4f}"
               if {"risk", "accuracy"} <= set(report) else "")
    typer.echo(f"wrote trial {number}'s certified policy to {policy}: {promise}{numbers}", err=True)
    typer.echo(f"next: eeopt predict {source.get('model_dir', 'MODEL_DIR')} --policy {policy} --split test", err=True)


def _export_text(rows: list[dict], fmt: str) -> str:
    """JSON (NaN as null) or CSV (the union of the rows' columns in order; NaN and None as empty cells)."""
    from eeopt.files import jsonable

    if fmt == "json":
        return json.dumps(jsonable(rows), indent=2)
    import csv
    import io
    import math

    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows)
    return buf.getvalue()


@study_app.command("analyze")
def study_analyze(
    study_file: StudyArg,
    target: Annotated[Optional[str], typer.Option("--target", help="Efficiency target of the table (default acc_cost_auc).")] = None,
    split: Annotated[str, typer.Option("--split", help="test (held out, default) or val.")] = "test",
    per_exit: Annotated[bool, typer.Option("--per-exit", help="Also list the per-exit proxies.")] = False,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="Write report.md and plots here.")] = None,
    log: Annotated[bool, typer.Option(
        "--log", help="Also log the report to the study's latest MLflow parent run (artifacts analysis/ and its "
        "description). Without it, analyze writes nothing to the stores.")] = False,
    replicate: Annotated[Optional[str], typer.Option(
        "--replicate", metavar="NAME", help="Also compare with study NAME in the same stores: this study "
        "file run again with another training seed (`study run FILE --set seed=1 --set study.name=NAME`). "
        "Trials are paired by number (equal sampled parameters); shows each proxy's Spearman in both and how "
        "far the target moved.")] = None,
    as_json: JsonFlag = False,
    overrides: SetOpt = None,
) -> None:
    """Which proxy (calibration or failure prediction) predicts efficiency across the study's trials?

    Reads every finished trial (Optuna joined to MLflow); a point is a (trial, calibrator) pair. A reporting
    command: it reads the stores and writes to them only with --log (the report then goes to the study's latest
    MLflow parent run).

    With --replicate NAME, also the retraining spread: the same trials trained again with another seed.
    """
    from eeopt.errors import ConfigError

    if split not in ("val", "test"):
        raise ConfigError(f"--split: expected val or test, got {split!r}")
    if output_dir is not None:
        check_output_dir(output_dir, "--output-dir", inputs=(study_file,))
    import tempfile

    from eeopt.analysis import write_report
    from eeopt.cli.exits import show_analysis
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    if replicate == study.name:
        raise ConfigError(f"--replicate: {replicate!r} is this study; name the study run again with another "
                          "seed")
    twin = Study.from_yaml(study_file, [*(overrides or []), f"study.name={replicate}"]) if replicate else None
    if twin is not None:
        twin.trial_store(create=False)  # no such study: say so before the analysis runs
    result = study.analyze(split=split, targets=[target] if target else None)
    spread = study.compare_replicate(result, twin) if twin is not None else None
    run_id = None
    if output_dir is not None or log:
        with tempfile.TemporaryDirectory() as tmp:
            folder = output_dir if output_dir is not None else Path(tmp)
            paths = write_report(result.analysis, folder, curves=result.curves or None, split=split,
                                 curves_model=result.curves_model)
            if spread is not None:
                from eeopt.analysis.replicate import markdown_section

                section = markdown_section(spread.replicate, study.name, spread.name)
                with open(paths[0], "a") as report:
                    report.write("\n" + "\n".join(section))
            run_id = study.log_report(result, paths) if log else None
    if as_json and spread is not None:
        typer.echo(json.dumps({**result.analysis.to_dict(), "replicate": spread.to_dict()}, indent=1))
        return
    show_analysis(result.analysis, as_json, target, per_exit, output_dir)
    if spread is not None:
        spread.print(study.name)
    if log and not as_json:
        typer.echo(f"report logged to the study's MLflow run {run_id} (artifacts/analysis/)" if run_id else
                   "--log: the study has no MLflow parent run to log to (run the study first)", err=True)
