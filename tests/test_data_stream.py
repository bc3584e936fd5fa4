"""Streamed data (DataLoader workers) against the in-memory path, augmentations by name, CIFAR archives, and the
one-line errors; on small image folders and archives the tests write."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eeopt.config import DataConfig, TrainConfig
from eeopt.data import (
    RandomCropFlip,
    RandomResizedCropFlip,
    Split,
    StreamedSplit,
    check_dataset_files,
    iterate_batches,
    load_dataset,
    split_tensors,
)
from eeopt.data import base as data_base
from eeopt.data.augment import resized_crop_box
from eeopt.data.cifar import ARCHIVE_MD5
from eeopt.errors import ConfigError, DataError
from eeopt.training import train


# --------------------------------------------------------------------------------------------------- helpers
def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _folder(root: Path, seed=0, size=(12, 12), train=10, test=4, test_part="test", classes=("b", "a", "c")):
    """root/{train,<test_part>}/<class>/k.png of random RGB images; returns {relative path: array}."""
    rng = np.random.default_rng(seed)
    images = {}
    for part, count in (("train", train), (test_part, test)):
        for cls in classes:
            for k in range(count):
                images[f"{part}/{cls}/{k}.png"] = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    for rel, array in images.items():
        _png(root / rel, array)
    return images


def _batches(split, batch_size=7, shuffle=False, generator=None):
    return list(iterate_batches(split, batch_size, shuffle=shuffle, generator=generator))


def _same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    _folder(root)
    return root


# --------------------------------------------------------------------------------------------------- stream = memory
@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("extra", [{}, {"image_size": 10}, {"image_size": 8, "augment": "imagenet"}])
def test_streamed_and_in_memory_give_the_same_batches(folder, workers, extra):
    cfg = {"name": "imagefolder", "root": str(folder), "val_fraction": 0.2, **extra}
    memory = load_dataset(DataConfig(**cfg, stream=False), 3)
    streamed = load_dataset(DataConfig(**cfg, stream=True, workers=workers), 3)
    assert isinstance(memory.train, Split) and isinstance(streamed.train, StreamedSplit)
    assert streamed.info["stream"] and streamed.info["workers"] == workers and not memory.info["stream"]
    same = {k: v for k, v in memory.info.items() if k not in ("stream", "workers", "stats_images")}
    assert {k: streamed.info[k] for k in same} == same  # split sha1, sizes, mean/std (all 24 train images)
    assert streamed.info["stats_images"] == 24
    for key in ("train", "val", "test"):
        a, b = getattr(memory, key), getattr(streamed, key)
        assert len(a) == len(b) and torch.equal(a.y, b.y)
        assert _same_batches(_batches(a), _batches(b)), key
    # a shuffled epoch: the same order from the same generator, and the generators stay in step (without
    # augmentation; with it, the streamed train split augments in its workers, the in-memory one in the loop)
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    global_state = torch.get_rng_state()
    a, b = _batches(memory.train, 5, True, ga), _batches(streamed.train, 5, True, gb)
    assert torch.equal(torch.get_rng_state(), global_state)  # the loader leaves torch's global RNG (dropout) alone
    assert all(torch.equal(ya, yb) and xa.shape == xb.shape for (xa, ya), (xb, yb) in zip(a, b))
    assert _same_batches(a, b) == ("augment" not in extra)
    if "augment" not in extra:
        assert _same_batches(_batches(memory.train, 5, True, ga), _batches(streamed.train, 5, True, gb))
        assert torch.equal(ga.get_state(), gb.get_state())
    unfinished = iterate_batches(streamed.val, 1, shuffle=False)  # val keeps its workers across passes
    next(unfinished)
    unfinished.close()  # a pass left unfinished: the next one starts over
    assert _same_batches(_batches(memory.val, 2), _batches(streamed.val, 2))
    x, y = split_tensors(streamed.test)
    assert torch.equal(x, memory.test.x) and torch.equal(y, memory.test.y)
    side = extra.get("image_size", 12)
    assert memory.image_size == streamed.image_size == (side, side) and x.shape[1:] == (3, side, side)


def test_imagenet_geometry_is_a_shorter_side_resize_then_a_center_crop(tmp_path):
    """40x30 (h x w) images at image_size 16: shorter side 30 -> round(16 / 0.875) = 18, so 24 x 18, then the
    center 16 x 16 (rows 4..19, columns 1..16), computed here with Pillow directly."""
    from PIL import Image

    images = _folder(tmp_path, size=(40, 30), train=3, test=2)
    ds = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, augment="imagenet",
                                 normalize=False, stream=True, workers=0), 0)
    x, _ = split_tensors(ds.test)
    first = Image.fromarray(images["test/a/0.png"]).resize((18, 24), Image.Resampling.BILINEAR)
    expected = np.asarray(first, dtype=np.float32)[4:20, 1:17].transpose(2, 0, 1) / 255
    np.testing.assert_array_equal(x[0].numpy(), expected)


@pytest.mark.slow  # over 1.5 s on an idle core
@pytest.mark.parametrize("workers", [0, 1])
def test_one_seeded_epoch_trains_alike_streamed_and_in_memory(folder, workers):
    def run(stream: bool):
        cfg = TrainConfig.model_validate({
            "seed": 0,
            "data": {"name": "imagefolder", "root": str(folder), "stream": stream, "workers": workers,
                     "augment": "none"},
            "model": {"backbone": "tinyresnet", "width": 4},
            "training": {"epochs": 1, "batch_size": 8, "lr": 1e-2, "device": "cpu"},
        })
        return train(cfg, progress=False)

    memory, streamed = run(False), run(True)
    assert streamed.dataset_info["stream"] and not memory.dataset_info["stream"]
    loss_a, loss_b = memory.history[0]["train_loss"], streamed.history[0]["train_loss"]
    assert np.isfinite(loss_a) and loss_b == pytest.approx(loss_a, rel=1e-6)
    np.testing.assert_allclose(streamed.test.logits, memory.test.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(streamed.val.labels, memory.val.labels)


# --------------------------------------------------------------------------------------------------- augmentation
def _crop_candidates(img: np.ndarray, pad: int, fill: np.ndarray) -> list[np.ndarray]:
    c, h, w = img.shape
    padded = np.broadcast_to(fill[:, None, None], (c, h + 2 * pad, w + 2 * pad)).copy()
    padded[:, pad : pad + h, pad : pad + w] = img
    crops = [padded[:, i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return crops + [crop[:, :, ::-1] for crop in crops]


def test_streamed_cifar_augmentation_is_seeded_whatever_the_workers_and_a_crop_or_flip(folder):
    cfg = {"name": "imagefolder", "root": str(folder), "augment": "cifar", "stream": True}
    by_workers = [load_dataset(DataConfig(**cfg, workers=w), 1) for w in (0, 1)]
    assert all(ds.augment is None for ds in by_workers)  # the workers augment, the training loop does not
    runs = [_batches(ds.train, 6, True, torch.Generator().manual_seed(2)) for ds in by_workers]
    assert _same_batches(runs[0], runs[1])
    other = _batches(by_workers[0].train, 6, True, torch.Generator().manual_seed(3))
    assert not _same_batches(runs[0], other)
    # each augmented image is a padded crop (pad 12 // 8 = 1, raw black) or its mirror of the plain image
    plain = load_dataset(DataConfig(**{**cfg, "augment": "none"}, workers=0), 1)
    gen = torch.Generator().manual_seed(2)
    order = torch.randperm(len(plain.train), generator=gen)
    x_plain, _ = split_tensors(plain.train)
    fill = np.array([-m / s for m, s in zip(plain.info["mean"], plain.info["std"])], dtype=np.float32)
    augmented = torch.cat([x for x, _ in runs[0]])
    flipped = 0
    for out, k in zip(augmented.numpy(), order.tolist()):
        matches = [i for i, c in enumerate(_crop_candidates(x_plain[k].numpy(), 1, fill)) if np.array_equal(out, c)]
        assert matches, "not a padded crop or mirror of the plain image"
        flipped += matches[0] >= 9
    assert 0 < flipped < len(augmented)


def test_in_memory_augmentations_by_name(folder):
    ds = load_dataset(DataConfig(name="imagefolder", root=str(folder), augment="cifar"), 0)
    assert ds.augment == RandomCropFlip(pad=1, flip=True, fill=ds.augment.fill)
    assert load_dataset(DataConfig(name="imagefolder", root=str(folder), augment=True), 0).augment == ds.augment
    assert load_dataset(DataConfig(name="imagefolder", root=str(folder), augment="none"), 0).augment is None
    ds = load_dataset(DataConfig(name="imagefolder", root=str(folder), augment="imagenet", image_size=8), 0)
    assert ds.augment == RandomResizedCropFlip(flip=True) and ds.info["augment"] == "imagenet"
    digits = load_dataset(DataConfig(name="digits", augment="imagenet"), 0)
    assert digits.augment == RandomResizedCropFlip(flip=False)  # a mirrored digit is another digit


def test_resized_crop_of_the_whole_image_is_the_image_or_its_exact_mirror():
    x = torch.randn(40, 3, 9, 9)
    whole = RandomResizedCropFlip(flip=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = whole(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(torch.equal(o, i) or f for o, i, f in zip(out, x, flipped)) and 5 < sum(flipped) < 35
    no_flip = RandomResizedCropFlip(flip=False, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(no_flip(x, torch.Generator().manual_seed(0)), x)


def test_resized_crop_boxes_and_crops_follow_the_seed():
    gen = torch.Generator().manual_seed(4)
    boxes = [resized_crop_box(30, 50, gen) for _ in range(300)]
    for top, left, h, w in boxes:
        assert 0 <= top <= 30 - h and 0 <= left <= 50 - w and h >= 1 and w >= 1
    areas = np.array([h * w / 1500 for _, _, h, w in boxes])
    assert areas.min() >= 0.08 - 0.02 and areas.max() <= 1 and areas.std() > 0.1
    x = torch.randn(6, 2, 10, 10)
    aug = RandomResizedCropFlip()
    a, b = aug(x, torch.Generator().manual_seed(1)), aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))
    # image 0 by hand: the first box drawn, cropped and resized with F.interpolate, or its mirror
    gen = torch.Generator().manual_seed(1)
    top, left, h, w = resized_crop_box(10, 10, gen)
    crop = x[:1, :, top : top + h, left : left + w]
    if (h, w) != (10, 10):
        crop = F.interpolate(crop, size=(10, 10), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(a[0], crop[0]) or torch.equal(a[0], crop[0].flip(-1))


def test_streamed_imagenet_crops_come_from_the_native_images_and_follow_the_seed(tmp_path):
    _folder(tmp_path, size=(20, 16), train=4, test=1)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), image_size=8, augment="imagenet", stream=True,
                     workers=0)
    ds = load_dataset(cfg, 0)
    assert ds.train.reader.resized_crop == (8, 8) and ds.image_size == (8, 8)
    a = _batches(ds.train, 5, True, torch.Generator().manual_seed(0))
    b = _batches(ds.train, 5, True, torch.Generator().manual_seed(0))
    assert _same_batches(a, b) and all(x.shape[1:] == (3, 8, 8) for x, _ in a)
    assert not _same_batches(a, _batches(ds.train, 5, True, torch.Generator().manual_seed(1)))


# --------------------------------------------------------------------------------------------------- normalisation
def test_pretrained_statistics_and_the_streamed_stats_sample(folder, monkeypatch):
    plain = load_dataset(DataConfig(name="imagefolder", root=str(folder), normalize=False), 0)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    for stream in (False, True):
        ds = load_dataset(DataConfig(name="imagefolder", root=str(folder), stream=stream, workers=0), 0,
                          pretrained_stats=(mean, std))  # normalization None + given stats: pretrained
        assert ds.info["normalization"] == "pretrained" and ds.info["mean"] == list(mean)
        expected = (plain.test.x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(split_tensors(ds.test)[0], expected, rtol=0, atol=1e-6)
    ds = load_dataset(DataConfig(name="imagefolder", root=str(folder), normalization="train"), 0,
                      pretrained_stats=(mean, std))
    assert ds.info["normalization"] == "train" and ds.info["mean"] != list(mean)
    with pytest.raises(ConfigError, match=r"^data\.normalization: pretrained needs the pretrained backbone's"):
        load_dataset(DataConfig(name="imagefolder", root=str(folder), normalization="pretrained"), 0)
    with pytest.raises(ConfigError, match=r"^data\.normalization: the pretrained statistics have 1 channels but"):
        load_dataset(DataConfig(name="imagefolder", root=str(folder)), 0, pretrained_stats=([0.5], [0.2]))
    # streamed train statistics come from the first STATS_SAMPLE train images, in the split's order
    monkeypatch.setattr(data_base, "STATS_SAMPLE", 5)
    ds = load_dataset(DataConfig(name="imagefolder", root=str(folder), stream=True, workers=0), 0)
    first = plain.train.x[:5].double().numpy()
    assert ds.info["stats_images"] == 5
    np.testing.assert_allclose(ds.info["mean"], first.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(ds.info["std"], first.std(axis=(0, 2, 3)), atol=1e-12)


def test_subsets_pick_the_same_images_streamed_and_in_memory(folder):
    cfg = {"name": "imagefolder", "root": str(folder), "train_subset": 7, "val_subset": 3, "test_subset": 5}
    memory = load_dataset(DataConfig(**cfg, stream=False), 2)
    streamed = load_dataset(DataConfig(**cfg, stream=True, workers=0), 2)
    assert memory.info["sizes"] == streamed.info["sizes"] == {"train": 7, "val": 3, "test": 5}
    assert memory.info["val_indices_sha1"] == streamed.info["val_indices_sha1"]
    for key in ("train", "val", "test"):
        x, y = split_tensors(getattr(streamed, key))
        assert torch.equal(x, getattr(memory, key).x) and torch.equal(y, getattr(memory, key).y)


def test_stream_is_chosen_by_the_decoded_size(folder, monkeypatch):
    assert not load_dataset(DataConfig(name="imagefolder", root=str(folder)), 0).info["stream"]
    monkeypatch.setattr(data_base, "STREAM_THRESHOLD_BYTES", 24 * 3 * 12 * 12 * 4 - 1)  # 24 train images
    assert load_dataset(DataConfig(name="imagefolder", root=str(folder), workers=0), 0).info["stream"]
    assert not load_dataset(DataConfig(name="imagefolder", root=str(folder), stream=False), 0).info["stream"]


# --------------------------------------------------------------------------------------------------- imagefolder
def test_imagenet_layout_val_folder_is_the_test_split(tmp_path):
    images = _folder(tmp_path, train=3, test=2, test_part="val")
    check_dataset_files(DataConfig(name="imagefolder", root=str(tmp_path)))
    ds = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), normalize=False), 0)
    order = [f"val/{cls}/{k}.png" for cls in ("a", "b", "c") for k in range(2)]
    expected = np.stack([images[rel] for rel in order]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    np.testing.assert_array_equal(ds.test.x.numpy(), expected)
    assert ds.test.y.tolist() == [0, 0, 1, 1, 2, 2] and "val" in ds.info["test_split"]


def test_bad_image_folders_give_one_line(tmp_path):
    _folder(tmp_path, train=3, test=1)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), stream=True, workers=1)
    ds = load_dataset(cfg, 0)
    (tmp_path / "test" / "b" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG header, no image
    with pytest.raises(DataError) as info:
        _batches(ds.test)
    assert "\n" not in str(info.value) and re.match(r".*test/b/0\.png: cannot read the image", str(info.value))
    with pytest.raises(DataError, match=r"^.*test/b/0\.png: cannot read the image"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), stream=False), 0)  # reads all at once
    (tmp_path / "test" / "b" / "0.png").unlink()
    with pytest.raises(DataError, match=r"^.*test/b: empty class folder"):
        load_dataset(cfg, 0)
    with pytest.raises(DataError, match=r"^.*nowhere/train: not found"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "nowhere"), stream=True), 0)


# --------------------------------------------------------------------------------------------------- cifar archives
def _batch(rng, n, label_key, num_classes):
    batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, num_classes, n)]}  # plain ints: the allow-list
    return batch


def _archive(path: Path, members: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels", 100),
}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_the_archive(tmp_path, name):
    folder, train_files, test_file, key, classes = LAYOUTS[name]
    rng = np.random.default_rng(0)
    batches = {f: _batch(rng, 12, key, classes) for f in [*train_files, test_file]}
    archive = tmp_path / f"my-{name}.tar.gz"  # not the official name: read without an MD5 check
    _archive(archive, {f"{folder}/{f}": b for f, b in batches.items()})
    check_dataset_files(DataConfig(name=name, root=str(archive)))
    ds = load_dataset(DataConfig(name=name, root=str(archive), normalize=False, val_fraction=0.25), 0)
    test = batches[test_file]
    expected = torch.from_numpy(test[b"data"].reshape(12, 3, 32, 32) / np.float32(255))
    assert torch.equal(ds.test.x, expected) and ds.test.y.tolist() == test[key] and ds.num_classes == classes
    assert len(ds.train) + len(ds.val) == 12 * len(train_files) and ds.info["sources"] == [str(archive)]
    streamed = load_dataset(DataConfig(name=name, root=str(archive), normalize=False, val_fraction=0.25,
                                       stream=True, workers=0), 0)
    assert torch.equal(split_tensors(streamed.test)[0], expected)


def test_cifar_archive_checks(tmp_path):
    folder, train_files, test_file, key, classes = LAYOUTS["cifar10"]
    rng = np.random.default_rng(1)
    members = {f"{folder}/{f}": _batch(rng, 4, key, classes) for f in [*train_files, test_file]}
    official = tmp_path / "cifar-10-python.tar.gz"
    _archive(official, members)  # found under data.root by its official name: checked, and a fake fails
    check_dataset_files(DataConfig(name="cifar10", root=str(tmp_path)))
    md5 = hashlib.md5(official.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=rf"^{re.escape(str(official))}: MD5 {md5} is not the official "
                                        r"cifar-10-python\.tar\.gz's c58f30108f718f92721af3b95e74349a; .*rename"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)), 0)
    renamed = tmp_path / "subset.tar.gz"
    official.rename(renamed)
    del members[f"{folder}/data_batch_4"]
    _archive(renamed, members)
    with pytest.raises(DataError, match=r"subset\.tar\.gz: no member cifar-10-batches-py/data_batch_4; expected"):
        load_dataset(DataConfig(name="cifar10", root=str(renamed)), 0)
    members[f"{folder}/data_batch_4"] = {b"data": rng.integers(0, 256, (2, 5), dtype=np.uint8), key: [0, 1]}
    _archive(renamed, members)
    with pytest.raises(DataError, match=r"subset\.tar\.gz:cifar-10-batches-py/data_batch_4: expected b'data' as"):
        load_dataset(DataConfig(name="cifar10", root=str(renamed)), 0)
    renamed.write_bytes(b"not a tar archive")
    with pytest.raises(DataError, match=r"subset\.tar\.gz: not a readable tar archive"):
        load_dataset(DataConfig(name="cifar10", root=str(renamed)), 0)
    assert set(ARCHIVE_MD5.values()) == {"c58f30108f718f92721af3b95e74349a", "eb9058c3a382ffc7106e4002c42a8d85"}
