"""eeopt.data: registry, seeded splits, normalisation, augmentation, batching, and every loader on files the tests
write themselves (plus Debian's real Fashion-MNIST when it is installed). Nothing leaves 127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import pickle
import re
import struct
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from eeopt.config import DataConfig
from eeopt.data import (
    Dataset,
    RawData,
    Split,
    check_dataset_files,
    iterate_batches,
    list_datasets,
    load_dataset,
    read_idx,
    register_dataset,
)
from eeopt.data import base as data_base
from eeopt.data import idx as idx_module
from eeopt.data.base import RandomCropFlip, indices_sha1, split_indices
from eeopt.registry import UnknownNameError
from eeopt.errors import DataError

torch.set_num_threads(1)
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch, tmp_path):
    """No test sees the user's data folders or cache."""
    monkeypatch.delenv("EEOPT_DATA_DIR", raising=False)
    monkeypatch.delenv("EEOPT_FASHION_MNIST_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so tests can register datasets."""
    monkeypatch.setattr(data_base.DATASETS, "_entries", dict(data_base.DATASETS._entries))
    return data_base.DATASETS


def _indexed(registry, n_train=200, n_test=50, num_classes=4, name="indexed", shape=(3, 3)):
    """Register a dataset whose image i is filled with the value i (so a split's indices can be read back)."""
    labels = np.arange(n_train) % num_classes

    @register_dataset(name)
    def _load(cfg):
        return RawData(
            train_images=np.broadcast_to(np.arange(n_train, dtype=np.float32)[:, None, None], (n_train, *shape)).copy(),
            train_labels=labels,
            test_images=np.broadcast_to(-np.arange(1, n_test + 1, dtype=np.float32)[:, None, None], (n_test, *shape)).copy(),
            test_labels=np.arange(n_test) % num_classes,
            num_classes=num_classes,
        )

    return labels


def _ids(split: Split) -> np.ndarray:
    return split.x[:, 0, 0, 0].numpy().round().astype(np.int64)


# --------------------------------------------------------------------------------------------------- registry
def test_builtin_registry_and_unknown_name():
    assert {"digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder"} <= set(list_datasets())
    with pytest.raises(UnknownNameError, match=r"data\.name: unknown dataset 'nope' \(known: .*cifar10.*digits.*fashion-mnist"):
        load_dataset(DataConfig(name="nope"), 0)


def test_register_twice_is_an_error(registry):
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("digits")(lambda cfg: None)


# --------------------------------------------------------------------------------------------------- splitting
def test_split_is_seeded_disjoint_and_stratified(registry):
    labels = _indexed(registry)
    cfg = DataConfig(name="indexed", normalize=False, val_fraction=0.25)
    a, b, c = load_dataset(cfg, 1), load_dataset(cfg, 1), load_dataset(cfg, 2)
    ta, va = _ids(a.train), _ids(a.val)
    assert len(va) == 50 and len(ta) == 150
    assert set(ta).isdisjoint(va) and sorted(np.concatenate([ta, va])) == list(range(200))
    assert np.array_equal(a.train.y.numpy(), labels[ta]) and np.array_equal(a.val.y.numpy(), labels[va])
    assert sorted(np.bincount(labels[va])) == [12, 12, 13, 13]  # 50 = 4 x 12.5, stratified
    assert np.array_equal(va, _ids(b.val)) and np.array_equal(ta, _ids(b.train))
    assert set(va) != set(_ids(c.val))
    assert a.info["val_indices_sha1"] == indices_sha1(va) == b.info["val_indices_sha1"] != c.info["val_indices_sha1"]
    assert a.info["stratified"] is True and a.info["split_seed"] == 1
    # the test split is the test images in file order, whatever the seed
    assert np.array_equal(_ids(a.test), -np.arange(1, 51)) and np.array_equal(_ids(c.test), _ids(a.test))


def test_subsets_do_not_move_the_split(registry):
    _indexed(registry)
    full = load_dataset(DataConfig(name="indexed", normalize=False), 3)
    sub = load_dataset(DataConfig(name="indexed", normalize=False, train_subset=30, val_subset=7, test_subset=5), 3)
    assert sub.info["sizes"] == {"train": 30, "val": 7, "test": 5}
    assert np.array_equal(_ids(sub.train), _ids(full.train)[:30])
    assert np.array_equal(_ids(sub.val), _ids(full.val)[:7])
    assert np.array_equal(_ids(sub.test), _ids(full.test)[:5])
    big = load_dataset(DataConfig(name="indexed", normalize=False, train_subset=10_000, test_subset=10_000), 3)
    assert big.info["sizes"] == full.info["sizes"]
    json.dumps(sub.info)


def test_split_indices_stratifies_unbalanced_classes_and_falls_back_to_random():
    labels = np.repeat(np.arange(5), [100, 50, 20, 7, 3])
    rest, held, stratified = split_indices(labels, 0.2, np.random.default_rng(0))
    assert stratified and len(held) == round(0.2 * 180) and len(rest) + len(held) == 180
    assert set(rest).isdisjoint(held)
    counts = np.bincount(labels[held], minlength=5)
    assert np.all(np.abs(counts - 0.2 * np.array([100, 50, 20, 7, 3])) < 1)
    assert np.all(np.bincount(labels[rest], minlength=5) >= 1)
    rest, held, stratified = split_indices(np.array([0, 0, 0, 1, 2, 2]), 0.5, np.random.default_rng(0))
    assert not stratified and len(held) == 3 and sorted(np.concatenate([rest, held])) == list(range(6))


# --------------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_shapes_split_and_partition(sk_digits):
    cfg = DataConfig(name="digits", normalize=False, val_fraction=0.1)
    ds = load_dataset(cfg, 0)
    assert isinstance(ds, Dataset)
    assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == (8, 8)
    assert ds.train.x.shape[1:] == (1, 8, 8) and ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    sizes = ds.info["sizes"]
    assert sizes == {"train": 1438 - 144, "val": 144, "test": 359}
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797 == len(sk_digits.images)
    # train, val and test partition sklearn's 1797 images (all distinct), labels attached to the right image
    def key(img):
        return (img * 16).round().astype(np.int64).tobytes()

    expected = {key(img): int(t) for img, t in zip(sk_digits.images / 16.0, sk_digits.target)}
    seen = Counter()
    for split in (ds.train, ds.val, ds.test):
        for img, label in zip(split.x[:, 0].numpy(), split.y.numpy()):
            assert expected[key(img)] == label
            seen[key(img)] += 1
    assert seen == Counter(expected.keys())
    # the test holdout is fixed, the train/val split follows the seed
    other = load_dataset(cfg, 1)
    again = load_dataset(cfg, 0)
    assert torch.equal(other.test.x, ds.test.x)
    assert torch.equal(again.val.x, ds.val.x) and torch.equal(again.train.y, ds.train.y)
    assert not torch.equal(other.val.x, ds.val.x)
    assert ds.info["val_indices_sha1"] == again.info["val_indices_sha1"] != other.info["val_indices_sha1"]
    assert "holdout" in ds.info["test_split"]
    assert np.bincount(ds.val.y.numpy(), minlength=10).min() >= 13  # stratified: ~14.4 per class


def test_digits_read_from_sklearns_file_equal_sklearns_loader_without_importing_it(sk_digits, monkeypatch):
    """The digits are read from the CSV scikit-learn bundles: the same images and labels, in the same order, as
    `sklearn.datasets.load_digits`, and a fresh process that loads them never imports scikit-learn. Without the
    file (a scikit-learn that keeps it elsewhere), scikit-learn's loader gives them."""
    import subprocess
    import sys

    from eeopt.data import digits as digits_module

    images, labels, source = digits_module.bundled_digits()
    assert np.array_equal(images, sk_digits.images) and np.array_equal(labels, sk_digits.target)
    assert source.endswith("digits.csv.gz") and Path(source).is_file()
    assert load_dataset(DataConfig(name="digits"), 0).info["sources"] == [source]
    code = ("import sys; from eeopt.data.digits import bundled_digits; images, labels, _ = bundled_digits(); "
            "print(images.shape, len(labels), sorted(m for m in sys.modules if m.startswith('sklearn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(1797, 8, 8) 1797 []"

    calls = []

    def no_file(name):
        calls.append(name)
        return None

    monkeypatch.setattr(digits_module.importlib.util, "find_spec", no_file)
    images, labels, source = digits_module.bundled_digits()
    assert calls == ["sklearn"] and source == "sklearn.datasets.load_digits"
    assert np.array_equal(images, sk_digits.images) and np.array_equal(labels, sk_digits.target)


def test_normalisation_uses_train_statistics_only():
    raw = load_dataset(DataConfig(name="digits", normalize=False), 5)
    ds = load_dataset(DataConfig(name="digits", normalize=True), 5)
    train = raw.train.x.numpy().astype(np.float64)
    mean, std = train.mean(), train.std()
    assert ds.info["mean"] == pytest.approx([mean], abs=1e-9) and ds.info["std"] == pytest.approx([std], abs=1e-9)
    both = np.concatenate([train, raw.val.x.numpy()])
    assert abs(both.mean() - mean) > 1e-5  # would catch stats computed on train + val
    assert ds.train.x.mean().item() == pytest.approx(0, abs=1e-5) and ds.train.x.std().item() == pytest.approx(1, abs=1e-3)
    for name in ("val", "test"):
        expected = (getattr(raw, name).x.numpy() - mean) / std
        np.testing.assert_allclose(getattr(ds, name).x.numpy(), expected, atol=1e-5)


def test_per_channel_normalisation(registry):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 5, 5, 3), dtype=np.uint8)
    images[..., 2] //= 4  # a darker third channel

    @register_dataset("rgb")
    def _load(cfg):
        return RawData(images, np.arange(60) % 3, images[:10], np.arange(10) % 3, num_classes=3)

    raw = load_dataset(DataConfig(name="rgb", normalize=False), 0)
    ds = load_dataset(DataConfig(name="rgb"), 0)
    train = raw.train.x.numpy().astype(np.float64)
    np.testing.assert_allclose(ds.info["mean"], train.mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(ds.info["std"], train.std(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(ds.train.x.numpy().mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(ds.train.x.numpy().std(axis=(0, 2, 3)), 1, atol=1e-4)
    # NHWC uint8 -> NCHW in [0, 1]: the test split is the first 10 images in order
    np.testing.assert_allclose(raw.test.x.numpy(), images[:10].transpose(0, 3, 1, 2) / 255.0, atol=1e-7)


def test_image_size_resizes_any_dataset():
    ds = load_dataset(DataConfig(name="digits", image_size=16, test_subset=20), 0)
    assert ds.image_size == (16, 16) and ds.train.x.shape[1:] == (1, 16, 16) and ds.test.x.shape == (20, 1, 16, 16)


# --------------------------------------------------------------------------------------------------- IDX
def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, written independently of eeopt."""
    header = struct.pack(">HBB" + "I" * array.ndim, 0, 0x08, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _fake_fashion(n_train=40, n_test=12, shape=(5, 6), seed=0):
    rng = np.random.default_rng(seed)
    return {
        FILES[0]: rng.integers(0, 256, size=(n_train, *shape), dtype=np.uint8),
        FILES[1]: (np.arange(n_train) % 10).astype(np.uint8),
        FILES[2]: rng.integers(0, 256, size=(n_test, *shape), dtype=np.uint8),
        FILES[3]: (np.arange(n_test) % 10).astype(np.uint8),
    }


def _write_fashion(folder: Path, arrays: dict, gz: bool) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, array in arrays.items():
        data = _idx_bytes(array)
        path = folder / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(data) if gz else data)
        paths[name] = path
    return paths


def test_fashion_mnist_from_debian_files():
    ds = load_dataset(DataConfig(name="fashion-mnist", normalize=False), 0)  # found by the default lookup
    assert ds.info["sources"][0].startswith(str(DEBIAN))
    assert ds.info["sizes"] == {"train": 54000, "val": 6000, "test": 10000}
    assert ds.train.x.shape[1:] == (1, 28, 28) and ds.num_classes == 10 and ds.augment is None
    raw = {name: gzip.decompress((DEBIAN / f"{name}.gz").read_bytes()) for name in FILES}
    for name, data in raw.items():  # decompressed, Debian's files are byte for byte the official ones
        assert hashlib.md5(data).hexdigest() == idx_module.FASHION_MNIST_RAW_MD5[name]
    train_labels = np.frombuffer(raw[FILES[1]], dtype=np.uint8, offset=8)
    test_labels = np.frombuffer(raw[FILES[3]], dtype=np.uint8, offset=8)
    assert len(train_labels) == 60000 and len(test_labels) == 10000
    hist = np.bincount(ds.train.y.numpy(), minlength=10) + np.bincount(ds.val.y.numpy(), minlength=10)
    assert np.array_equal(hist, np.bincount(train_labels, minlength=10))
    assert np.bincount(ds.val.y.numpy()).tolist() == [600] * 10
    assert np.array_equal(ds.test.y.numpy(), test_labels)
    test_images = np.frombuffer(raw[FILES[2]], dtype=np.uint8, offset=16).reshape(10000, 28, 28)
    assert torch.equal(ds.test.x[:100, 0], torch.from_numpy(test_images[:100].astype(np.float32) / 255))


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_small_idx_files(tmp_path, gz):
    arrays = _fake_fashion()
    _write_fashion(tmp_path / "fm", arrays, gz)
    ds = load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path / "fm"), normalize=False, val_fraction=0.25), 0)
    assert ds.image_size == (5, 6) and ds.info["sizes"] == {"train": 30, "val": 10, "test": 12}
    assert ds.info["sources"][0].endswith(".gz") == gz
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(arrays[FILES[2]] / np.float32(255)))
    assert np.array_equal(ds.test.y.numpy(), arrays[FILES[3]])
    got = sorted(map(bytes, (ds.train.x[:, 0] * 255).round().to(torch.uint8).numpy()))
    got += sorted(map(bytes, (ds.val.x[:, 0] * 255).round().to(torch.uint8).numpy()))
    assert sorted(got) == sorted(map(bytes, arrays[FILES[0]]))
    for name, array in arrays.items():
        assert np.array_equal(read_idx(tmp_path / "fm" / (name + (".gz" if gz else ""))), array)


def test_fashion_mnist_lookup_in_eeopt_data_dir_subfolder(tmp_path, monkeypatch):
    _write_fashion(tmp_path / "data" / "fashion-mnist", _fake_fashion(), gz=True)
    monkeypatch.setenv("EEOPT_DATA_DIR", str(tmp_path / "data"))
    ds = load_dataset(DataConfig(name="fashion-mnist"), 0)
    assert ds.info["sources"][0] == str(tmp_path / "data" / "fashion-mnist" / f"{FILES[0]}.gz")


def test_read_idx_other_dtypes(tmp_path):
    array = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    path = tmp_path / "ints"
    path.write_bytes(struct.pack(">HBBII", 0, 0x0C, 2, 3, 4) + array.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and np.array_equal(out, array)


# --------------------------------------------------------------------------------------------------- bad files
def test_missing_file_names_it_and_the_fixes(tmp_path):
    arrays = _fake_fashion()
    paths = _write_fashion(tmp_path, arrays, gz=False)
    paths[FILES[3]].unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*not found.*apt-get install dataset-fashion-mnist"
                                        r".*data.download: true") as info:
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)), 0)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_wrong_magic_number(tmp_path, gz):
    arrays = _fake_fashion()
    paths = _write_fashion(tmp_path, arrays, gz)
    bad = _idx_bytes(np.zeros((40, 5, 6), np.uint8))  # images where the labels belong
    paths[FILES[1]].write_bytes(gzip.compress(bad) if gz else bad)
    with pytest.raises(DataError, match=rf"{FILES[1]}.*bad IDX magic number: expected 0x00000801.*got 0x00000803"):
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)), 0)
    paths[FILES[1]].write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(DataError, match=rf"{FILES[1]}.*bad IDX magic number"):
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)), 0)
    with pytest.raises(DataError, match=rf"{FILES[1]}(\.gz)?: not an IDX file: magic number 0x504b0304"):
        read_idx(paths[FILES[1]])


def test_truncated_files(tmp_path):
    arrays = _fake_fashion()
    paths = _write_fashion(tmp_path, arrays, gz=False)
    data = paths[FILES[0]].read_bytes()
    paths[FILES[0]].write_bytes(data[:-7])
    with pytest.raises(DataError, match=rf"{FILES[0]}: IDX file truncated: .* needs {len(data)} bytes, got {len(data) - 7}"):
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)), 0)
    paths[FILES[0]].write_bytes(data + b"\0")
    with pytest.raises(DataError, match=rf"{FILES[0]}: IDX file has trailing bytes"):
        read_idx(paths[FILES[0]])
    paths[FILES[0]].write_bytes(data[:10])
    with pytest.raises(DataError, match=rf"{FILES[0]}: truncated IDX file: 10 bytes"):
        read_idx(paths[FILES[0]])
    gz_path = tmp_path / "x.gz"
    gz_path.write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(DataError, match=r"x.gz: truncated or corrupt gzip"):
        read_idx(gz_path)


def test_label_count_mismatch(tmp_path):
    arrays = _fake_fashion()
    arrays[FILES[3]] = arrays[FILES[3]][:-1]
    _write_fashion(tmp_path, arrays, gz=True)
    with pytest.raises(DataError, match=rf"{FILES[3]}.gz: 11 labels but {FILES[2]}.gz holds 12 images"):
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)), 0)


# --------------------------------------------------------------------------------------------------- download
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """(folder, base_url): a local HTTP server on 127.0.0.1 serving `folder`."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_verifies_checksums(tmp_path, http_folder, monkeypatch):
    served, url = http_folder
    arrays = _fake_fashion()
    paths = _write_fashion(served, arrays, gz=True)
    for path in paths.values():
        monkeypatch.setitem(idx_module.FASHION_MNIST_MD5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
    monkeypatch.setenv("EEOPT_FASHION_MNIST_URL", url)
    target = tmp_path / "root"
    with pytest.raises(DataError, match="not found"):  # no download unless asked
        load_dataset(DataConfig(name="fashion-mnist", root=str(target)), 0)
    ds = load_dataset(DataConfig(name="fashion-mnist", root=str(target), download=True, normalize=False), 0)
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in FILES)
    assert np.array_equal(ds.test.y.numpy(), arrays[FILES[3]])
    for name in FILES:
        assert (target / f"{name}.gz").read_bytes() == paths[name].read_bytes()
    # without data.root (and without Debian's files) they go to $EEOPT_DATA_DIR/fashion-mnist, found there later
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setenv("EEOPT_DATA_DIR", str(tmp_path / "envdir"))
    load_dataset(DataConfig(name="fashion-mnist", download=True), 0)
    assert (tmp_path / "envdir" / "fashion-mnist" / f"{FILES[0]}.gz").is_file()
    monkeypatch.setenv("EEOPT_FASHION_MNIST_URL", url + "gone/")  # a second load must not download
    ds = load_dataset(DataConfig(name="fashion-mnist", download=True), 0)
    assert ds.info["sources"][0].startswith(str(tmp_path / "envdir" / "fashion-mnist"))
    monkeypatch.delenv("EEOPT_DATA_DIR")  # and with no $EEOPT_DATA_DIR, into ~/.cache/eeopt/fashion-mnist
    monkeypatch.setenv("EEOPT_FASHION_MNIST_URL", url)
    load_dataset(DataConfig(name="fashion-mnist", download=True), 0)
    assert (tmp_path / "home" / ".cache" / "eeopt" / "fashion-mnist" / f"{FILES[3]}.gz").is_file()


def test_download_rejects_a_corrupted_file(tmp_path, http_folder, monkeypatch):
    served, url = http_folder
    paths = _write_fashion(served, _fake_fashion(), gz=True)
    for path in paths.values():
        monkeypatch.setitem(idx_module.FASHION_MNIST_MD5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
    good = paths[FILES[2]].read_bytes()
    paths[FILES[2]].write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one flipped bit in transit
    target = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"{FILES[2]}.gz: checksum mismatch .*expected md5 [0-9a-f]{{32}}, got"):
        idx_module.download_fashion_mnist(target, base_url=url)
    assert not (target / f"{FILES[2]}.gz").exists() and not list(target.glob("*.part"))
    paths[FILES[2]].unlink()
    with pytest.raises(DataError, match=rf"{FILES[2]}.gz: download failed"):
        idx_module.download_fashion_mnist(target, base_url=url)


def test_official_checksums_are_the_published_ones():
    assert idx_module.FASHION_MNIST_MD5 == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }


# --------------------------------------------------------------------------------------------------- cifar
def _cifar_batch(n, rng, label_key=b"labels", num_classes=10):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"testing", b"data": data, label_key: [int(v) for v in rng.integers(0, num_classes, n)]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [0] * n
    return batch


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize("subfolder", [True, False])
def test_cifar10_small_batches(tmp_path, subfolder):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py" if subfolder else tmp_path
    batches = {f"data_batch_{i}": _cifar_batch(20, rng) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(20, rng)
    for name, batch in batches.items():
        _dump(folder / name, batch)
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), normalize=False, val_fraction=0.2), 0)
    assert ds.num_classes == 10 and ds.in_channels == 3 and ds.image_size == (32, 32)
    assert ds.info["sizes"] == {"train": 80, "val": 20, "test": 20}
    test = batches["test_batch"]
    expected = torch.from_numpy(test[b"data"].reshape(20, 3, 32, 32) / np.float32(255))
    assert torch.equal(ds.test.x, expected) and ds.test.y.tolist() == test[b"labels"]
    all_labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][b"labels"]]
    assert Counter(ds.train.y.tolist()) + Counter(ds.val.y.tolist()) == Counter(all_labels)


