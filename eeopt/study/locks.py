"""Locks that serialise the workers of a study where they would race: the first use of a SQLite MLflow store, and
the claim of a trial slot. A lock lives as long as its holder: the OS drops a file lock and PostgreSQL an advisory
lock when the process dies, so a killed worker never blocks the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from eeopt.study.storage import RETRY_FOR, retrying, sqlite_path


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Serialise the creation of a SQLite store among the processes of this machine (an exclusive lock on
    ``<file>.lock``): MLflow creates and migrates its schema on first use, and two processes doing that at once
    crash ("duplicate column name"). Other stores: no lock (their creation is retried instead)."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_name(path.name + ".lock")):
        yield


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


#: The first key of the PostgreSQL advisory lock that serialises trial claims (the second is the study's id).
CLAIM_LOCK_CLASS = 0x0EE0


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
    import sqlalchemy

    key = {"c": CLAIM_LOCK_CLASS, "k": study_id}

    def acquire():
        conn = engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:c, :k)"), key)
        except BaseException:
            conn.close()
            raise
        return conn

    conn = retrying(acquire, url, retry_for=retry_for)
    try:
        yield
    finally:
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:c, :k)"), key)
        except sqlalchemy.exc.SQLAlchemyError:
            pass  # the connection is gone, and the server dropped the lock with it
        finally:
            conn.close()
