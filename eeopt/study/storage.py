"""Where a study keeps its state: Optuna storage URLs, MLflow tracking URIs, the checks that a store is there and
answers, and the one place that translates database errors into `StorageError`.

Defaults need no server: ``sqlite:///eeopt.db`` and a SQLite-backed MLflow store (``mlflow.db`` plus an
``mlartifacts/`` folder), both beside the study file. Any SQLAlchemy URL works for Optuna (PostgreSQL for teams and
parallel workers); any MLflow tracking URI for MLflow. The rest of eeopt never asks which database it talks to.

Nothing here writes unless its name says so: `has_optuna_schema` and `check_store_answers` only look (an inspector
and a connect with a short timeout), so read-only commands and the checks before a run leave no file behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path
from typing import Iterator

from eeopt.errors import ConfigError, StorageError

#: Seconds between heartbeats of running trials, and how long a silent trial lives before it is marked failed.
HEARTBEAT_INTERVAL = 30
HEARTBEAT_GRACE = 120
#: Seconds a store may take to answer a connect (or an MLflow server its `/health`) before it counts as unreachable.
CONNECT_TIMEOUT = 5
#: The URI schemes MLflow takes for a tracking store (a driver may follow a `+`: ``postgresql+psycopg://``).
TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
#: Tables every Optuna storage has; a database without them is no Optuna storage (yet).
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


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


def url_scheme(url: str) -> str:
    """The scheme without its driver: ``postgresql+psycopg://h/db`` -> ``postgresql``; ``''`` for a bare path."""
    match = re.match(r"([A-Za-z][A-Za-z0-9.\-]*)(\+[A-Za-z0-9_]+)?:", url)
    return match.group(1).lower() if match else ""


def is_sqlite(url: str) -> bool:
    return url_scheme(url) == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and for ``:memory:``)."""
    if not is_sqlite(url):
        return None
    path = url.split(":///", 1)[-1] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def mask_url(url: str | None) -> str | None:
    """Hide the password in a URL (``postgresql://user:***@host/db``) so it can be logged or printed."""
    if url is None:
        return None
    return re.sub(r"(//[^/:@]+:)[^@/]*@", r"\1***@", url)


def open_storage(url: str, *, heartbeat: bool = True, create: bool = True):
    """An Optuna `RDBStorage` for `url`, with heartbeats for crash detection.

    Args:
        create: create the SQLite file and Optuna's tables when missing. With False (read-only commands) nothing
            is created: a URL without Optuna's tables raises "no Optuna storage at ...".
    Raises:
        StorageError: the database cannot be reached, is not an Optuna storage, or (without `create`) holds no
            Optuna storage yet; the message masks passwords.
    """
    import optuna

    if not create:
        require_optuna_schema(url)
    else:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict = {"connect_args": _connect_args(url, timeout=30 if is_sqlite(url) else CONNECT_TIMEOUT)}
    if not is_sqlite(url):
        engine_kwargs["pool_pre_ping"] = True
    with translate_errors(url), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are marked experimental
        return optuna.storages.RDBStorage(
            normalize_url(url),
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_INTERVAL if heartbeat else None,
            grace_period=HEARTBEAT_GRACE if heartbeat else None,
            skip_table_creation=not create,
        )


def has_optuna_schema(url: str) -> bool:
    """Whether `url` holds Optuna's tables. Creates nothing: a missing SQLite file is not opened (that would create
    it), a server database is only inspected.

    Raises:
        StorageError: the database cannot be reached or read.
    """
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return False
    import sqlalchemy

    with translate_errors(url), _engine(url) as engine:
        return OPTUNA_TABLES <= set(sqlalchemy.inspect(engine).get_table_names())


def require_optuna_schema(url: str) -> None:
    """Raise `StorageError` ("no Optuna storage at ...") unless `url` holds an Optuna storage; creates nothing."""
    if not has_optuna_schema(url):
        raise StorageError(f"no Optuna storage at {mask_url(url)}")


def check_tracking_uri(uri: str) -> None:
    """Raise `ConfigError` unless MLflow takes `uri` as a tracking store (scheme in `TRACKING_SCHEMES`, or the
    bare ``databricks``)."""
    if url_scheme(uri) not in TRACKING_SCHEMES and uri != "databricks":
        raise ConfigError(
            f"study.mlflow.tracking_uri: {mask_url(uri)!r} is not an MLflow tracking URI (expected a scheme among "
            f"{', '.join(TRACKING_SCHEMES)}; e.g. sqlite:///mlflow.db or http://mlflow:5000)"
        )


def check_store_answers(url: str, what: str) -> None:
    """Make sure the store at `url` can be used, within `CONNECT_TIMEOUT` seconds, without writing anything.

    SQLite and ``file:`` stores: the file is a readable database, or the folder for it can be created. Database
    servers: a connect. MLflow servers (``http(s)://``): a GET of ``/health``. ``databricks`` is taken on trust
    (its credentials live outside the URI).

    Args:
        what: what the store is, for the message ("Optuna storage", "MLflow tracking store").
    Raises:
        StorageError: one line naming `what`, the masked URL and the reason.
    """
    scheme = "databricks" if url == "databricks" else url_scheme(url)
    with translate_errors(url, what=what):
        if scheme == "sqlite":
            _check_sqlite(url)
        elif scheme == "file":
            from urllib.parse import unquote, urlparse

            _check_creatable(Path(unquote(urlparse(url).path)), folder=True)
        elif scheme in ("http", "https"):
            _check_mlflow_server(url)
        elif scheme != "databricks":
            import sqlalchemy

            with _engine(url) as engine, engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))


def _check_sqlite(url: str) -> None:
    path = sqlite_path(url)
    if path is None:
        return
    if not path.exists():
        _check_creatable(path, folder=False)
        return
    import sqlite3

    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT)
    try:
        conn.execute("PRAGMA schema_version").fetchone()  # "file is not a database" for anything else
    finally:
        conn.close()


def _check_creatable(path: Path, folder: bool) -> None:
    """`path` exists as what it should be, or its nearest existing ancestor is a folder we may write into."""
    if path.exists():
        if folder != path.is_dir():
            raise OSError(f"{path} is not a {'folder' if folder else 'file'}")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"cannot create {path}: {parent} is not a writable folder")


def _check_mlflow_server(url: str) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # it answers; credentials are MLflow's business
            return
        raise OSError(f"GET /health answered {exc.code} (is it an MLflow tracking server?)") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None


def _connect_args(url: str, timeout: float) -> dict:
    """Driver arguments that bound how long a connect may take."""
    scheme = url_scheme(url)
    if scheme == "sqlite":
        return {"timeout": timeout}  # waiting for a lock
    if scheme in ("postgresql", "postgres", "mysql"):
        return {"connect_timeout": int(timeout)}
    if scheme == "mssql":
        return {"timeout": int(timeout)}
    return {}


@contextlib.contextmanager
def _engine(url: str):
    """A throwaway SQLAlchemy engine with a short connect timeout (no pool), disposed afterwards."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(
        normalize_url(url), poolclass=NullPool, connect_args=_connect_args(url, CONNECT_TIMEOUT)
    )
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def translate_errors(url: str | None, what: str = "storage") -> Iterator[None]:
    """Turn SQLAlchemy / driver / network errors into one-line `StorageError`s naming `what` and the masked URL."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point is to translate every backend error
        import sqlite3

        import sqlalchemy.exc

        if isinstance(exc, (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, OSError, ImportError, ValueError)):
            lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            detail = lines[0] if lines else type(exc).__name__
            raise StorageError(f"{what} {mask_url(url)}: {detail}") from exc
        raise
