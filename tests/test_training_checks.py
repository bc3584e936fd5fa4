"""What is checked before a run starts (eeopt.training.checks), the process settings `train` makes
(eeopt.training.runtime) and its `on_batch` hook; through the library, `eeopt train` and `eeopt study run`."""

from __future__ import annotations

import os
import random
import re

import numpy as np
import pytest
import torch
import yaml

from eeopt.cli import main
from eeopt.config import DataConfig, TrainConfig, TrainingConfig
from eeopt.data import RawData, load_dataset, register_dataset
from eeopt.data import base as data_base
from eeopt.errors import ConfigError, DataError
from eeopt.registry import UnknownNameError
from eeopt.training import check_train_config, configure_process, train

BASE = {
    "seed": 0,
    "data": {"name": "digits"},
    "model": {"backbone": "tinyresnet", "width": 8},
    "training": {"epochs": 1, "batch_size": 64, "lr": 5e-3, "device": "cpu"},
}


def _cfg(**parts: dict) -> TrainConfig:
    """BASE with each part's fields changed."""
    tree = {key: {**value, **parts.get(key, {})} if isinstance(value, dict) else value
            for key, value in BASE.items()}
    return TrainConfig.model_validate(tree)


# ------------------------------------------------------------------------------------------------ model.exits
@pytest.mark.parametrize(
    "model",
    [
        {}, {"exits": [1, 3]}, {"exits": [5]}, {"exits": {"flops": [0.3, 0.99]}},
        {"backbone": "resnet20", "exits": [9]},
    ],
)
def test_exits_the_backbone_has_pass(model):
    check_train_config(_cfg(model=model))


@pytest.mark.parametrize(
    "model, expected",
    [
        ({"exits": [99]}, "block 99 does not exist (tinyresnet has 5 blocks; use numbers 1..5)"),
        ({"exits": [2, 6]}, "block 6 does not exist (tinyresnet has 5 blocks; use numbers 1..5)"),
        ({"backbone": "resnet20", "exits": [3, 10]}, "block 10 does not exist (resnet20 has 9 blocks"),
    ],
)
def test_exits_beyond_the_backbone_fail_with_source_and_field(model, expected):
    with pytest.raises(ConfigError) as info:
        check_train_config(_cfg(model=model), source="run.yaml")
    assert str(info.value).startswith(f"run.yaml: model.exits: {expected}"), str(info.value)


def test_exits_are_counted_on_the_backbone_the_config_builds():
    """backbone_kwargs that change the depth change which blocks exist (the backbone is really built)."""
    deeper = {"backbone_kwargs": {"depths": [2, 2, 2, 2, 2]}}
    check_train_config(_cfg(model={**deeper, "exits": [10]}))
    with pytest.raises(ConfigError, match=r"^config: model\.exits: block 11 does not exist \(tinyresnet has 10"):
        check_train_config(_cfg(model={**deeper, "exits": [11]}))
    with pytest.raises(ConfigError, match=r"^config: model\.backbone_kwargs: unknown key 'dpeths'"):
        check_train_config(_cfg(model={"backbone_kwargs": {"dpeths": [1]}, "exits": [2]}))


def test_the_check_says_what_training_would_say(tmp_path):
    cfg = _cfg(model={"exits": [99]})
    with pytest.raises(ConfigError) as checked:
        check_train_config(cfg, source="cfg.yaml")
    with pytest.raises(ConfigError) as trained:
        train(cfg, progress=False)
    assert str(checked.value) == f"cfg.yaml: {trained.value}"


# ------------------------------------------------------------------------------------------------ data files
def test_missing_dataset_files_fail_with_source_and_field(tmp_path):
    nope = tmp_path / "nope"
    with pytest.raises(DataError, match=rf"^study file: data\.root: {re.escape(str(nope))} has no fashion-mnist "
                                        r"files \(train-images-idx3-ubyte\[\.gz\] not found in"):
        check_train_config(_cfg(data={"name": "fashion-mnist", "root": str(nope)}), source="study file")
    with pytest.raises(DataError, match=r"^config: data\.root: .*nope has no cifar100 files"):
        check_train_config(_cfg(data={"name": "cifar100", "root": str(nope)}))
    with pytest.raises(DataError, match=r"^config: data\.root: .*nope has no imagefolder files"):
        check_train_config(_cfg(data={"name": "imagefolder", "root": str(nope)}))
    check_train_config(_cfg(data={"name": "fashion-mnist", "root": str(nope), "download": True}))


def test_unknown_names_name_source_and_field():
    with pytest.raises(UnknownNameError, match=r"^x\.yaml: model\.backbone: unknown backbone 'resnet9' \(known: "):
        check_train_config(_cfg(model={"backbone": "resnet9", "exits": [2]}), source="x.yaml")
    with pytest.raises(UnknownNameError, match=r"^config: data\.name: unknown dataset 'mnist'"):
        check_train_config(_cfg(data={"name": "mnist"}))


