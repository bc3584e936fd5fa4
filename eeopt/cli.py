"""The `eeopt` command line. Thin: each command parses, calls one library function and prints.

Heavy libraries (torch, Ray, MLflow, Optuna) are imported inside the commands that need them, so `eeopt --help`
answers at once. Any `EeoptError` (and any usage error) prints one line and exits with status 2; set
`EEOPT_DEBUG=1` for the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="eeopt",
    help="Optimise early-exit networks: failure prediction, not calibration, as the proxy for efficiency.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
exits_app = typer.Typer(help="Bring your own exit outputs (.npz): metrics, calibration, threshold search.",
                        no_args_is_help=True)
app.add_typer(exits_app, name="exits")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (NaN as null) instead of tables.")]
ScoreOpt = Annotated[str, typer.Option("--score", help="Exit score: msp, entropy, margin, doctor, learned.")]
CalibrateOpt = Annotated[
    str, typer.Option("--calibrate", help="Calibrator fitted on --fit-on: none, temperature, vector, histogram, isotonic.")
]


def _version(value: bool) -> None:
    if value:
        from eeopt import __version__

        typer.echo(f"eeopt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """eeopt: early-exit network optimisation."""


# ------------------------------------------------------------------------------------------------------ exits
@exits_app.command("evaluate")
def exits_evaluate(
    outputs: Annotated[Path, typer.Argument(help="Exit outputs to evaluate (e.g. test.npz).")],
    fit_on: Annotated[Optional[Path], typer.Option("--fit-on", help="Validation outputs: fit calibrator and thresholds here.")] = None,
    calibrate: CalibrateOpt = "none",
    score: ScoreOpt = "msp",
    compare: Annotated[Optional[str], typer.Option(
        "--compare", help="Also evaluate under these calibrators, fitted on --fit-on: e.g. none,temperature,isotonic "
        "(keys calib/{name}/...).")] = None,
    as_json: JsonFlag = False,
    curve: Annotated[bool, typer.Option("--curve", help="With --json: the full sweep curve, not only its frontier.")] = False,
) -> None:
    """Per-exit calibration and failure-prediction metrics, and global-threshold efficiency."""
    from eeopt.evaluation import evaluate_exits
    from eeopt.outputs import ExitOutputs

    evaluated = ExitOutputs.load(outputs)
    fit = ExitOutputs.load(fit_on) if fit_on is not None else None
    names = [c.strip() for c in compare.split(",") if c.strip()] if compare else []
    report = evaluate_exits(evaluated, fit_on=fit, calibrate=calibrate, score=score, compare=names)
    if as_json:
        typer.echo(json.dumps(report.to_dict(curve=curve), indent=1))
        return
    from eeopt import display

    display.print_report(report, evaluated)


@exits_app.command("search")
def exits_search(
    fit_on: Annotated[Path, typer.Option("--fit-on", help="Validation outputs: thresholds are searched here.")],
    evaluate_on: Annotated[Path, typer.Option("--evaluate-on", help="Test outputs: the val-chosen policies are reported here.")],
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trials.")] = 300,
    score: ScoreOpt = "msp",
    calibrate: CalibrateOpt = "none",
    sampler: Annotated[str, typer.Option("--sampler", help="nsga2 or tpe.")] = "nsga2",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    save_policy: Annotated[Optional[Path], typer.Option("--save-policy", help="Write the chosen policies (JSON).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Per-exit threshold search on validation (Optuna), reported on test beside the global sweep."""
    from eeopt.errors import ConfigError

    if sampler not in ("nsga2", "tpe"):
        raise ConfigError(f"--sampler: expected nsga2 or tpe, got {sampler!r}")
    if save_policy is not None:
        _check_output_file(save_policy, "--save-policy")
    from eeopt.evaluation import jsonable
    from eeopt.outputs import ExitOutputs
    from eeopt.prepared import prepare_pair
    from eeopt.search import search_policies

    val, test = prepare_pair(ExitOutputs.load(fit_on), ExitOutputs.load(evaluate_on), calibrate=calibrate, score=score)
    summary = search_policies(val, test, trials=trials, sampler=sampler, seed=seed).to_dict()
    if save_policy is not None:
        save_policy.write_text(json.dumps(jsonable(summary["policies"]), indent=2))
    if as_json:
        typer.echo(json.dumps(jsonable(summary), indent=1))
        return
    from eeopt import display

    display.print_search(summary)
    if save_policy is not None:
        typer.echo(f"policies written to {save_policy}")