def test_cifar100_small_batches(tmp_path):
    rng = np.random.default_rng(1)
    _dump(tmp_path / "cifar-100-python" / "train", _cifar_batch(40, rng, b"fine_labels", 100))
    test = _cifar_batch(20, rng, b"fine_labels", 100)
    _dump(tmp_path / "cifar-100-python" / "test", test)
    ds = load_dataset(DataConfig(name="cifar100", root=str(tmp_path), augment=True), 0)
    assert ds.num_classes == 100 and ds.info["sizes"]["train"] + ds.info["sizes"]["val"] == 40
    assert ds.test.y.tolist() == test[b"fine_labels"]
    assert isinstance(ds.augment, RandomCropFlip) and ds.augment.pad == 4 and ds.augment.flip


def test_cifar_bad_pickles(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", _cifar_batch(4, rng))
    _dump(folder / "test_batch", _cifar_batch(4, rng))
    cfg = DataConfig(name="cifar10", root=str(tmp_path))
    load_dataset(cfg, 0)

    bad = _cifar_batch(4, rng)
    del bad[b"labels"]
    _dump(folder / "data_batch_3", bad)
    with pytest.raises(DataError, match=r"data_batch_3: expected a dict with keys b'data' and b'labels', got keys"):
        load_dataset(cfg, 0)
    _dump(folder / "data_batch_3", [1, 2, 3])
    with pytest.raises(DataError, match=r"data_batch_3: expected a dict .* got list"):
        load_dataset(cfg, 0)
    bad = _cifar_batch(4, rng)
    bad[b"data"] = bad[b"data"][:, :100]
    _dump(folder / "data_batch_3", bad)
    with pytest.raises(DataError, match=r"data_batch_3: expected b'data' as uint8 \[N, 3072\]"):
        load_dataset(cfg, 0)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    _dump(folder / "data_batch_3", {b"data": Evil(), b"labels": []})
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR python batch .*open is not allowed"):
        load_dataset(cfg, 0)
    assert not marker.exists()
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR python batch"):
        load_dataset(cfg, 0)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3: not found"):
        load_dataset(cfg, 0)
    with pytest.raises(DataError, match=r"cifar100: train not found in .*cifar-100-python.*extract"):
        load_dataset(DataConfig(name="cifar100", root=str(tmp_path)), 0)
    with pytest.raises(DataError, match=r"set data.root"):
        load_dataset(DataConfig(name="cifar10"), 0)


# --------------------------------------------------------------------------------------------------- imagefolder
def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image_tree(root: Path, rng, grey=False, size=(6, 7)):
    """root/{train,test}/{cat,dog,emu}/k.png; returns {relative path: array}."""
    shape = size if grey else (*size, 3)
    images = {}
    for part, count in (("train", 4), ("test", 2)):
        for cls in ("emu", "cat", "dog"):
            for k in range(count):
                images[f"{part}/{cls}/{k}.png"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
    for rel, array in images.items():
        _png(root / rel, array)
    return images


@pytest.mark.parametrize("grey", [False, True])
def test_imagefolder(tmp_path, grey):
    images = _image_tree(tmp_path, np.random.default_rng(0), grey=grey)
    ds = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), normalize=False, val_fraction=0.25), 0)
    assert ds.num_classes == 3 and ds.in_channels == (1 if grey else 3) and ds.image_size == (6, 7)
    assert ds.info["sizes"] == {"train": 9, "val": 3, "test": 6}
    order = [f"test/{cls}/{k}.png" for cls in ("cat", "dog", "emu") for k in range(2)]  # sorted classes, files
    expected = np.stack([images[rel] for rel in order]).astype(np.float32) / 255
    expected = expected[:, None] if grey else expected.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(ds.test.x.numpy(), expected)
    assert ds.test.y.tolist() == [0, 0, 1, 1, 2, 2]


