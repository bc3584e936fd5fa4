"""What the command groups share: option types and the checks of output paths made before any work."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

#: When the command started (`time.monotonic()`, set by `eeopt.cli.main`): progress clocks count from here.
STARTED = time.monotonic()

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (NaN as null) instead of tables.")]
ScoreOpt = Annotated[str, typer.Option("--score", help="Exit score: msp, entropy, margin, doctor, learned.")]
CalibrateOpt = Annotated[
    str, typer.Option("--calibrate", help="Calibrator fitted on --fit-on: none, temperature, vector, histogram, isotonic.")
]


SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config field: --set training.epochs=1 (repeatable).")
]
StudyArg = Annotated[Path, typer.Argument(help="Study file (YAML).")]


def check_output_file(path: Path, option: str) -> None:
    """Before any work: `path` can be written as a file (its folder exists, and it is not a folder itself)."""
    from eeopt.errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; give a file name")
    parent = path.parent
    if not parent.exists():
        raise ConfigError(f"{option} {path}: no such directory {parent} (create it first)")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a directory")


def check_output_dir(path: Path, option: str) -> None:
    """Before any work: `path` is a folder or can be created as one (no file is in the way)."""
    from eeopt.errors import ConfigError

    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"{option} {path}: {part} exists and is not a directory")
            return


# ------------------------------------------------------------------------------------------------------ entry
