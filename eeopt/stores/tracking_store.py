"""The MLflow tracking store: its client, its safe first use, whether it exists, and `TrialRun`, the handle through
which the driver and the workers write a run, every call under the study's `RetryPolicy`.

An outage of the tracking store (a database restart under it, a tracking server killed and restarted) delays the
writes of a run; none is lost and no trial fails for it while the store is back within `study.store_retry_s`.
Writes are safe to repeat: tags and the note are set, a metric logged twice at the same step and time is stored
once, a parameter with the same value is accepted again, an artifact overwrites itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from eeopt.errors import StorageError
from eeopt.stores.databases import use_wal
from eeopt.stores.locks import creation_lock
from eeopt.stores.retry import RetryPolicy, translate_errors
from eeopt.stores.urls import is_sqlite, mask_secrets, mask_url, sqlite_path

WHAT = "MLflow tracking store"
#: MLflow settings for a store shared by many processes (each may be overridden in the environment): small
#: database pools, and HTTP retries of a few seconds (`RetryPolicy` waits longer, saying so).
MLFLOW_SHARED_STORE_ENV = {
    "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "2",
    "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "3",
    "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE": "300",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # MLflow prints "View run ... at: <tracking URI>" for every closed run: noise in the progress lines, and the
    # URI may carry credentials.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # a tqdm bar per downloaded file (each exit-outputs file `study analyze` reads): noise among eeopt's own lines
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_BATCH = 900  # MLflow accepts up to 1000 metrics per batch
#: A run's description (MLflow's note, Markdown) and the markers of its sections.
NOTE_TAG = "mlflow.note.content"
_SECTION = "<!-- eeopt:{name} -->"


#: Where the empty, migrated SQLite store that new SQLite stores are copied from is kept, one per MLflow version.
SCHEMA_CACHE = Path("~/.cache/eeopt")


def client(tracking_uri: str):
    """An `MlflowClient` for `tracking_uri` (imports mlflow lazily)."""
    import mlflow

    _quiet_logs()
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _quiet_logs() -> None:
    for key, value in MLFLOW_SHARED_STORE_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # It logs a whole traceback for each database error it then raises; eeopt reports each in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # A line per HTTP retry ("Retrying (Retry(total=1, ...)"): `RetryPolicy` says once per wait that it waits.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def exists(tracking_uri: str) -> bool:
    """Whether the tracking store may hold runs without being created: a SQLite file must exist; servers and
    other databases are taken to (asking would create their schema). Creates nothing."""
    path = sqlite_path(tracking_uri)
    return path is None or path.is_file()


def require(tracking_uri: str) -> None:
    """Raise `StorageError` ("no MLflow tracking store at ...") where `exists` says no."""
    if not exists(tracking_uri):
        raise StorageError(f"no {WHAT} at {mask_url(tracking_uri)}")


def prepare(tracking_uri: str, policy: RetryPolicy = RetryPolicy()) -> None:
    """Create and migrate an MLflow store once, however many processes start together on a new database: under
    `creation_lock` (a lock file for SQLite, in WAL mode; an advisory lock for PostgreSQL), since MLflow's own
    first-use creation races ("duplicate column name", "duplicate key value violates unique constraint").

    Raises:
        StorageError: the tracking store cannot be used (the URI masked).
    """
    with creation_lock(tracking_uri, what=WHAT, retry_for=policy.retry_for):
        if is_sqlite(tracking_uri):
            path = sqlite_path(tracking_uri)
            if path is not None and not path.exists():
                copy_schema(path)
            use_wal(tracking_uri)
        policy.call(lambda: client(tracking_uri).search_experiments(max_results=1), tracking_uri, WHAT)


def copy_schema(path: Path) -> bool:
    """Create the SQLite store `path` as a copy of an empty store with MLflow's schema, made once per MLflow
    version in `SCHEMA_CACHE`. MLflow itself creates a store by running its schema migrations one by one (about
    1.5 s for each new store, measured); the copy takes milliseconds, and MLflow adds its default experiment on
    first use as it would. False, and nothing written at `path`, when the copy cannot be made (MLflow then creates
    the store itself). Call it under `creation_lock`."""
    import mlflow

    template = SCHEMA_CACHE.expanduser() / f"mlflow-{mlflow.__version__}-schema.db"
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if not template.is_file():
            _make_schema_template(template)
        shutil.copyfile(template, partial)
        os.replace(partial, path)
        return True
    except Exception:  # noqa: BLE001 - no cache folder, a full disk, an MLflow error: MLflow creates the store
        return False
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()


def _make_schema_template(template: Path) -> None:
    """An empty SQLite database migrated to MLflow's current schema (no experiment), written atomically."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    _quiet_logs()
    template.parent.mkdir(parents=True, exist_ok=True)
    partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
    engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    os.replace(partial, template)