def test_imagefolder_mixed_modes_resize_and_size_mismatch(tmp_path):
    rng = np.random.default_rng(1)
    _image_tree(tmp_path, rng, grey=True)
    _png(tmp_path / "train/dog/9.png", rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8))  # one RGB image
    ds = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)), 0)
    assert ds.in_channels == 3
    _png(tmp_path / "train/dog/5.png", rng.integers(0, 256, size=(9, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"train/dog/5.png: image is 4x9 but .*train/cat/0.png is 7x6; .*data.image_size"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)), 0)
    ds = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=5), 0)
    assert ds.image_size == (5, 5) and ds.train.x.shape[1:] == (3, 5, 5) and ds.test.x.shape == (6, 3, 5, 5)


def test_imagefolder_bad_trees(tmp_path):
    rng = np.random.default_rng(2)
    _image_tree(tmp_path, rng)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path))
    (tmp_path / "train" / "fox").mkdir()
    with pytest.raises(DataError, match=r"train/fox: empty class folder"):
        load_dataset(cfg, 0)
    (tmp_path / "train" / "fox" / "a.png").write_text("not an image")
    with pytest.raises(DataError, match=r"train/fox/a.png: cannot read the image"):
        load_dataset(cfg, 0)
    (tmp_path / "train" / "fox" / "a.png").unlink()
    (tmp_path / "train" / "fox").rmdir()
    _png(tmp_path / "test/yak/0.png", rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"test/yak: class 'yak' is not among the train classes"):
        load_dataset(cfg, 0)
    with pytest.raises(DataError, match=r"nowhere/train: not found"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "nowhere")), 0)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty/train: no class folders"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "empty")), 0)


