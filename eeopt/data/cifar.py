"""`cifar10` and `cifar100`: the "python version" pickled batches of https://www.cs.toronto.edu/~kriz/cifar.html.

- cifar10: `cifar-10-batches-py/data_batch_1` .. `data_batch_5` and `test_batch`, dicts with b'data' (uint8
  [N, 3072], channel-major 3x32x32) and b'labels';
- cifar100: `cifar-100-python/train` and `test`, with b'data' and b'fine_labels' (100 classes).

Where they are found (without `data.root`: `$EEOPT_DATA_DIR`), first match wins:

1. `data.root` or `data.root/<standard folder>` holding the extracted batches;
2. the archive as downloaded: `data.root/cifar-10-python.tar.gz` (`cifar-100-python.tar.gz`), or `data.root` naming
   a .tar.gz file itself. Members `<standard folder>/<batch>` are read with tarfile, never extracted to disk. An
   archive with the official file name must have the official MD5 (`ARCHIVE_MD5`, torchvision's values), else one
   line DataError; an archive under any other name (a subset you packed, a renamed mirror) is read unchecked.

Batches are unpickled by `parse_batch`, which only allows the few globals such a file needs (NumPy arrays, bytes),
so a crafted pickle cannot run code. Nothing is downloaded: fetch the official tar.gz yourself.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from eeopt.config import DataConfig
from eeopt.data.base import RawData, register_dataset
from eeopt.errors import DataError

ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
# The official archives' MD5s, as torchvision's CIFAR10/CIFAR100 `tgz_md5` (checked in torchvision 0.29.1).
ARCHIVE_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}
_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch (or a NumPy array) is made of."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol < 3
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, whatever its module path
        if name == "encode":
            import codecs

            return codecs.encode
        return getattr(np, name)


def load_batch(path: str | os.PathLike, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch file -> (images uint8 [N, 32, 32, 3], labels int64 [N]); see `parse_batch`.

    Raises:
        DataError: unreadable file, or what `parse_batch` raises; the message names the file.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_batch(blob, str(path), label_key)


def parse_batch(blob: bytes, where: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of one pickled batch -> (images uint8 [N, 32, 32, 3], labels int64 [N]).

    Raises:
        DataError: not a pickle, a disallowed global, not a dict with b'data' and `label_key`, or arrays of the
            wrong shape; the message starts with `where` (the file, or archive:member).
    """
    path = where
    try:
        batch = _RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001  (whatever a bad pickle raises, it is a bad file)
        raise DataError(f"{path}: not a CIFAR python batch (unpickling failed: {exc})") from None
    want = f"a dict with keys b'data' and {label_key!r}"
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        got = f"keys {sorted(batch)[:6]}" if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected {want}, got {got}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected b'data' as uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: expected {label_key!r} as {len(data)} integer labels (one per image), got "
            f"{labels.dtype} {list(labels.shape)}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


@dataclass(frozen=True)
class _Cifar:
    """Where one CIFAR variant's batches are and how to read them."""

    name: str
    folder: str  # the standard folder the official tar.gz extracts to
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    num_classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file)


CIFAR10 = _Cifar("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                 b"labels", 10)
CIFAR100 = _Cifar("cifar100", "cifar-100-python", ("train",), "test", b"fine_labels", 100)


def _locate(cfg: DataConfig, spec: _Cifar) -> Path | str:
    """The folder holding every batch of `spec` or the archive to read them from, or (a string) why there is
    none, as one line."""
    base = cfg.root or os.environ.get("EEOPT_DATA_DIR")
    url = _URLS[spec.name]
    if base is None:
        return f"set data.root (or $EEOPT_DATA_DIR) to the folder holding {spec.folder}/ or {ARCHIVES[spec.name]}"
    base_path = Path(base).expanduser()
    if base_path.is_file():
        return base_path  # an archive named directly
    candidates = [base_path, base_path / spec.folder]
    folder = next((c for c in candidates if (c / spec.files[0]).is_file()), None)
    if folder is None:
        archive = base_path / ARCHIVES[spec.name]
        if archive.is_file():
            return archive
        hint = "; data.download is not supported for CIFAR" if cfg.download else ""
        where = " or ".join(str(c) for c in candidates)
        return f"{spec.files[0]} not found in {where}; extract {url} into {base_path} or put it there{hint}"
    missing = next((f for f in spec.files if not (folder / f).is_file()), None)
    if missing is not None:
        return f"{folder / missing}: not found; expected the {spec.name} batch {missing} next to {spec.files[0]}"
    return folder


def _check(spec: _Cifar) -> Callable[[DataConfig], str | None]:
    """The presence check of `register_dataset` for `spec` (the batches are not opened)."""

    def check(cfg: DataConfig) -> str | None:
        found = _locate(cfg, spec)
        if isinstance(found, Path):
            return None
        base = cfg.root or os.environ.get("EEOPT_DATA_DIR")
        return f"data.root: {base} has no {spec.name} files ({found})" if base else f"data.root: not set; {found}"

    return check


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_archive(path: Path, spec: _Cifar) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{batch file name: (images, labels)} of every batch of `spec` in a .tar.gz, read in one pass in memory.

    Raises:
        DataError: an official name with another MD5, not a readable tar archive, a missing member, a bad batch;
            the message names the archive (and the member).
    """
    expected = ARCHIVE_MD5.get(path.name)
    if expected is not None:
        got = _md5(path)
        if got != expected:
            raise DataError(
                f"{path}: MD5 {got} is not the official {path.name}'s {expected}; the download is incomplete or "
                "corrupt (fetch it again), or rename the file if it is a subset you packed yourself"
            )
    wanted = {f"{spec.folder}/{name}": name for name in spec.files}
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is not None and member.isfile():
                    blobs[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc})") from None
    missing = next((member for member, name in wanted.items() if name not in blobs), None)
    if missing is not None:
        raise DataError(f"{path}: no member {missing}; expected the {spec.name} archive layout {spec.folder}/<batch>")
    return {name: parse_batch(blob, f"{path}:{spec.folder}/{name}", spec.label_key) for name, blob in blobs.items()}


def _load(cfg: DataConfig, spec: _Cifar) -> RawData:
    found = _locate(cfg, spec)
    if not isinstance(found, Path):
        raise DataError(f"{spec.name}: {found}")
    if found.is_file():
        parts = read_archive(found, spec)
    else:
        parts = {name: load_batch(found / name, spec.label_key) for name in spec.files}
    for filename, (_, labels) in parts.items():
        if len(labels) and labels.max() >= spec.num_classes:
            raise DataError(f"{found / filename}: labels must lie in 0..{spec.num_classes - 1}, found {labels.max()}")
    train_images = np.concatenate([parts[f][0] for f in spec.train_files])
    train_labels = np.concatenate([parts[f][1] for f in spec.train_files])
    return RawData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=parts[spec.test_file][0],
        test_labels=parts[spec.test_file][1],
        num_classes=spec.num_classes,
        sources=(str(found),),
        hflip=True,
    )


@register_dataset("cifar10", check=_check(CIFAR10))
def load_cifar10(cfg: DataConfig) -> RawData:
    """CIFAR-10: 50000 train and 10000 test RGB images [N, 32, 32, 3], 10 classes."""
    return _load(cfg, CIFAR10)


@register_dataset("cifar100", check=_check(CIFAR100))
def load_cifar100(cfg: DataConfig) -> RawData:
    """CIFAR-100: 50000 train and 10000 test RGB images [N, 32, 32, 3], 100 fine classes."""
    return _load(cfg, CIFAR100)
