"""Where a study keeps its state: Optuna storage URLs, MLflow tracking URIs, and the one place that translates
database errors into `StorageError`.

Defaults need no server: ``sqlite:///eeopt.db`` and a SQLite-backed MLflow store (``mlflow.db`` plus an
``mlartifacts/`` folder), both beside the study file. Any SQLAlchemy URL works for Optuna (PostgreSQL for teams and
parallel workers); any MLflow tracking URI for MLflow. The rest of eeopt never asks which database it talks to.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Iterator

from eeopt.errors import StorageError

#: Seconds between heartbeats of running trials, and how long a silent trial lives before it is marked failed.
HEARTBEAT_INTERVAL = 30
HEARTBEAT_GRACE = 120


def default_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'eeopt.db').resolve()}"


def default_tracking_uri(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'mlflow.db').resolve()}"


def default_artifact_root(study_dir: Path) -> str:
    return (study_dir / "mlartifacts").resolve().as_uri()


def resolve_sqlite(url: str, base: Path) -> str:
    """Make a relative SQLite path (``sqlite:///eeopt.db``) relative to `base` (the study file's folder)."""
    match = re.fullmatch(r"sqlite:///(?!/)(.+)", url)
    if match and match.group(1) != ":memory:":
        return f"sqlite:///{(base / match.group(1)).resolve()}"
    return url


def normalize_url(url: str) -> str:
    """Pin the PostgreSQL driver eeopt installs (psycopg 3): ``postgresql://`` -> ``postgresql+psycopg://``.

    SQLAlchemy 2.0 maps a bare ``postgresql://`` to psycopg2 and 2.1 to psycopg; naming it works with both.
    """
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)


def mask_url(url: str | None) -> str | None:
    """Hide the password in a URL (``postgresql://user:***@host/db``) so it can be logged or printed."""
    if url is None:
        return None
    return re.sub(r"(//[^/:@]+:)[^@/]*@", r"\1***@", url)


def open_storage(url: str, *, heartbeat: bool = True):
    """An Optuna `RDBStorage` for `url` (created if missing), with heartbeats for crash detection.

    Raises:
        StorageError: the database cannot be reached or is not an Optuna storage; the message masks passwords.
    """
    import optuna

    url = normalize_url(url)
    engine_kwargs: dict = {}
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 30}
    else:
        engine_kwargs["pool_pre_ping"] = True
    with translate_errors(url), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_INTERVAL if heartbeat else None,
            grace_period=HEARTBEAT_GRACE if heartbeat else None,
        )


@contextlib.contextmanager
def translate_errors(url: str | None) -> Iterator[None]:
    """Turn SQLAlchemy / driver errors into one-line `StorageError`s naming the (masked) URL."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point is to translate every backend error
        import sqlalchemy.exc

        if isinstance(exc, (sqlalchemy.exc.SQLAlchemyError, OSError, ImportError, ValueError)):
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise StorageError(f"storage {mask_url(url)}: {detail}") from exc
        raise