# --------------------------------------------------------------------------------------------------- augmentation
def _candidates(img: np.ndarray, pad: int, fill: np.ndarray, flip: bool) -> list[np.ndarray]:
    """Every crop (and flip) RandomCropFlip may produce from one [C, H, W] image, computed with NumPy."""
    c, h, w = img.shape
    padded = np.broadcast_to(fill[:, None, None], (c, h + 2 * pad, w + 2 * pad)).copy()
    padded[:, pad : pad + h, pad : pad + w] = img
    crops = [padded[:, i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return crops + [crop[:, :, ::-1] for crop in crops] if flip else crops


@pytest.mark.parametrize("flip", [True, False])
def test_augmentation_is_deterministic_and_a_crop_or_flip(flip):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(16, 2, 8, 8)).astype(np.float32))
    aug = RandomCropFlip(pad=1, flip=flip, fill=(-1.5, 0.5))
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    fill = np.array([-1.5, 0.5], dtype=np.float32)
    flipped = 0
    for out, img in zip(a.numpy(), x.numpy()):
        cands = _candidates(img, 1, fill, flip)
        matches = [k for k, cand in enumerate(cands) if np.array_equal(out, cand)]
        assert matches, "augmented image is not a padded crop (or its mirror) of the input"
        flipped += matches[0] >= 9
    assert (flipped > 0) == flip