@exits_app.command("analyze")
def exits_analyze(
    folders: Annotated[list[Path], typer.Argument(help="One folder per model with val.npz and test.npz.")],
    target: Annotated[Optional[str], typer.Option("--target", help="Efficiency target of the table (default acc_cost_auc).")] = None,
    split: Annotated[str, typer.Option("--split", help="test (held out) or val.")] = "test",
    compare: Annotated[Optional[str], typer.Option("--compare", help="Calibrators, comma-separated (default: none and all).")] = None,
    score: ScoreOpt = "msp",
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials of each threshold search (policy.trials).")] = 300,
    sampler: Annotated[str, typer.Option("--sampler", help="nsga2 or tpe (policy.sampler).")] = "nsga2",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the threshold search (policy.seed).")] = 0,
    per_exit: Annotated[bool, typer.Option("--per-exit", help="Also list the per-exit proxies.")] = False,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="Write report.md and plots here.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Which proxy predicts efficiency, over models trained elsewhere (bring your own exit outputs)."""
    from eeopt.errors import ConfigError

    if split not in ("val", "test"):
        raise ConfigError(f"--split: expected val or test, got {split!r}")
    if output_dir is not None:
        _check_output_dir(output_dir, "--output-dir")
    from eeopt.analysis import analyze, write_report
    from eeopt.analysis.gather import assess_folders

    names = [c.strip() for c in compare.split(",") if c.strip()] if compare else None
    points, curves = assess_folders(folders, compare=names, score=score, trials=trials, sampler=sampler, seed=seed,
                                    split=split, progress=lambda line: typer.echo(line, err=True))
    analysis = analyze(points, targets=[target] if target else None)
    if output_dir is not None:
        best = max(curves, key=lambda name: curves[name]["none"][1].max() if "none" in curves[name] else 0.0)
        write_report(analysis, output_dir, curves=curves[best], split=split, curves_model=best)
    _show_analysis(analysis, as_json, target, per_exit, output_dir)


def _show_analysis(analysis, as_json: bool, target: str | None, per_exit: bool, output_dir: Path | None) -> None:
    if as_json:
        typer.echo(json.dumps(analysis.to_dict(), indent=1))
        return
    from eeopt import display

    display.print_analysis(analysis, target, per_exit)
    if output_dir is not None:
        typer.echo(f"report: {output_dir / 'report.md'}")


@exits_app.command("synthesize")
def exits_synthesize(
    output_dir: Annotated[Path, typer.Argument(help="Folder for val.npz and test.npz.")],
    exits: Annotated[int, typer.Option("--exits", min=1)] = 6,
    samples: Annotated[int, typer.Option("--samples", min=10)] = 5000,
    classes: Annotated[int, typer.Option("--classes", min=2)] = 10,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write synthetic exit outputs (later exits cost more and predict better) to try the tools without a model."""
    _check_output_dir(output_dir, "OUTPUT_DIR")
    from eeopt.synthetic import synthetic_exit_outputs

    for offset, split in enumerate(("val", "test")):
        out = synthetic_exit_outputs(exits, samples, classes, seed=seed * 2 + offset)
        path = out.save(output_dir / f"{split}.npz")
        typer.echo(f"wrote {path} ({exits} exits, {samples} samples, accuracy per exit "
                   f"{', '.join(f'{a:.3f}' for a in out.accuracy)})")


# ------------------------------------------------------------------------------------------------------ data
data_app = typer.Typer(help="Datasets: where their files are, and the one checksummed download.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("find")
def data_find(
    name: Annotated[str, typer.Argument(help="Dataset with files to find: fashion-mnist.")] = "fashion-mnist",
    root: Annotated[Optional[str], typer.Option("--root", help="Look only here (data.root).")] = None,
) -> None:
    """Say where the dataset's files are; exit status 1 when they are not found."""
    from eeopt.data.idx import fashion_mnist_dirs, find_fashion_mnist

    _only_fashion_mnist(name)
    found = find_fashion_mnist(root)
    if found is None:
        typer.echo(f"{name}: not found in {', '.join(str(d) for d in fashion_mnist_dirs(root))}", err=True)
        raise typer.Exit(1)
    typer.echo(str(next(iter(found.values())).parent))


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="Dataset to download: fashion-mnist.")] = "fashion-mnist",
    root: Annotated[Optional[str], typer.Option("--root", help="Target folder (default: $EEOPT_DATA_DIR or the cache).")] = None,
) -> None:
    """Download the official files and verify their MD5 checksums (only when they are not already present)."""
    from eeopt.data.idx import download_dir, download_fashion_mnist, find_fashion_mnist

    _only_fashion_mnist(name)
    found = find_fashion_mnist(root)
    if found is not None:
        typer.echo(f"{name}: already present in {next(iter(found.values())).parent}")
        return
    paths = download_fashion_mnist(download_dir(root))
    typer.echo(f"{name}: downloaded and verified {len(paths)} files into {download_dir(root)}")


