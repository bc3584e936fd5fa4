"""Where trials run and write when they are not on this machine: the folder a trial writes (a shared folder, or a
URI it is synced to), and the node a trial ran on (the stores other nodes cannot reach are refused by
`eeopt.stores.Stores.check`).

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

from eeopt.stores.urls import is_uri


def is_cluster(address: str | None) -> bool:
    """Whether `study.ray.address` names a Ray cluster (whose nodes may be other machines) or a local Ray."""
    return address not in (None, "", "local")


def join_location(root: str, *parts: str) -> str:
    """`root/part/...` for a folder or a URI (``s3://bucket/runs`` + ``tiny`` -> ``s3://bucket/runs/tiny``)."""
    return "/".join([root.rstrip("/"), *parts]) if is_uri(root) else str(Path(root, *parts))


class TrialFolder:
    """The folder a trial writes, on this node. A plain folder is written in place; for a URI the trial works in a
    local copy (fetched first, so a requeued trial resumes from its checkpoint) that `sync` uploads.

    Attributes:
        path: the local folder to write into.
    """

    def __init__(self, location: str):
        self.location = location
        self.remote = is_uri(location)
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
