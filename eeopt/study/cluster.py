"""Where trials run and write when they are not on this machine: the checks that refuse stores other nodes cannot
reach, the folder a trial writes (a shared folder, or a URI it is synced to), and the node a trial ran on.

On a Ray cluster (`study.ray.address`) trials run on other machines: MLflow must be a tracking server, Optuna a
database server, and checkpoints and exit outputs go to `study.ray.storage_path` (Ray Tune's `storage_path`): a
folder every node mounts at the same path, written in place, or a URI (``s3://``, ``gs://``, ``file://``, any
filesystem pyarrow knows) that a trial's folder is staged from and synced to after every epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from eeopt.errors import ConfigError
from eeopt.study.storage import SQLITE_MAX_WRITERS, is_sqlite, mask_url, url_scheme


def is_cluster(address: str | None) -> bool:
    """Whether `study.ray.address` names a Ray cluster (whose nodes may be other machines) or a local Ray."""
    return address not in (None, "", "local")


def check_cluster_stores(address: str | None, storage_url: str, tracking_uri: str, storage_path: str | None) -> None:
    """On a Ray cluster trials run on other machines: refuse stores that live in files of this one, before
    anything is written. Raises `ConfigError`: one line naming the setting and what to set it to."""
    if not is_cluster(address):
        return
    where = f"trials run on the nodes of the Ray cluster at {address}"
    if url_scheme(tracking_uri) not in ("http", "https") and tracking_uri != "databricks":
        raise ConfigError(
            f"study.mlflow.tracking_uri: {mask_url(tracking_uri)} is no tracking server ({where}, which cannot reach "
            "this machine's files or artifact folder); set it to an MLflow server, e.g. http://mlflow:5000"
        )
    if is_sqlite(storage_url):
        raise ConfigError(
            f"study.storage: {mask_url(storage_url)} is a file of this machine ({where}, and other workers of the "
            "study must reach it); set it to a database server, e.g. postgresql://user:password@db:5432/optuna"
        )
    if not storage_path:
        raise ConfigError(
            f"study.ray.storage_path: not set ({where} and write checkpoints and exit outputs; study.runs_dir is a "
            "folder of this machine); set it to a folder every node mounts at the same path, or to a URI such as "
            "s3://bucket/eeopt-runs"
        )
    if not url_scheme(storage_path) and not Path(storage_path).is_absolute():
        raise ConfigError(f"study.ray.storage_path: {storage_path!r} is a relative path; on a cluster give the "
                          "absolute path every node mounts, or a URI such as s3://bucket/eeopt-runs")


def check_sqlite_writers(tracking_uri: str, max_concurrent: int) -> None:
    """Refuse more trials logging at once to a SQLite MLflow store than SQLite takes (`SQLITE_MAX_WRITERS`)."""
    if is_sqlite(tracking_uri) and max_concurrent + 1 > SQLITE_MAX_WRITERS:
        raise ConfigError(
            f"study.resources.max_concurrent: {max_concurrent} trials logging at once to the SQLite MLflow store "
            f"{mask_url(tracking_uri)} is more writers than SQLite takes ({SQLITE_MAX_WRITERS - 1} trials); use "
            "an MLflow server on PostgreSQL (study.mlflow.tracking_uri: http://..., see README 'The team stack') "
            "or a postgresql:// tracking URI"
        )


def join_location(root: str, *parts: str) -> str:
    """`root/part/...` for a folder or a URI (``s3://bucket/runs`` + ``tiny`` -> ``s3://bucket/runs/tiny``)."""
    return "/".join([root.rstrip("/"), *parts]) if url_scheme(root) else str(Path(root, *parts))


class TrialFolder:
    """The folder a trial writes, on this node. A plain folder is written in place; for a URI the trial works in a
    local copy (fetched first, so a requeued trial resumes from its checkpoint) that `sync` uploads.

    Attributes:
        path: the local folder to write into.
    """

    def __init__(self, location: str):
        self.location = location
        self.remote = bool(url_scheme(location))
        if not self.remote:
            self.path = Path(location)
            return
        digest = hashlib.sha256(location.encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / "eeopt-trials" / digest
        self.path.mkdir(parents=True, exist_ok=True)
        self._copy(to_local=True)

    def sync(self) -> None:
        """Upload the local copy (a URI location); nothing for a plain folder."""
        if self.remote:
            self._copy(to_local=False)

    def _copy(self, to_local: bool) -> None:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(self.location)
        local = pyarrow.fs.LocalFileSystem()
        if to_local:
            if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
                pyarrow.fs.copy_files(path, str(self.path), source_filesystem=fs, destination_filesystem=local)
            return
        fs.create_dir(path, recursive=True)
        pyarrow.fs.copy_files(str(self.path), path, source_filesystem=local, destination_filesystem=fs)


@contextlib.contextmanager
def trial_folder(location: str) -> Iterator[TrialFolder]:
    """A `TrialFolder` for `location`, synced once more when the trial ends (however it ends); the local copy of
    a URI location is removed once synced (the node's disk is not the study's storage)."""
    folder = TrialFolder(location)
    try:
        yield folder
    finally:
        folder.sync()
        if folder.remote:
            shutil.rmtree(folder.path, ignore_errors=True)


def node_tags() -> dict[str, str]:
    """Where this process runs, as MLflow tags: the Ray node id and IP (when under Ray), the host name, and the
    GPUs Ray gave it (with their names), else 'none'."""
    tags = {"eeopt.host": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            tags["eeopt.node_id"] = ctx.get_node_id()
            tags["eeopt.node_ip"] = ray.util.get_node_ip_address()
            gpu_ids = [str(g) for g in ray.get_gpu_ids()]
            tags["eeopt.gpus"] = ",".join(gpu_ids) if gpu_ids else "none"
    except Exception:  # noqa: BLE001 - where a trial ran is worth recording, not worth failing the trial for
        pass
    tags.setdefault("eeopt.gpus", os.environ.get("CUDA_VISIBLE_DEVICES") or "none")
    if tags["eeopt.gpus"] != "none":
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                tags["eeopt.gpu_name"] = torch.cuda.get_device_name(0)
    return tags
