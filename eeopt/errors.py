"""The exceptions eeopt raises on purpose.

Every error a user can cause (a bad file, a bad config field, a diverging run) is an `EeoptError`. The CLI prints
its message as one line and exits with status 2; set `EEOPT_DEBUG=1` to see the traceback. Messages name the thing
that is wrong (a file, an array, a dotted config path) and, where there is one, the fix.
"""

from __future__ import annotations


class EeoptError(Exception):
    """Base class of every error eeopt raises for bad input or a failed run."""


class ExitOutputsError(EeoptError):
    """An exit-outputs file or array is missing, malformed or inconsistent."""


class ConfigError(EeoptError):
    """A config or study file (or a `--set` override) is invalid; the message names the dotted field path."""


class DataError(EeoptError):
    """A dataset is missing, truncated or in the wrong format; the message names the file."""


class TrainingDiverged(EeoptError):
    """The training loss became NaN or infinite."""


class StorageError(EeoptError):
    """The Optuna or MLflow store cannot be reached or used."""


class StudyError(EeoptError):
    """A study cannot run or continue (e.g. too many failed trials)."""


class AnalysisError(EeoptError):
    """Points cannot be analysed (none, a repeated (trial, calibrator), a key with a split prefix, no target)."""
