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


def check_output_file(path: Path, option: str, inputs: tuple = ()) -> Path:
    """Before any work: `path` can be written as a file and is none of the command's `inputs` (`eeopt.files`)."""
    from eeopt.files import check_output_path

    return check_output_path(path, what=option, inputs=inputs)


def check_output_dir(path: Path, option: str, inputs: tuple = ()) -> Path:
    """Before any work: `path` is a folder, or can be created as one, where new files can be written."""
    from eeopt.files import check_output_path

    return check_output_path(path, what=option, inputs=inputs, folder=True)


# ------------------------------------------------------------------------------------------------------ entry
