"""Locks that serialise the workers of a study where they would race: the first use of a store (the creation of its
schema), and the claim of a trial slot. A lock lives as long as its holder: the OS drops a file lock and PostgreSQL
an advisory lock when the process dies, so a killed worker never blocks the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from eeopt.stores.databases import engine_kwargs
from eeopt.stores.retry import RETRY_FOR, retrying
from eeopt.stores.urls import is_postgresql, normalize_url, sqlite_path

#: The first key of the PostgreSQL advisory lock that serialises trial claims (the second is the study's id).
CLAIM_LOCK_CLASS = 0x0EE0
#: The keys of the PostgreSQL advisory lock that serialises the creation of a store's schema (one per database).
CREATION_LOCK_KEY = (0x0EE1, 0)


@contextlib.contextmanager
def creation_lock(url: str, what: str = "storage", retry_for: float = RETRY_FOR) -> Iterator[None]:
    """Serialise the first use of a store that creates and migrates its schema (MLflow's tracking store), so that
    workers starting together on a new database never race: two processes doing it at once crash ("duplicate
    column name" on SQLite, "duplicate key value violates unique constraint" or "out-of-date database schema" on
    PostgreSQL). SQLite: an exclusive lock on ``<file>.lock`` among the processes of this machine; PostgreSQL: a
    session advisory lock (`CREATION_LOCK_KEY`) on the store's database, on a connection of its own, taken with
    the retries of every storage call. Other stores: no lock (MLflow servers create their own schema).

    Raises:
        StorageError: the PostgreSQL database cannot be used (one line naming `what` and the masked URL).
    """
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path.with_name(path.name + ".lock")):
            yield
        return
    if not is_postgresql(url):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    kwargs = engine_kwargs(url)
    engine = sqlalchemy.create_engine(normalize_url(url), poolclass=NullPool, connect_args=kwargs["connect_args"])
    try:
        with _advisory_lock(engine, url, *CREATION_LOCK_KEY, what=what, retry_for=retry_for):
            yield
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created) among the processes of this machine; the OS drops it with the process."""
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def claim_lock(url: str, engine, study_id: int, retry_for: float = RETRY_FOR) -> Iterator[None]:
    """Serialise "count the study's trials, then ask for one" among every worker of a study, so that no two take
    the last slot (the loser's trial would be left behind WAITING once the study is done). SQLite: an exclusive
    lock on ``<file>.claim.lock`` (a SQLite store is one machine's); PostgreSQL: a session advisory lock on a
    connection of its own (released by the server if the process dies; taking it is retried like every storage
    call). Other databases: no lock (the caller's check after the ask still holds the total)."""
    path = sqlite_path(url)
    if path is not None:
        with _file_lock(path.with_name(path.name + ".claim.lock")):
            yield
        return
    if engine.dialect.name != "postgresql":
        yield
        return
    with _advisory_lock(engine, url, CLAIM_LOCK_CLASS, study_id, retry_for=retry_for):
        yield


@contextlib.contextmanager
def _advisory_lock(engine, url: str, lock_class: int, key: int, retry_for: float,
                   what: str = "storage") -> Iterator[None]:
    """A PostgreSQL session advisory lock on keys (`lock_class`, `key`), held on a connection of `engine`'s own
    until the block ends; the server drops it with the connection if the process dies. Taking it (a connect, then
    a wait for the holder) is retried while the database does not answer (`retry.retrying`)."""
    import sqlalchemy

    keys = {"c": lock_class, "k": key}

    def acquire():
        conn = engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:c, :k)"), keys)
        except BaseException:
            conn.close()
            raise
        return conn

    conn = retrying(acquire, url, what=what, retry_for=retry_for)
    try:
        yield
    finally:
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:c, :k)"), keys)
        except sqlalchemy.exc.SQLAlchemyError:
            pass  # the connection is gone, and the server dropped the lock with it
        finally:
            conn.close()
