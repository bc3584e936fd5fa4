"""Writing result files: the check every command makes before any work, atomic writes, and JSON values.

A command names its output paths and its input files to `check_output_path` before it loads or trains anything,
so a missing, read-only or wrong location (or an output that would overwrite one of its own inputs) is one
`ConfigError` line at the start, not a traceback at the end. Every writer then goes through `atomic_write`: a
temporary file in the same folder renamed over the target (`os.replace`), so a run killed mid-write leaves the old
file or the new one, never half of one. `jsonable` is the one conversion of results to strict JSON.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from eeopt.errors import ConfigError

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------------------ checks
def check_output_path(path: PathLike, *, what: str, inputs: Iterable[PathLike | None] = (),
                      folder: bool = False) -> Path:
    """`path` as a Path, once sure the command can write it: a file (its folder exists, is a folder and takes new
    files) or, with `folder`, a folder (it, or the nearest existing folder above it, takes new files).

    Writability is probed by creating and removing a temporary file: `os.access` says yes to root on folders it
    cannot write (/sys, an immutable folder, a read-only mount's files under some kernels).

    Raises:
        ConfigError: one line starting with `what` and `path`: it is one of `inputs` (the same file once symbolic
            links are resolved), a folder where a file is expected or a file where a folder is, its folder is
            missing, or the location cannot be written.
    """
    path = Path(path)
    where = f"{what} {path}"
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise ConfigError(f"{where}: is also an input of this command ({source}); write the result elsewhere")
    if folder:
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        if not existing.is_dir():
            blocker = "" if existing == path else f"{existing} "
            raise ConfigError(f"{where}: {blocker}exists and is not a directory")
        _check_writable(existing, where)
        return path
    if path.is_dir():
        raise ConfigError(f"{where}: is a directory; give a file name")
    parent = path.parent
    if not parent.exists():
        blocker = next((p for p in parent.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"{where}: {blocker} is not a directory")
        raise ConfigError(f"{where}: no such directory {parent} (create it first)")
    if not parent.is_dir():
        raise ConfigError(f"{where}: {parent} is not a directory")
    _check_writable(parent, where)
    return path


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _check_writable(folder: Path, where: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".eeopt-probe-")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{where}: cannot write in {folder} ({reason}; read-only or not yours?)") from None
    os.close(fd)
    os.unlink(probe)


# ------------------------------------------------------------------------------------------------ atomic writes
def atomic_write(path: PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` for a temporary path in `path`'s folder (created if missing), then rename it over `path`.

    The temporary name keeps `path`'s suffix (writers such as `np.savez` add one otherwise). Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (flushed to disk before the rename); returns the path."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------------------------ JSON
def jsonable(value: Any, *, infinity_as_string: bool = False) -> Any:
    """`value` as plain JSON values, recursively: NumPy scalars and arrays to Python, tuples to lists, dict keys to
    strings, NaN to None; infinities to None, or to "inf" / "-inf" with `infinity_as_string` (thresholds, where
    an infinite one means "never exit here" and must survive the round trip)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, infinity_as_string=infinity_as_string) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, infinity_as_string=infinity_as_string) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), infinity_as_string=infinity_as_string)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isfinite(value):
            return value
        if infinity_as_string and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return None
    if isinstance(value, np.integer):
        return int(value)
    return value