def test_dataset_augment_defaults():
    assert load_dataset(DataConfig(name="digits"), 0).augment is None
    ds = load_dataset(DataConfig(name="digits", augment=True), 0)
    assert ds.augment == RandomCropFlip(pad=1, flip=False, fill=((0 - ds.info["mean"][0]) / ds.info["std"][0],))
    x, _ = next(iterate_batches(ds.train, 32, shuffle=False))
    out = ds.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    # padding is raw black: unnormalised it is 0
    raw = out * ds.info["std"][0] + ds.info["mean"][0]
    assert raw.min().item() == pytest.approx(0, abs=1e-5)


# --------------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("shuffle", [False, True])
def test_iterate_batches_covers_every_sample_once(shuffle):
    n = 103
    split = Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n))
    gen = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        batches = list(iterate_batches(split, 10, shuffle=shuffle, generator=gen))
        assert [len(y) for _, y in batches] == [10] * 10 + [3]
        ys = torch.cat([y for _, y in batches])
        xs = torch.cat([x.view(-1) for x, _ in batches])
        assert sorted(ys.tolist()) == list(range(n)) and torch.equal(xs.long(), ys)
        epochs.append(ys)
    assert torch.equal(epochs[0], torch.arange(n)) != shuffle
    assert torch.equal(epochs[0], epochs[1]) != shuffle
    again = torch.cat([y for _, y in iterate_batches(split, 10, True, torch.Generator().manual_seed(0))])
    assert torch.equal(again, epochs[0]) == shuffle
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(split, 0, shuffle=False))
    assert len(split) == n


