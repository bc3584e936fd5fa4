"""Databases as stores: Optuna storages (any SQLAlchemy URL) and the checks, made before anything is written,
that a store is there and answers.

Nothing here writes unless its name says so: `has_optuna_schema` and `check_store_answers` only look (an inspector
and a connect with a short timeout), so read-only commands and the checks before a run leave no file behind.

Several processes may share a store: connection pools are small and bounded, and SQLite files run in WAL mode with
a busy timeout.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from eeopt.errors import ConfigError, StorageError
from eeopt.stores.retry import translate_errors
from eeopt.stores.urls import TRACKING_SCHEMES, is_sqlite, mask_url, normalize_url, sqlite_path, url_scheme

#: Seconds between heartbeats of running trials, and how long a silent trial lives before it is marked failed
#: (the default of `study.heartbeat_grace`).
HEARTBEAT_INTERVAL = 30
HEARTBEAT_GRACE = 120
#: Connections one process keeps to a database server (Optuna's engine): `POOL_SIZE` plus up to `POOL_OVERFLOW`.
POOL_SIZE, POOL_OVERFLOW = 2, 3
#: Processes that may write to one SQLite file at once (trials logging to a SQLite MLflow store, plus the driver)
#: before lock waits turn into failures; beyond it, eeopt asks for a database server.
SQLITE_MAX_WRITERS = 8
#: Seconds a store may take to answer a connect (or an MLflow server its `/health`) before it counts as unreachable.
CONNECT_TIMEOUT = 5
#: Tables every Optuna storage has; a database without them is no Optuna storage (yet).
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


def engine_kwargs(url: str, timeout: float = CONNECT_TIMEOUT) -> dict:
    """SQLAlchemy engine settings for a store shared by several processes: a bounded pool whose connections are
    checked before use (a database restart leaves dead ones behind) and, for SQLite, a busy timeout."""
    if is_sqlite(url):
        return {"connect_args": _connect_args(url, timeout=30)}
    return {"connect_args": _connect_args(url, timeout=timeout), "pool_pre_ping": True, "pool_size": POOL_SIZE,
            "max_overflow": POOL_OVERFLOW, "pool_recycle": 300, "pool_timeout": 30}


def use_wal(url: str) -> None:
    """Put a SQLite database (created when missing) in WAL mode, so readers never block its writer; the mode is
    kept in the file. Other databases: nothing."""
    path = sqlite_path(url)
    if path is None:
        return
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    with translate_errors(url), contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def open_storage(url: str, *, heartbeat: bool = True, create: bool = True, grace: float = HEARTBEAT_GRACE):
    """An Optuna `RDBStorage` for `url`, with heartbeats for crash detection.

    Args:
        create: create the SQLite file and Optuna's tables when missing. With False (read-only commands) nothing
            is created: a URL without Optuna's tables raises "no Optuna storage at ...".
        grace: seconds after its last heartbeat that a running trial counts as dead (`study.heartbeat_grace`).
    Raises:
        StorageError: the database cannot be reached, is not an Optuna storage, or (without `create`) holds no
            Optuna storage yet; the message masks passwords.
    """
    import optuna

    if not create:
        require_optuna_schema(url)
    else:
        use_wal(url)
    with translate_errors(url), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are marked experimental
        return optuna.storages.RDBStorage(
            normalize_url(url),
            engine_kwargs=engine_kwargs(url),
            heartbeat_interval=HEARTBEAT_INTERVAL if heartbeat else None,
            grace_period=grace if heartbeat else None,  # a float works: Optuna compares timedelta(seconds=grace)
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
    if url_scheme(uri) not in TRACKING_SCHEMES:
        raise ConfigError(
            f"study.mlflow.tracking_uri: {mask_url(uri)!r} is not an MLflow tracking URI (expected a scheme among "
            f"{', '.join(TRACKING_SCHEMES)}; e.g. sqlite:///mlflow.db or http://mlflow:5000)"
        )
    if url_scheme(uri) == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        # MLflow 3 refuses its retired file store at first use, which would be after Ray started and trials ran.
        raise ConfigError(
            f"study.mlflow.tracking_uri: {mask_url(uri)!r} is MLflow's file store, which MLflow 3 no longer writes "
            "unless MLFLOW_ALLOW_FILE_STORE=true is set; use sqlite:///mlflow.db (the default) or a tracking server"
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
    """GET /health; credentials in the URL (``http://user:password@host``) go in a basic-auth header."""
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/") + "/health")
    if parts.username is not None:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT):
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