def _only_fashion_mnist(name: str) -> None:
    if name != "fashion-mnist":
        from eeopt.errors import ConfigError

        raise ConfigError(f"{name!r}: only fashion-mnist has files to find or download (digits ships with scikit-learn)")


# ------------------------------------------------------------------------------------------------------ train
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config field: --set training.epochs=1 (repeatable).")
]


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="Train config (YAML); a study file works too (its fixed part).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for model.pt, val.npz, test.npz.")],
    overrides: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train one multi-exit model with fixed hyperparameters; write its exit outputs for `eeopt exits`."""
    from eeopt.config import load_train_config
    from eeopt.training.checks import check_train_config

    cfg = load_train_config(config, overrides or [])
    check_train_config(cfg, source=str(config))
    from eeopt.training import train

    result = train(cfg, output_dir, progress=not quiet)
    acc = ", ".join(f"{a:.3f}" for a in result.test.accuracy)
    typer.echo(f"test accuracy per exit: {acc}")
    typer.echo(f"wrote {output_dir / 'model.pt'}, {output_dir / 'val.npz'}, {output_dir / 'test.npz'}")
    typer.echo(f"next: eeopt exits evaluate {output_dir / 'test.npz'} --fit-on {output_dir / 'val.npz'}")


# ------------------------------------------------------------------------------------------------------ study
study_app = typer.Typer(help="Studies: Optuna search over training and exit policies, run by Ray Tune, "
                             "recorded in MLflow.", no_args_is_help=True)
app.add_typer(study_app, name="study")
StudyArg = Annotated[Path, typer.Argument(help="Study file (YAML).")]


@study_app.command("run")
def study_run(
    study_file: StudyArg,
    overrides: SetOpt = None,
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="Override study.trials (the total).")] = None,
) -> None:
    """Run or continue a study until it holds study.trials finished trials."""
    from eeopt import display
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [], trials=trials)
    summary = study.run()
    display.print_study_summary(summary, study)
    if summary.interrupted:
        raise typer.Exit(130)


@study_app.command("status")
def study_status(study_file: StudyArg, overrides: SetOpt = None,
                 as_json: JsonFlag = False) -> None:
    """Trial counts and the best trials of a study."""
    from eeopt import display
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    summary = study.summary()
    if as_json:
        import dataclasses

        from eeopt.evaluation import jsonable

        typer.echo(json.dumps(jsonable(dataclasses.asdict(summary)), indent=2))
        return
    display.print_study_summary(summary, study)


@study_app.command("list")
def study_list(
    storage: Annotated[str, typer.Option("--storage", help="Optuna storage URL, e.g. sqlite:///eeopt.db")],
    as_json: JsonFlag = False,
) -> None:
    """Every study in an Optuna storage."""
    from eeopt import display
    from eeopt.study import list_studies
    from eeopt.study.storage import mask_url

    rows = list_studies(storage)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    display.print_rows(rows, title=f"studies in {mask_url(storage)}")


@study_app.command("export")
def study_export(
    study_file: StudyArg,
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    overrides: SetOpt = None,
) -> None:
    """One row per trial: params, val/test metrics, MLflow run id."""
    from eeopt.errors import ConfigError
    from eeopt.study import Study

    if fmt not in ("csv", "json"):
        raise ConfigError(f"--format: expected csv or json, got {fmt!r}")
    if output is not None:
        _check_output_file(output, "--output")
    rows = Study.from_yaml(study_file, overrides or []).export()
    from eeopt.evaluation import jsonable

    if fmt == "json":
        text = json.dumps(jsonable(rows), indent=2)
    else:
        import csv
        import io

        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if output is None:
        typer.echo(text, nl=False if fmt == "csv" else True)
    else:
        output.write_text(text)
        typer.echo(f"wrote {len(rows)} trials to {output}", err=True)


# ------------------------------------------------------------------------------------------------------ uis
@app.command("ui")
def ui_cmd(
    study_file: StudyArg,
    port: Annotated[int, typer.Option("--port")] = 5000,
    overrides: SetOpt = None,
) -> None:
    """Start the MLflow UI on 127.0.0.1 for this study's tracking store."""
    import subprocess

    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", study.tracking_uri,
           "--host", "127.0.0.1", "--port", str(port)]
    typer.echo(f"MLflow UI for study {study.name}: http://127.0.0.1:{port}  (Ctrl-C to stop)", err=True)
    raise typer.Exit(subprocess.call(cmd))