# --------------------------------------------------------------------------------------------------- presence checks
def test_presence_checks_pass_on_present_files_without_reading_them(tmp_path):
    """Files with the right names but garbage inside pass the check (it only looks); loading them fails."""
    for name in FILES:
        (tmp_path / "fashion" / f"{name}.gz").parent.mkdir(exist_ok=True)
        (tmp_path / "fashion" / f"{name}.gz").write_bytes(b"not gzip")
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cifar" / "cifar-10-batches-py" / name).write_bytes(b"garbage")
    for part in ("train", "test"):
        (tmp_path / "images" / part).mkdir(parents=True)
    present = [
        DataConfig(name="fashion-mnist", root=str(tmp_path / "fashion")),
        DataConfig(name="cifar10", root=str(tmp_path / "cifar")),
        DataConfig(name="imagefolder", root=str(tmp_path / "images")),
        DataConfig(name="digits"),
    ]
    for cfg in present:
        check_dataset_files(cfg)
    for cfg in present[:3]:
        with pytest.raises(DataError):
            load_dataset(cfg, 0)


def test_presence_check_of_fashion_mnist_names_data_root_and_the_missing_file(tmp_path, monkeypatch):
    paths = _write_fashion(tmp_path, _fake_fashion(), gz=True)
    cfg = DataConfig(name="fashion-mnist", root=str(tmp_path))
    check_dataset_files(cfg)
    paths[FILES[2]].unlink()
    root = re.escape(str(tmp_path))
    with pytest.raises(DataError, match=rf"^data\.root: {root} has no fashion-mnist files \({FILES[2]}\[\.gz\] "
                                        rf"not found in {root}, {root}/fashion-mnist\); .*data\.download: true$"):
        check_dataset_files(cfg)
    check_dataset_files(DataConfig(name="fashion-mnist", root=str(tmp_path), download=True))  # fetched later
    with pytest.raises(DataError, match=rf"^data\.root: {root}/nope has no fashion-mnist files \({FILES[0]}"):
        check_dataset_files(DataConfig(name="fashion-mnist", root=str(tmp_path / "nope")))
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(DataError, match=r"^data\.root: not set, and the default folders have no fashion-mnist"):
        check_dataset_files(DataConfig(name="fashion-mnist"))


