"""One retry policy for every store call, and the one place that turns a store's errors into `StorageError`.

A store that restarts (PostgreSQL, an MLflow tracking server) or fails over should delay a trial, never fail it:
every call of the driver and of the workers to Optuna or MLflow goes through `RetryPolicy.call`, which retries lost,
refused or busy connections (and an MLflow server's 5xx answers) with backoff for `retry_for` seconds (the study's
`study.store_retry_s`, 120 s by default), saying every `SAY_EVERY` seconds that it still waits. A bad query, a missing
table or a conflict is raised at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from eeopt.errors import StorageError
from eeopt.stores.urls import mask_secrets, mask_url

log = logging.getLogger("eeopt.stores")
T = TypeVar("T")

#: Seconds a store call keeps being retried while its store does not answer (the default of
#: `study.store_retry_s`): long enough for a database or tracking server to restart.
RETRY_FOR = 120.0
#: Seconds between the lines that say a call still waits for its store.
SAY_EVERY = 15.0
#: What an MLflow client says when its tracking server does not answer, or answers with a server error.
_MLFLOW_UNREACHABLE = re.compile(
    r"Max retries exceeded|Connection (refused|reset|aborted)|Failed to establish|RemoteDisconnected|"
    r"Read timed out|timed out|too many (5\d\d|\d+) error responses|Temporary failure in name resolution|"
    r"\b50[234]\b|Service Unavailable|Bad Gateway|server closed the connection|could not connect|"
    r"connection to server|terminating connection|the database system is (starting up|shutting down)",
    re.IGNORECASE)
_PERMANENT = re.compile(r"no such (table|column)|does not exist|syntax error", re.IGNORECASE)


def is_transient(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from (a `StorageError`'s translated error, Optuna's
    `StorageInternalError`, MLflow's `MlflowException`), is a lost, refused or busy connection worth retrying, or a
    tracking server that does not answer; not a bad query, a missing table or a conflict."""
    import sqlalchemy.exc

    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return not _PERMANENT.search(str(exc))
        if isinstance(exc, (sqlalchemy.exc.TimeoutError, ConnectionError, TimeoutError)):
            return True
        if _is_error_of(exc, "MlflowException", "mlflow") or _is_error_of(exc, "RequestException", "requests"):
            if _MLFLOW_UNREACHABLE.search(str(exc)) and not _PERMANENT.search(str(exc)):
                return True
        exc, seen = (exc.__cause__ or exc.__context__), seen + 1
    return False


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How long a store call is retried while its store does not answer (`retry_for` seconds), with backoff
    from `first_delay` to `max_delay` seconds between tries. Picklable: the driver hands it to the workers."""

    retry_for: float = RETRY_FOR
    first_delay: float = 0.5
    max_delay: float = 5.0
    #: Called as `on_wait(what, seconds waited)` when a call starts to wait and every `SAY_EVERY` s after (a study's
    #: worker passes the wait on to the driver's progress lines); its errors are ignored.
    on_wait: Callable[[str, float], None] | None = dataclasses.field(default=None, compare=False, repr=False)

    def call(self, call: Callable[[], T], url: str | None, what: str = "storage") -> T:
        """`call()`, retried while its store does not answer, for up to `retry_for` seconds.

        Raises:
            StorageError: a non-transient error at once, or the last transient one when time runs out (masked).
        """
        start = time.monotonic()
        deadline = start + self.retry_for
        delay, said = self.first_delay, None
        while True:
            try:
                with translate_errors(url, what=what):
                    result = call()
                if said is not None:
                    log.warning("%s answers again (after %.0f s)", what, time.monotonic() - start)
                return result
            except StorageError as exc:
                now = time.monotonic()
                if not is_transient(exc) or now + delay > deadline:
                    if said is not None:
                        log.warning("%s: gave up after %.0f s of retries", what, now - start)
                    raise
                if said is None or now - said >= SAY_EVERY:
                    if said is None:
                        log.warning("%s; retrying for up to %.0f s (study.store_retry_s)", exc, self.retry_for)
                    else:
                        log.warning("%s: still retrying (%.0f s of up to %.0f s)", what, now - start,
                                    self.retry_for)
                    said = now
                    if self.on_wait is not None:
                        with contextlib.suppress(Exception):
                            self.on_wait(what, now - start)
                time.sleep(delay)
                delay = min(2 * delay, self.max_delay)


def retrying(call: Callable[[], T], url: str | None, what: str = "storage", retry_for: float = RETRY_FOR) -> T:
    """`RetryPolicy(retry_for).call(call, url, what)`."""
    return RetryPolicy(retry_for).call(call, url, what)


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
        elif mlflow_error or _is_error_of(exc, "RequestException", "requests") or isinstance(
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