@dataclasses.dataclass
class TrialRun:
    """One MLflow run, written through `policy`: what the driver and a worker hold for a trial's run (and the
    driver for the study's parent run). Picklable without its client, which is made where it is used.

    Raises (every method): `StorageError`, when the store has not answered for `policy.retry_for` seconds or
    refuses the write.
    """

    tracking_uri: str
    run_id: str
    policy: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    _client: Any = dataclasses.field(default=None, repr=False, compare=False)
    _opening: Any = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_opening": None}

    def __setstate__(self, state):
        self.__dict__.update({**state, "_opening": threading.Lock()})

    @property
    def client(self):
        with self._opening:  # made once, even while `open_in_background` is making it
            if self._client is None:
                self._client = client(self.tracking_uri)
            return self._client

    def open_in_background(self) -> None:
        """Make the client on a thread: in a fresh process, importing MLflow and opening its store take 1-2 s,
        which the caller's own start-up (imports, data) then overlaps; the first write waits for it."""
        def open_quietly() -> None:
            with contextlib.suppress(Exception):  # a store that does not answer: the first write retries, masked
                _ = self.client

        threading.Thread(target=open_quietly, name="eeopt-mlflow-open", daemon=True).start()

    def _entities(self):
        """`mlflow.entities`, once `open_in_background` is done: two threads importing MLflow at once can see it
        half-initialised."""
        with self._opening:
            import mlflow.entities

        return mlflow.entities

    def call(self, fn):
        """`fn(client)` under the retry policy, errors as one-line `StorageError`s."""
        return self.policy.call(lambda: fn(self.client), self.tracking_uri, WHAT)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        RunTag = self._entities().RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self.call(lambda c: c.log_batch(self.run_id, tags=items, synchronous=True))

    def log_params(self, params: Mapping[str, str]) -> None:
        Param = self._entities().Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start: start + 100]
            self.call(lambda c: c.log_batch(self.run_id, params=chunk, synchronous=True))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log finite and NaN metrics (MLflow stores NaN); skip None and infinities."""
        Metric = self._entities().Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()
                 if value is not None and not (isinstance(value, float) and math.isinf(value))]
        for start in range(0, len(items), _BATCH):
            chunk = items[start: start + _BATCH]
            self.call(lambda c: c.log_batch(self.run_id, metrics=chunk, synchronous=True))

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            if Path(path).exists():
                self.call(lambda c, p=str(path): c.log_artifact(self.run_id, p, artifact_path=artifact_path))

    def log_images(self, images: Mapping[str, Path], prefix: str = "", step: int = 0) -> None:
        """Each PNG as an MLflow image under `{prefix}{name}` (the runs page's image grid compares it across runs)."""
        from PIL import Image

        for name, path in images.items():
            with Image.open(path) as img:
                rgb = img.convert("RGB")
            self.call(lambda c, key=f"{prefix}{name}", im=rgb: c.log_image(self.run_id, im, key=key, step=step,
                                                                          synchronous=True))

    def set_note_section(self, name: str, markdown: str) -> None:
        """Put `markdown` in the run's description (MLflow's note) as section `name`, replacing an earlier version
        of that section and keeping the rest (the study summary and the analysis live side by side)."""
        def write(c):
            note = c.get_run(self.run_id).data.tags.get(NOTE_TAG, "")
            start, end = _SECTION.format(name=name), _SECTION.format(name=f"/{name}")
            if start in note and end in note:
                note = note[: note.index(start)] + note[note.index(end) + len(end):]
            c.set_tag(self.run_id, NOTE_TAG, f"{note.strip()}\n\n{start}\n{markdown.strip()}\n{end}".strip())

        self.call(write)

    def terminate(self, status: str, tags: Mapping[str, str] = {}) -> None:  # noqa: B006 - read only
        """Set `tags` (masked), then end the run with MLflow `status` (FINISHED, FAILED, KILLED)."""
        if tags:
            self.set_tags({k: mask_secrets(str(v))[:4000] for k, v in tags.items()})
        self.call(lambda c: c.set_terminated(self.run_id, status=status))


def read(tracking_uri: str, fn, policy: RetryPolicy = RetryPolicy(retry_for=0)):
    """`fn(client)` for a read-only command: errors as one-line `StorageError`s, retried only per `policy` (by
    default not at all: a command a person waits on says at once that the store does not answer)."""
    return policy.call(lambda: fn(client(tracking_uri)), tracking_uri, WHAT)


__all__ = ["MLFLOW_SHARED_STORE_ENV", "NOTE_TAG", "TrialRun", "WHAT", "client", "exists", "prepare", "read",
           "require", "translate_errors"]