@app.command("dashboard")
def dashboard_cmd(
    study_file: StudyArg,
    port: Annotated[int, typer.Option("--port")] = 8080,
    overrides: SetOpt = None,
) -> None:
    """Start optuna-dashboard on 127.0.0.1 for this study's Optuna storage."""
    import shutil
    import subprocess

    from eeopt.errors import EeoptError
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
    if not Path(exe).exists():
        raise EeoptError("optuna-dashboard is not installed: pip install 'eeopt[dashboard]'")
    from eeopt.study.storage import normalize_url, require_optuna_schema

    require_optuna_schema(study.storage_url)  # optuna-dashboard would create an empty storage
    typer.echo(f"optuna-dashboard for study {study.name}: http://127.0.0.1:{port}  (Ctrl-C to stop)", err=True)

    raise typer.Exit(subprocess.call([exe, normalize_url(study.storage_url), "--host", "127.0.0.1", "--port", str(port)]))


# ------------------------------------------------------------------------------------------------------ helpers
def _check_output_file(path: Path, option: str) -> None:
    """Before any work: `path` can be written as a file (its folder exists, and it is not a folder itself)."""
    from eeopt.errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; give a file name")
    parent = path.parent
    if not parent.exists():
        raise ConfigError(f"{option} {path}: no such directory {parent} (create it first)")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a directory")


def _check_output_dir(path: Path, option: str) -> None:
    """Before any work: `path` is a folder or can be created as one (no file is in the way)."""
    from eeopt.errors import ConfigError

    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"{option} {path}: {part} exists and is not a directory")
            return


# ------------------------------------------------------------------------------------------------------ entry
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every eeopt or usage error becomes one line on stderr and exit status 2."""
    try:  # typer >= 0.26 vendors click; older versions use the click package
        from typer._click.exceptions import UsageError
    except ImportError:  # pragma: no cover
        from click.exceptions import UsageError

    from eeopt.errors import EeoptError

    debug = os.environ.get("EEOPT_DEBUG", "") not in ("", "0")
    try:
        code = app(args=argv, standalone_mode=False, prog_name="eeopt")  # typer.Exit(n) comes back as n
    except EeoptError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return 2
    except UsageError as exc:
        if debug:
            raise
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
