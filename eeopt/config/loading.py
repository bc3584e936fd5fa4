"""The one way to load a config: `yaml.safe_load` -> `--set` overrides -> pydantic `model_validate`."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from eeopt.config.paths import first_error, set_path
from eeopt.config.study import StudyConfig
from eeopt.config.train import TrainConfig
from eeopt.errors import ConfigError


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, study: bool = False):
    """Read a YAML config (a study file when `study=True`), apply `key=value` overrides, validate.

    Raises:
        ConfigError: missing/unreadable file, bad YAML, bad override, or a field that fails validation; the message
            is one line starting with the file name and the dotted field path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(_read_text(path)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    raw = apply_overrides(raw, overrides)
    return validate_config(raw, source=str(path), study=study)


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A `TrainConfig` from a train file, or from the fixed part of a study file (search space and study ignored).

    Raises:
        ConfigError: as `load_config`.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(_read_text(path)) if path.is_file() else None
    except (yaml.YAMLError, ConfigError):
        raw = None  # load_config reports the error
    if isinstance(raw, dict) and ("study" in raw or "search_space" in raw):
        return load_config(path, overrides, study=True).train_config()
    return load_config(path, overrides)


def _read_text(path: Path) -> str:
    """A config file's text; a file that is not UTF-8 (or not readable) is a one-line `ConfigError`."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def validate_config(raw: dict[str, Any], *, source: str = "config", study: bool = False):
    """Validate a raw dict as a `TrainConfig` (or `StudyConfig`); errors as in `load_config`."""
    model = StudyConfig if study else TrainConfig
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(first_error(source, exc)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `dotted.path=value` overrides (values parsed as YAML: `1e-3`, `true`, `[2, 4]`) to a copy of `raw`."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_/][\w\-/]*)*", key):
            raise ConfigError(f"--set {item!r}: expected dotted.path=value, e.g. training.epochs=1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        try:
            set_path(raw, key, value)
        except (KeyError, TypeError):
            raise ConfigError(f"--set {item!r}: {key} goes through a value that is not a section") from None
    return raw
