"""IDX files (the MNIST format) and the `fashion-mnist` dataset.

Where the four files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
`t10k-labels-idx1-ubyte`, each gzipped or not) are looked up, first complete folder wins:

- `data.root` and `data.root/fashion-mnist` when `data.root` is set (and nowhere else);
- otherwise `$EEOPT_DATA_DIR`, `$EEOPT_DATA_DIR/fashion-mnist`, `~/.cache/eeopt/fashion-mnist` (where downloads go)
  and `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist` package).

Nothing is downloaded unless `data.download: true`. Then the missing files are fetched from `FASHION_MNIST_URL`
(or `$EEOPT_FASHION_MNIST_URL`, for mirrors) into `data.root`, else `$EEOPT_DATA_DIR/fashion-mnist`, else
`~/.cache/eeopt/fashion-mnist`, and each is checked against the official MD5 in `FASHION_MNIST_MD5`.

Debian's files are recompressed (their .gz bytes differ from the official ones) but decompress to exactly the
official IDX bytes: `FASHION_MNIST_RAW_MD5` holds the MD5s of the decompressed files, which match both.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from eeopt.config import DataConfig
from eeopt.data.base import RawData, register_dataset
from eeopt.errors import DataError

# IDX type byte -> big-endian NumPy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGES_MAGIC = 0x00000803  # 2051: uint8, 3 dimensions
LABELS_MAGIC = 0x00000801  # 2049: uint8, 1 dimension

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The official files' MD5s (https://github.com/zalandoresearch/fashion-mnist#get-the-data); tests patch this dict.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# MD5s of the decompressed files (identical for the official and Debian's recompressed .gz files).
FASHION_MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_LOCAL_HINT = "install Debian's package (apt-get install dataset-fashion-mnist) or point data.root at the IDX files"
_HINT = f"{_LOCAL_HINT}, or set data.download: true"


# --------------------------------------------------------------------------------------------------- IDX reader
def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not, told apart by content) into a native-endian NumPy array.

    Raises:
        DataError: unreadable or corrupt gzip, a magic number that is not IDX (or not `expected_magic`), or a file
            whose size does not match its header (truncated or with trailing bytes). The message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file: {len(data)} bytes, not even the 4-byte magic number")
    magic = struct.unpack(">I", data[:4])[0]
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{path}: bad IDX magic number: expected {_describe(expected_magic)}, got {_describe(magic)}")
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: not an IDX file: magic number {_describe(magic)}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX file: {len(data)} bytes, the header alone needs {header}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {what}: its header {list(dims)} x {dtype.itemsize} byte(s) needs {expected} bytes, "
            f"got {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _describe(magic: int) -> str:
    kind = {IMAGES_MAGIC: " (uint8 images, 3 dims)", LABELS_MAGIC: " (uint8 labels, 1 dim)"}.get(magic, "")
    return f"0x{magic:08x} = {magic}{kind}"


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path}: truncated or corrupt gzip file: {exc}") from None
    return data


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array as an (uncompressed) IDX file; the inverse of `read_idx` for uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(f">HBB{array.ndim}I", 0, 0x08, array.ndim, *array.shape)
    path = Path(path)
    path.write_bytes(header + array.tobytes())
    return path


# --------------------------------------------------------------------------------------------------- fashion-mnist
def fashion_mnist_dirs(root: str | None) -> list[Path]:
    """The folders searched for the four files, in order (see the module docstring)."""
    if root is not None:
        return [Path(root).expanduser(), Path(root).expanduser() / "fashion-mnist"]
    dirs = []
    env = os.environ.get("EEOPT_DATA_DIR")
    if env:
        dirs += [Path(env).expanduser(), Path(env).expanduser() / "fashion-mnist"]
    return [*dirs, _cache_dir(), DEBIAN_FASHION_MNIST]


def download_dir(root: str | None) -> Path:
    """Where `data.download` puts the files: data.root, else $EEOPT_DATA_DIR/fashion-mnist, else the cache."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("EEOPT_DATA_DIR")
    return Path(env).expanduser() / "fashion-mnist" if env else _cache_dir()