def test_presence_check_of_cifar_names_the_missing_batch(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _dump(folder / name, _cifar_batch(2, rng))
    check_dataset_files(DataConfig(name="cifar10", root=str(tmp_path)))
    (folder / "data_batch_4").unlink()
    root = re.escape(str(tmp_path))
    with pytest.raises(DataError, match=rf"^data\.root: {root} has no cifar10 files \({root}/cifar-10-batches-py/"
                                        r"data_batch_4: not found; expected the cifar10 batch"):
        check_dataset_files(DataConfig(name="cifar10", root=str(tmp_path)))
    no_cifar100 = rf"^data\.root: {root} has no cifar100 files \(train not found in {root} or .*cifar-100-python; "
    with pytest.raises(DataError, match=no_cifar100 + r"extract .* data\.download is not supported for CIFAR"):
        check_dataset_files(DataConfig(name="cifar100", root=str(tmp_path), download=True))
    with pytest.raises(DataError, match=r"^data\.root: not set; set data\.root \(or \$EEOPT_DATA_DIR\)"):
        check_dataset_files(DataConfig(name="cifar10"))


def test_presence_check_of_imagefolder_needs_train_and_test(tmp_path):
    _image_tree(tmp_path, np.random.default_rng(0))
    check_dataset_files(DataConfig(name="imagefolder", root=str(tmp_path)))
    for path in sorted((tmp_path / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "test").rmdir()
    root = re.escape(str(tmp_path))
    with pytest.raises(DataError, match=rf"^data\.root: {root} has no imagefolder files \({root}/test: not found"):
        check_dataset_files(DataConfig(name="imagefolder", root=str(tmp_path)))
    with pytest.raises(DataError, match=r"^data\.root: not set; imagefolder needs"):
        check_dataset_files(DataConfig(name="imagefolder"))


def test_register_dataset_keeps_its_check_next_to_the_loader(registry, tmp_path):
    marker = tmp_path / "marker"
    _indexed(registry, name="unchecked")

    @register_dataset("checked", check=lambda cfg: None if marker.exists() else f"data.root: {marker} is missing")
    def _load(cfg):
        return registry.get("unchecked").load(cfg)

    check_dataset_files(DataConfig(name="unchecked"))  # no check: nothing to find
    with pytest.raises(DataError, match=r"^data\.root: .*marker is missing$"):
        check_dataset_files(DataConfig(name="checked"))
    marker.touch()
    check_dataset_files(DataConfig(name="checked"))
    assert len(load_dataset(DataConfig(name="checked"), 0).test) == 50
    with pytest.raises(UnknownNameError, match=r"^data\.name: unknown dataset 'nope'"):
        check_dataset_files(DataConfig(name="nope"))
