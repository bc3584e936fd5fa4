"""Search spaces as Optuna sees them, and back: categorical choices that are lists or mappings."""

import optuna
import pytest

from eeopt.config import validate_config
from eeopt.errors import ConfigError
from eeopt.study.trials import SearchSpace

BASE = {"data": {"name": "digits"}, "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3]},
        "study": {"name": "s"}}


def _space(search_space):
    return SearchSpace(validate_config({**BASE, "search_space": search_space}, study=True))


def test_list_choices_reach_the_train_config():
    """`model.exits: [[1, 3], [2, 3]]` is sampled as readable JSON text and decoded to the list again (it used to
    be a repr string that failed every trial)."""
    space = _space({"model.exits": {"type": "categorical", "choices": [[1, 3], [2, 3], "every_block"]},
                    "model.head": {"type": "categorical", "choices": ["linear", "sdn"]},
                    "training.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}})
    dists = space.distributions()
    assert dists["model.exits"].choices == ("[1, 3]", "[2, 3]", "every_block")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        params = study.ask(dists).params
        decoded = space.decode(params)
        cfg = space.train_config(params, threads=2)
        assert cfg.model.exits == decoded["model.exits"] and cfg.model.head == params["model.head"]
        assert cfg.training.lr == params["training.lr"] and cfg.training.threads == 2
        seen.add(str(decoded["model.exits"]))
    assert seen == {"[1, 3]", "[2, 3]", "every_block"}


def test_mapping_choices_and_fixed_threads():
    space = _space({"model.exits": {"type": "categorical", "choices": [{"flops": [0.25, 0.5]}, [1, 3]]}})
    cfg = space.train_config({"model.exits": '{"flops": [0.25, 0.5]}'})
    assert cfg.model.exits.flops == [0.25, 0.5] and cfg.training.threads is None
    fixed = SearchSpace(validate_config({**BASE, "training": {"threads": 1}}, study=True))
    assert fixed.train_config({}, threads=4).training.threads == 1  # the file's own value wins


def test_a_string_choice_equal_to_the_json_of_another_is_refused():
    """Decoding would be ambiguous. (No field of the schema takes both today; a future free-form one might.)"""
    config = validate_config({**BASE, "search_space": {"model.exits": {"type": "categorical", "choices": [[1, 3]]}}},
                             study=True)
    config.search_space["model.exits"].choices.append("[1, 3]")
    with pytest.raises(ConfigError, match=r"search_space.model.exits: the choice '\[1, 3\]'"):
        SearchSpace(config)