def _cache_dir() -> Path:
    return Path("~/.cache/eeopt/fashion-mnist").expanduser()


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(root: str | None) -> dict[str, Path] | None:
    """{file name: path} from the first folder holding all four files, or None."""
    for folder in fashion_mnist_dirs(root):
        found = {name: _find_file(folder, name) for name in FASHION_MNIST_FILES}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def download_fashion_mnist(
    target: str | os.PathLike, base_url: str | None = None, md5: dict[str, str] | None = None, timeout: float = 60.0
) -> dict[str, Path]:
    """Fetch the missing `<name>.gz` files into `target`, verify their MD5s, and return {name: path}.

    `base_url` defaults to `$EEOPT_FASHION_MNIST_URL`, else `FASHION_MNIST_URL`; `md5` to `FASHION_MNIST_MD5`.
    A file is written under a temporary name and renamed only once its checksum matches.

    Raises:
        DataError: the download failed or a file's MD5 does not match (the bad file is deleted).
    """
    base_url = base_url or os.environ.get("EEOPT_FASHION_MNIST_URL") or FASHION_MNIST_URL
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    md5 = FASHION_MNIST_MD5 if md5 is None else md5
    target = Path(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{target}: cannot create the download folder: {exc.strerror or exc}") from None
    paths = {}
    for name in FASHION_MNIST_FILES:
        existing = _find_file(target, name)
        if existing is not None:
            paths[name] = existing
            continue
        filename = f"{name}.gz"
        url, dest = base_url + filename, target / filename
        part = dest.with_name(dest.name + ".part")
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as fh:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            part.unlink(missing_ok=True)
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"{url}: download failed ({reason}); {_LOCAL_HINT}") from None
        if digest.hexdigest() != md5[filename]:
            part.unlink(missing_ok=True)
            raise DataError(
                f"{url}: checksum mismatch for {filename}: expected md5 {md5[filename]}, got {digest.hexdigest()} "
                "(the download was deleted; try again or use another mirror via $EEOPT_FASHION_MNIST_URL)"
            )
        os.replace(part, dest)
        paths[name] = dest
    return paths


def _first_missing(root: str | None) -> tuple[str, str]:
    """(the first missing file of the most complete searched folder, the searched folders as text)."""
    dirs = fashion_mnist_dirs(root)
    best = max(dirs, key=lambda d: sum(_find_file(d, n) is not None for n in FASHION_MNIST_FILES))
    missing = next(n for n in FASHION_MNIST_FILES if _find_file(best, n) is None)
    return missing, ", ".join(str(d) for d in dirs)


def _missing_message(root: str | None) -> str:
    missing, looked = _first_missing(root)
    return f"fashion-mnist: {missing}[.gz] not found (looked in {looked}); {_HINT}"


def check_fashion_mnist(cfg: DataConfig) -> str | None:
    """The presence check: None when a searched folder holds all four files, or when data.download will get them."""
    if cfg.download or find_fashion_mnist(cfg.root) is not None:
        return None
    missing, looked = _first_missing(cfg.root)
    where = f"{cfg.root} has" if cfg.root is not None else "not set, and the default folders have"
    return f"data.root: {where} no fashion-mnist files ({missing}[.gz] not found in {looked}); {_HINT}"


@register_dataset("fashion-mnist", check=check_fashion_mnist)
def load_fashion_mnist(cfg: DataConfig) -> RawData:
    """The four IDX files -> 60000 train and 10000 test uint8 images [N, 28, 28], 10 classes."""
    paths = find_fashion_mnist(cfg.root)
    if paths is None:
        if not cfg.download:
            raise DataError(_missing_message(cfg.root))
        paths = download_fashion_mnist(download_dir(cfg.root))
    arrays = {}
    for name, path in paths.items():
        is_images = "images" in name
        arrays[name] = read_idx(path, IMAGES_MAGIC if is_images else LABELS_MAGIC)
    for part in ("train", "t10k"):
        images, labels = f"{part}-images-idx3-ubyte", f"{part}-labels-idx1-ubyte"
        if len(arrays[images]) != len(arrays[labels]):
            raise DataError(
                f"{paths[labels]}: {len(arrays[labels])} labels but {paths[images].name} holds "
                f"{len(arrays[images])} images; expected one label per image"
            )
        if len(arrays[labels]) and arrays[labels].max() >= 10:
            raise DataError(f"{paths[labels]}: labels must lie in 0..9, found {arrays[labels].max()}")
    return RawData(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"].astype(np.int64),
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"].astype(np.int64),
        num_classes=10,
        sources=tuple(str(paths[name]) for name in FASHION_MNIST_FILES),
        hflip=True,
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"),
    )
