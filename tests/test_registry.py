"""`Registry.restoring()` and `restoring_registries()`: what a block registers is gone after it, on every registry,
including the backbone registry's library prefixes; and the suite's autouse fixture really wraps every test."""

import pytest

from eeopt.core.calibration import CALIBRATORS, Calibrator, register_calibrator
from eeopt.data import list_datasets, register_dataset
from eeopt.data.base import DATASETS
from eeopt.models.registry import BACKBONES
from eeopt.registry import Registry, UnknownNameError, restoring_registries
from eeopt.core.scores import SCORES, list_scores, register_score


def test_restoring_undoes_registrations_made_inside_the_block():
    registry = Registry("widget")
    registry.register("kept")(1)
    entries = registry._entries
    with registry.restoring() as same:
        assert same is registry
        registry.register("temporary")(2)
        registry._entries = {"swapped": 3}  # a block that replaced the table altogether
    assert registry.names() == ["kept"] and registry._entries is entries
    with pytest.raises(UnknownNameError, match=r"unknown widget 'temporary' \(known: kept\)"):
        registry.get("temporary")


def test_restoring_undoes_even_when_the_block_raises():
    registry = Registry("widget")
    with pytest.raises(RuntimeError), registry.restoring():
        registry.register("temporary")(1)
        raise RuntimeError("boom")
    assert registry.names() == []


def test_restoring_registries_covers_scores_calibrators_datasets_and_backbone_libraries():
    before = {r.kind: r.names() for r in (SCORES, CALIBRATORS, DATASETS, BACKBONES)}
    libraries = dict(BACKBONES.libraries)
    with restoring_registries():
        register_score("probe_score")(lambda outputs: outputs.confidence)
        register_calibrator("probe_calibrator")(type("Probe", (Calibrator,), {}))
        register_dataset("probe_dataset")(lambda cfg: None)
        BACKBONES.register("probe_backbone")(lambda **kw: None)
        BACKBONES.libraries["probe"] = (lambda prefix, name, **kw: None, None)
        assert "probe_score" in list_scores() and "probe_dataset" in list_datasets()
    assert {r.kind: r.names() for r in (SCORES, CALIBRATORS, DATASETS, BACKBONES)} == before
    assert BACKBONES.libraries == libraries


# The suite's autouse fixture (tests/conftest.py): a score registered by the first test is gone for the second,
# whichever order or process they run in (under xdist each checks on its own: no entry may be there on entry).
@pytest.mark.parametrize("case", ["first", "second"])
def test_no_test_sees_a_score_another_test_registered(case):
    assert "probe_leak" not in list_scores()
    register_score("probe_leak")(lambda outputs: outputs.confidence)
    assert "probe_leak" in list_scores()
