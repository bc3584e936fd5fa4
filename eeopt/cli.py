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
    as_json: JsonFlag = False,
) -> None:
    """Per-exit calibration and failure-prediction metrics, and global-threshold efficiency."""
    from eeopt.evaluation import evaluate_exits
    from eeopt.outputs import ExitOutputs

    evaluated = ExitOutputs.load(outputs)
    fit = ExitOutputs.load(fit_on) if fit_on is not None else None
    report = evaluate_exits(evaluated, fit_on=fit, calibrate=calibrate, score=score)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
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
    from eeopt.evaluation import jsonable
    from eeopt.search import search_policies
    from eeopt.outputs import ExitOutputs

    if sampler not in ("nsga2", "tpe"):
        from eeopt.errors import ConfigError

        raise ConfigError(f"--sampler: expected nsga2 or tpe, got {sampler!r}")
    val = ExitOutputs.load(fit_on)
    test = ExitOutputs.load(evaluate_on)
    summary = search_policies(val, test, trials=trials, score=score, calibrate=calibrate, sampler=sampler, seed=seed)
    if save_policy is not None:
        save_policy.parent.mkdir(parents=True, exist_ok=True)
        save_policy.write_text(json.dumps(jsonable(summary["policies"]), indent=2))
    if as_json:
        typer.echo(json.dumps(jsonable(summary), indent=2))
        return
    from eeopt import display

    display.print_search(summary)
    if save_policy is not None:
        typer.echo(f"policies written to {save_policy}")


@exits_app.command("synthesize")
def exits_synthesize(
    output_dir: Annotated[Path, typer.Argument(help="Folder for val.npz and test.npz.")],
    exits: Annotated[int, typer.Option("--exits", min=1)] = 6,
    samples: Annotated[int, typer.Option("--samples", min=10)] = 5000,
    classes: Annotated[int, typer.Option("--classes", min=2)] = 10,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write synthetic exit outputs (later exits cost more and predict better) to try the tools without a model."""
    from eeopt.synthetic import synthetic_exit_outputs

    for offset, split in enumerate(("val", "test")):
        out = synthetic_exit_outputs(exits, samples, classes, seed=seed * 2 + offset)
        path = out.save(output_dir / f"{split}.npz")
        typer.echo(f"wrote {path} ({exits} exits, {samples} samples, accuracy per exit "
                   f"{', '.join(f'{a:.3f}' for a in out.accuracy)})")


# ------------------------------------------------------------------------------------------------------ entry
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every eeopt or usage error becomes one line on stderr and exit status 2."""
    import click

    from eeopt.errors import EeoptError

    debug = os.environ.get("EEOPT_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, standalone_mode=False, prog_name="eeopt")
    except EeoptError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.UsageError as exc:
        if debug:
            raise
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
