"""The `eeopt` command line. Thin: each command parses, calls one library function and prints.

Heavy libraries (torch, Ray, MLflow, Optuna) are imported inside the commands that need them, so `eeopt --help`
answers at once. Any `EeoptError` (and any usage error) prints one line and exits with status 2; set
`EEOPT_DEBUG=1` for the traceback.
"""


from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from eeopt.cli import common
from eeopt.cli.exits import exits_app
from eeopt.cli.predict import predict_app
from eeopt.cli.servers import servers_app
from eeopt.cli.study import study_app
from eeopt.cli.train import data_app, train_app

app = typer.Typer(
    name="eeopt",
    help="Optimise early-exit networks: failure prediction, not calibration, as the proxy for efficiency.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(exits_app, name="exits")
app.add_typer(study_app, name="study")
app.add_typer(data_app, name="data")
app.registered_commands += (
    train_app.registered_commands + predict_app.registered_commands + servers_app.registered_commands
)


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
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every eeopt or usage error becomes one line on stderr and exit status 2."""
    try:  # typer >= 0.26 vendors click; older versions use the click package
        from typer._click.exceptions import UsageError
    except ImportError:  # pragma: no cover
        from click.exceptions import UsageError

    from eeopt.errors import EeoptError

    common.STARTED = time.monotonic()
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

