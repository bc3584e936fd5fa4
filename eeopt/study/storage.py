"""Where a study keeps its state: Optuna storage URLs, MLflow tracking URIs, the checks that a store is there and
answers, and the one place that translates database errors into `StorageError`.

Defaults need no server: ``sqlite:///eeopt.db`` and a SQLite-backed MLflow store (``mlflow.db`` plus an
``mlartifacts/`` folder), both beside the study file. Any SQLAlchemy URL works for Optuna (PostgreSQL for teams and
parallel workers); any MLflow tracking URI for MLflow. The rest of eeopt never asks which database it talks to.

Nothing here writes unless its name says so: `has_optuna_schema` and `check_store_answers` only look (an inspector
and a connect with a short timeout), so read-only commands and the checks before a run leave no file behind.

Several processes may share a store: connection pools are small and bounded, SQLite files run in WAL mode with a
busy timeout, the first creation of an MLflow store is serialised (`locks.creation_lock`: a lock file on SQLite,
an advisory lock on PostgreSQL), and `retrying` rides out a database that restarts or fails over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Iterator, TypeVar

from eeopt.errors import ConfigError, StorageError

log = logging.getLogger("eeopt.study")
T = TypeVar("T")

#: Seconds between heartbeats of running trials, and how long a silent trial lives before it is marked failed
#: (the default of `study.heartbeat_grace`).
HEARTBEAT_INTERVAL = 30
HEARTBEAT_GRACE = 120
#: Seconds a store operation keeps being retried while its database does not answer (a restart, a failover).
RETRY_FOR = 60.0
#: Connections one process keeps to a database server (Optuna's engine): `POOL_SIZE` plus up to `POOL_OVERFLOW`.
POOL_SIZE, POOL_OVERFLOW = 2, 3
#: Processes that may write to one SQLite file at once (trials logging to a SQLite MLflow store, plus the driver)
#: before lock waits turn into failures; beyond it, eeopt asks for a database server.
SQLITE_MAX_WRITERS = 8
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
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """Hide every password in `text`: in URLs (``//user:***@host``) and libpq settings (``password=***``).

    Used on everything eeopt writes or prints that may quote a URL: error texts, tags, log lines."""
    text = re.sub(r"(//[^/\s:@]+:)[^@\s/]*@", r"\1***@", text)
    return re.sub(r"(?i)\b(password\s*=\s*)('[^']*'|[^\s&]+)", r"\1***", text)


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


def is_transient(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from (a `StorageError`'s translated error, Optuna's
    `StorageInternalError`), is a lost, refused or busy connection worth retrying; not a bad query, a missing table
    or a conflict."""
    import sqlalchemy.exc

    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return not re.search(r"no such (table|column)|does not exist|syntax error", str(exc))
        if isinstance(exc, (sqlalchemy.exc.TimeoutError, ConnectionError, TimeoutError)):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def retrying(call: Callable[[], T], url: str, what: str = "storage", retry_for: float = RETRY_FOR) -> T:
    """`call()`, retried with backoff while its database does not answer, for up to `retry_for` seconds.

    Raises:
        StorageError: a non-transient error at once, or the last transient one when time runs out (masked).
    """
    deadline = time.monotonic() + retry_for
    delay, warned = 0.5, False
    while True:
        try:
            with translate_errors(url, what=what):
                return call()
        except StorageError as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            if not warned:
                log.warning("%s; retrying for up to %.0f s", exc, retry_for)
                warned = True
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


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


@contextlib.contextmanager
def translate_errors(url: str | None, what: str = "storage") -> Iterator[None]:
    """Turn SQLAlchemy / driver / network / MLflow errors into one-line `StorageError`s naming `what` and the
    masked URL; any password the error quotes is masked too."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point is to translate every backend error
        import sqlite3

        import sqlalchemy.exc

        mlflow_error = _is_error_of(exc, "MlflowException", "mlflow")
        if _is_error_of(exc, "StorageInternalError", "optuna") and exc.__cause__ is not None:
            cause = exc.__cause__  # Optuna's text ("invalid data in the commit") hides a lost connection
        elif mlflow_error or isinstance(
            exc, (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, OSError, ImportError, ValueError)
        ):
            cause = exc
        else:
            raise
        text = getattr(cause, "message", None) if mlflow_error else getattr(cause, "orig", None)
        lines = str(text or cause).strip().splitlines()
        detail = mask_secrets(lines[0][:500]) if lines else type(cause).__name__
        raise StorageError(f"{what} {mask_url(url)}: {detail}") from exc


def _is_error_of(exc: BaseException, name: str, package: str) -> bool:
    """`exc` is (a subclass of) `package`'s exception `name`, checked without importing `package`."""
    return any(c.__name__ == name and c.__module__.startswith(package) for c in type(exc).__mro__)