# ------------------------------------------------------------------------------------------------ output_dir
def test_an_output_dir_that_is_a_file_fails_before_the_data_is_loaded(tmp_path):
    """The data of this config cannot load (no files): the output_dir error comes first, and the file stays."""
    cfg = _cfg(data={"name": "fashion-mnist", "root": str(tmp_path / "nope")})
    file = tmp_path / "out.txt"
    file.write_text("keep me")
    with pytest.raises(ConfigError, match=rf"^--output-dir {re.escape(str(file))}: exists and is not a directory$"):
        train(cfg, file, progress=False)
    below = file / "run"
    with pytest.raises(ConfigError, match=rf"^--output-dir {re.escape(str(below))}: {re.escape(str(file))} exists"):
        train(cfg, below, progress=False)
    assert file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(DataError):  # a folder is fine: then the missing data is what fails
        train(cfg, tmp_path / "new" / "run", progress=False)


# ------------------------------------------------------------------------------------------------ on_batch
def test_on_batch_follows_every_optimizer_step_before_the_epoch_callback():
    cfg = _cfg(data={"train_subset": 129}, training={"epochs": 2})
    dataset = load_dataset(cfg.data, cfg.seed)
    sizes = [min(64, 129 - start) for start in range(0, 129, 64)]  # [64, 64, 1]: one sample is not a step
    steps = sum(size >= 2 for size in sizes)
    events = []
    train(
        cfg, progress=False, dataset=dataset,
        on_batch=lambda done, total: events.append(("batch", done, total)),
        callback=lambda epoch, row: events.append(("epoch", epoch)),
    )
    per_epoch = [("batch", done, steps) for done in range(1, steps + 1)]
    assert events == [*per_epoch, ("epoch", 1), *per_epoch, ("epoch", 2)]


# ------------------------------------------------------------------------------------------------ process settings
def test_configure_process_sets_every_switch_either_way_and_seeds_everything():
    threads = torch.get_num_threads()
    try:
        device = configure_process(TrainingConfig(device="cpu", deterministic=False, threads=1), seed=7)
        assert device == torch.device("cpu") and torch.get_num_threads() == 1
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
        drawn = (random.random(), np.random.rand(), torch.rand(3))
        random.seed(7)
        np.random.seed(7)
        torch.manual_seed(7)
        assert drawn[:2] == (random.random(), np.random.rand()) and torch.equal(drawn[2], torch.rand(3))

        configure_process(TrainingConfig(device="cpu", deterministic=True), seed=7)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
        if not torch.cuda.is_available():
            with pytest.raises(ConfigError, match=r"^training\.device: cuda requested but torch sees no CUDA"):
                configure_process(TrainingConfig(device="cuda", deterministic=False), seed=7)
            assert torch.are_deterministic_algorithms_enabled()  # nothing was set
    finally:
        torch.set_num_threads(threads)
        configure_process(TrainingConfig(device="cpu"), seed=0)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(data_base.DATASETS, "_entries", dict(data_base.DATASETS._entries))


def test_initial_weights_do_not_depend_on_where_the_data_was_loaded(registry):
    """A loader that draws from the global generators: training loads it without moving them."""

    @register_dataset("noisy")
    def _noisy(cfg: DataConfig) -> RawData:
        random.random(), np.random.rand(5), torch.rand(5)
        rng = np.random.default_rng(0)
        return RawData(rng.random((60, 8, 8)), np.arange(60) % 3, rng.random((9, 8, 8)), np.arange(9) % 3, 3)

    cfg = _cfg(data={"name": "noisy"}, training={"epochs": 0})
    loaded_inside = train(cfg, progress=False).model.state_dict()
    passed_in = train(cfg, progress=False, dataset=load_dataset(cfg.data, cfg.seed)).model.state_dict()
    assert all(torch.equal(loaded_inside[name], passed_in[name]) for name in loaded_inside)


# ------------------------------------------------------------------------------------------------ study run
def _study(tmp_path, **changes):
    study = {**BASE, "policy": {"trials": 10},
             "search_space": {"training.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
             "study": {"name": "checks", "trials": 1, "sampler": "random"}}
    for key, value in changes.items():
        study[key] = {**study.get(key, {}), **value}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"data": {"name": "fashion-mnist", "root": "/nonexistent/eeopt"}},
         "study file: data.root: /nonexistent/eeopt has no fashion-mnist files (train-images-idx3-ubyte[.gz]"),
        ({"model": {"exits": [2, 99]}},
         "study file: model.exits: block 99 does not exist (tinyresnet has 5 blocks"),
        ({"search_space": {"model.exits": {"type": "categorical", "choices": [[1, 3], [7]]}}},
         "search_space.model.exits: model.exits: block 7 does not exist"),
    ],
)
def test_a_study_fails_before_anything_is_written(tmp_path, capsys, changes, expected):
    path = _study(tmp_path, **changes)
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
