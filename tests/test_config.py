import pytest
import yaml

from eeopt.config import (
    StudyConfig,
    TrainConfig,
    apply_overrides,
    flatten,
    load_config,
    load_train_config,
    validate_config,
)
from eeopt.errors import ConfigError


def _write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_defaults_and_overrides(tmp_path):
    path = _write(tmp_path, {"data": {"name": "digits"}, "training": {"epochs": 5}})
    cfg = load_config(path, ["training.epochs=1", "training.lr=1e-3", "model.exits=[2, 4]", "model.cascade=true"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.training.epochs == 1 and cfg.training.lr == 1e-3
    assert cfg.model.exits == [2, 4] and cfg.model.cascade is True


@pytest.mark.parametrize(
    "raw, overrides, expected",
    [
        ({"training": {"lrr": 1}}, [], r"c.yaml: training.lrr: unknown field"),
        ({"training": {"lr": "fast"}}, [], r"c.yaml: training.lr: .*number.*\(got 'fast'\)"),
        ({"training": {"lr": -1}}, [], r"training.lr: .*greater than 0"),
        ({}, ["training.epochs=many"], r"training.epochs: .*integer"),
        ({}, ["nosuchsection.x=1"], r"nosuchsection: unknown field"),
        ({}, ["training.epochs"], r"--set 'training.epochs': expected dotted.path=value"),
        ({"model": {"exits": [0, 2]}}, [], r"model.exits: expected 'every_block'"),
        ({"model": {"exits": [4, 2]}}, [], r"model.exits: expected 'every_block'"),
        ({"model": {"exits": {"flops": [1.5]}}}, [], r"model.exits: .*less than 1"),
        ({"training": {"failure_loss": "bce", "failure_weight": 0}}, [], r"failure_weight must be > 0"),
        ({"training": {"device": "gpu"}}, [], r"training.device"),
    ],
)
def test_bad_train_configs_name_the_field(tmp_path, raw, overrides, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(_write(tmp_path, raw), overrides)
    assert "\n" not in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 2\)"):
        load_config(_write(tmp_path, "a: 1\nb: ]\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


STUDY = {
    "data": {"name": "digits"},
    "model": {"failure_head": True},
    "study": {"name": "s1", "trials": 4},
    "search_space": {
        "training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "training.failure_loss": {"type": "categorical", "choices": ["none", "bce", "ranking"]},
        "training.epochs": {"type": "int", "low": 1, "high": 3},
    },
}


def test_study_config_resolves_sampled_params(tmp_path):
    cfg = load_config(_write(tmp_path, STUDY), study=True)
    assert isinstance(cfg, StudyConfig)
    assert cfg.study.objectives == {"val/acc_cost_auc": "maximize"}
    train = cfg.train_config({"training.lr": 3e-3, "training.failure_loss": "bce", "training.epochs": 2})
    assert isinstance(train, TrainConfig)
    assert (train.training.lr, train.training.failure_loss, train.training.epochs) == (3e-3, "bce", 2)
    assert cfg.training.lr == 2e-3  # the study's fixed config is not mutated


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"training.lrx": {"type": "float", "low": 1, "high": 2}}, r"search_space.training.lrx: no such config field"),
        ({"nope.lr": {"type": "float", "low": 1, "high": 2}}, r"search_space.nope.lr: no such config field"),
        ({"training.lr": {"type": "float", "low": 2, "high": 1}}, r"training.lr.*empty range"),
        ({"training.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, r"log scale needs low > 0"),
        ({"training.failure_loss": {"type": "categorical", "choices": ["bce", "hinge"]}}, r"value 'hinge' does not fit"),
        ({"training.epochs": {"type": "float", "low": 0.5, "high": 2.5}}, r"training.epochs: value 0.5 does not fit"),
        ({"training.lr": {"type": "gaussian", "low": 0, "high": 1}}, r"search_space.training.lr"),
        ({"training.optimizer": {"type": "categorical", "choices": []}}, r"choices"),
    ],
)
def test_bad_search_spaces_fail_naming_the_path(tmp_path, space, expected):
    raw = dict(STUDY, search_space=space)
    with pytest.raises(ConfigError, match=expected):
        load_config(_write(tmp_path, raw), study=True)


@pytest.mark.parametrize(
    "study, expected",
    [
        ({}, r"study.name: field required"),
        ({"name": "x", "objectives": {"test/acc_at_50": "maximize"}}, r"must be a val/ metric"),
        ({"name": "x", "objectives": {"val/acc_at_50": "up"}}, r"study.objectives.val/acc_at_50"),
        ({"name": "x", "trials": 0}, r"study.trials"),
        ({"name": "x", "objective": "os.system('rm')"}, r"package.module:function"),
        ({"name": "has space"}, r"study.name"),
    ],
)
def test_bad_study_settings(study, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config({"study": study}, study=True)


def test_cross_field_rules(tmp_path):
    raw = {k: v for k, v in STUDY.items() if k != "model"}  # failure losses in the space, no failure head
    with pytest.raises(ConfigError, match=r"search_space.training.failure_loss: value 'bce' does not fit the field "
                                          r"\(training.failure_loss: bce trains failure heads"):
        load_config(_write(tmp_path, raw), study=True)
    with pytest.raises(ConfigError, match="policy.score: 'learned' needs"):
        validate_config({"policy": {"score": "learned"}})
    with pytest.raises(ConfigError, match="training: mode frozen first trains the backbone"):
        validate_config({"training": {"mode": "frozen"}})
    with pytest.raises(ConfigError, match="either training.backbone_epochs or training.backbone_checkpoint"):
        validate_config({"training": {"mode": "two_stage", "backbone_epochs": 1, "backbone_checkpoint": "m.pt"}})


def test_load_train_config_takes_a_study_file_too(tmp_path):
    from eeopt.config import load_train_config

    cfg = load_train_config(_write(tmp_path, STUDY), ["training.epochs=2"])
    assert isinstance(cfg, TrainConfig) and not isinstance(cfg, StudyConfig) and cfg.training.epochs == 2
    assert load_train_config(_write(tmp_path, {"training": {"epochs": 4}}, "t.yaml")).training.epochs == 4


def test_apply_overrides_does_not_mutate_and_flatten():
    raw = {"training": {"epochs": 3}}
    new = apply_overrides(raw, ["training.epochs=1", "data.name=fashion-mnist"])
    assert raw == {"training": {"epochs": 3}}
    assert flatten(new) == {"training.epochs": 1, "data.name": "fashion-mnist"}


def test_non_utf8_file_is_one_line_error(tmp_path):
    from eeopt.cli import main

    path = tmp_path / "latin1.yaml"
    path.write_bytes("study: {name: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(path, study=True)
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_train_config(path)
    for argv in (["study", "run", str(path)], ["train", str(path), "-o", str(tmp_path / "out")]):
        assert main(argv) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.yaml"]
