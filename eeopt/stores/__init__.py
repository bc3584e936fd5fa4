"""Where a study keeps its state, and everything that depends on the kind of store.

`Stores` is built once from a study's Optuna storage URL, MLflow tracking URI and artifact location. It answers
whether a store exists and answers (read-only commands never create one), creates the stores safely when workers
start together, and hands out `TrialRun` handles and Optuna storages whose calls all follow one `RetryPolicy`.
Defaults need no server: ``sqlite:///eeopt.db`` and a SQLite-backed MLflow store (``mlflow.db`` plus an
``mlartifacts/`` folder), both beside the study file; PostgreSQL (or any SQLAlchemy URL) for Optuna and an MLflow
tracking server (or a database) for teams and clusters.

The modules: `urls` (the only reader of a URL's scheme; masking), `retry` (the policy and error translation),
`databases` (Optuna storages, reachability checks), `locks` (creation and claim locks), `tracking_store` (the
MLflow client and `TrialRun`). A new kind of store is handled there, and checked by the contract tests
(tests/test_stores.py), which run the same tests over every kind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from eeopt.errors import ConfigError
from eeopt.stores import databases, tracking_store, urls
from eeopt.stores.retry import RETRY_FOR, RetryPolicy, is_transient, retrying, translate_errors
from eeopt.stores.tracking_store import TrialRun
from eeopt.stores.urls import mask_secrets, mask_url

__all__ = ["RETRY_FOR", "RetryPolicy", "Stores", "TrialRun", "is_transient", "mask_secrets", "mask_url", "retrying",
           "translate_errors"]


@dataclasses.dataclass(frozen=True)
class Stores:
    """The Optuna storage, the MLflow tracking store and the artifact root of one study.

    Attributes:
        storage_url: the Optuna storage (a SQLAlchemy URL; SQLite paths resolved).
        tracking_uri: the MLflow tracking store.
        artifact_root: where a new experiment's artifacts go; None where the tracking store decides (a server).
        policy: how long every store call is retried (`study.store_retry_s`).
    """

    storage_url: str
    tracking_uri: str
    artifact_root: str | None = None
    policy: RetryPolicy = RetryPolicy()

    @classmethod
    def for_study(cls, storage: str | None, tracking_uri: str | None, study_dir: Path,
                  retry_for: float = RETRY_FOR) -> Stores:
        """The stores a study file names (`study.storage`, `study.mlflow.tracking_uri`), defaults beside the file.

        Raises:
            ConfigError: the tracking URI is no MLflow tracking URI.
        """
        storage_url = urls.resolve_sqlite(storage, study_dir) if storage else urls.default_storage_url(study_dir)
        uri = urls.resolve_sqlite(tracking_uri, study_dir) if tracking_uri else urls.default_tracking_uri(study_dir)
        databases.check_tracking_uri(uri)
        root = None if urls.keeps_own_artifacts(uri) else urls.default_artifact_root(study_dir)
        return cls(storage_url, uri, root, RetryPolicy(retry_for))

    # ------------------------------------------------------------------------------------------------ questions
    @property
    def masked_storage(self) -> str:
        return mask_url(self.storage_url) or ""

    @property
    def masked_tracking(self) -> str:
        return mask_url(self.tracking_uri) or ""

    @property
    def optuna_is_sqlite(self) -> bool:
        return urls.is_sqlite(self.storage_url)

    @property
    def tracking_server(self) -> bool:
        """The tracking store is an MLflow server: it serves its own UI and keeps its artifacts."""
        return urls.is_tracking_server(self.tracking_uri)

    @property
    def tracking_file(self) -> Path | None:
        """The SQLite file of a local tracking store (what `mlflow ui` opens), else None."""
        return urls.sqlite_path(self.tracking_uri)

    @property
    def optuna_url(self) -> str:
        """The Optuna storage URL as SQLAlchemy opens it (PostgreSQL's driver named), for other programs such as
        optuna-dashboard."""
        return urls.normalize_url(self.storage_url)

    def require_optuna(self) -> None:
        """`StorageError` ("no Optuna storage at ...") unless the storage holds Optuna's tables; creates nothing."""
        databases.require_optuna_schema(self.storage_url)

    def tracking_exists(self) -> bool:
        """Whether the MLflow store may hold runs; creates nothing (see `tracking_store.exists`)."""
        return tracking_store.exists(self.tracking_uri)

    def require_tracking(self) -> None:
        """`StorageError` ("no MLflow tracking store at ...") unless `tracking_exists`."""
        tracking_store.require(self.tracking_uri)

    # ------------------------------------------------------------------------------------------------ checks
    def check(self, *, cluster_address: str | None = None, storage_path: str | None = None,
              max_concurrent: int = 1) -> None:
        """What a run checks before writing anything: stores reachable from where trials run, no more SQLite
        writers than SQLite takes, and both stores answering.

        Raises:
            ConfigError: one line naming the setting to change. StorageError: a store does not answer.
        """
        if cluster_address not in (None, "", "local"):
            self._check_cluster(cluster_address, storage_path)
        if urls.is_sqlite(self.tracking_uri) and max_concurrent + 1 > databases.SQLITE_MAX_WRITERS:
            raise ConfigError(
                f"study.resources.max_concurrent: {max_concurrent} trials logging at once to the SQLite MLflow "
                f"store {self.masked_tracking} is more writers than SQLite takes ({databases.SQLITE_MAX_WRITERS - 1}"
                " trials); use an MLflow server on PostgreSQL (study.mlflow.tracking_uri: http://..., see README "
                "'The team stack') or a postgresql:// tracking URI"
            )
        databases.check_store_answers(self.storage_url, "Optuna storage")
        databases.check_store_answers(self.tracking_uri, tracking_store.WHAT)

    def _check_cluster(self, address: str, storage_path: str | None) -> None:
        """On a Ray cluster trials run on other machines: refuse stores that live in files of this one."""
        where = f"trials run on the nodes of the Ray cluster at {address}"
        if not urls.reachable_from_other_nodes(self.tracking_uri):
            raise ConfigError(
                f"study.mlflow.tracking_uri: {self.masked_tracking} is no tracking server ({where}, which cannot "
                "reach this machine's files or artifact folder); set it to an MLflow server, e.g. http://mlflow:5000"
            )
        if urls.is_sqlite(self.storage_url):
            raise ConfigError(
                f"study.storage: {self.masked_storage} is a file of this machine ({where}, and other workers of the "
                "study must reach it); set it to a database server, e.g. postgresql://user:password@db:5432/optuna"
            )
        if not storage_path:
            raise ConfigError(
                f"study.ray.storage_path: not set ({where} and write checkpoints and exit outputs; study.runs_dir "
                "is a folder of this machine); set it to a folder every node mounts at the same path, or to a URI "
                "such as s3://bucket/eeopt-runs"
            )
        if not urls.is_uri(storage_path) and not Path(storage_path).is_absolute():
            raise ConfigError(f"study.ray.storage_path: {storage_path!r} is a relative path; on a cluster give the "
                              "absolute path every node mounts, or a URI such as s3://bucket/eeopt-runs")

    # ------------------------------------------------------------------------------------------------ handles
    def check_tracking(self) -> None:
        """`StorageError` in one line unless the tracking store answers within a few seconds; writes nothing."""
        databases.check_store_answers(self.tracking_uri, tracking_store.WHAT)

    def optuna_storage(self, create: bool = False):
        """An Optuna `RDBStorage` without heartbeats; with `create=False` (read-only commands) nothing is created
        ("no Optuna storage at ..." otherwise)."""
        return databases.open_storage(self.storage_url, heartbeat=False, create=create)

    def mlflow_client(self):
        """An `MlflowClient` of the tracking store (for reads; writes go through `run`)."""
        return tracking_store.client(self.tracking_uri)

    def prepare_tracking(self) -> None:
        """Create and migrate the MLflow store once, however many workers start together (`creation_lock`)."""
        tracking_store.prepare(self.tracking_uri, self.policy)

    def run(self, run_id: str) -> TrialRun:
        """The handle of an MLflow run, its writes under this study's retry policy."""
        return TrialRun(self.tracking_uri, run_id, self.policy)

    def call_tracking(self, fn):
        """`fn(client)` on the tracking store under the retry policy."""
        return self.policy.call(lambda: fn(tracking_store.client(self.tracking_uri)), self.tracking_uri,
                                tracking_store.WHAT)

    def read_tracking(self, fn):
        """`fn(client)` for a read-only command: one-line errors, no retries, nothing created."""
        self.require_tracking()
        return tracking_store.read(self.tracking_uri, fn)
