"""Training speed settings: autocast precision (bf16, fp16 with its scaler), no host sync inside a training step,
the deferred NaN/inf check, images per second, the channels_last rule, torch.compile errors, and how a study trial
is pinned to the resources Ray gave it. CPU only: tiny models on a subset of digits."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

import eeopt
from eeopt.config import DataConfig, TrainConfig
from eeopt.errors import ConfigError, TrainingDiverged
from eeopt.names import IMAGES_PER_S, train_key
from eeopt.training import build_model_for, epoch, train
from eeopt.training.runtime import (
    compile_errors,
    input_memory_format,
    prepare_for_device,
    training_precision,
)
from eeopt.training.stages import make_optimizer, make_scheduler, plan_stages

TRAIN_SUBSET = 640  # 10 steps of 64


@pytest.fixture(scope="module")
def digits():
    from eeopt.data import load_dataset

    return load_dataset(DataConfig(name="digits", train_subset=TRAIN_SUBSET), seed=0)


def _cfg(**training) -> TrainConfig:
    return TrainConfig.model_validate({
        "seed": 0,
        "data": {"name": "digits", "train_subset": TRAIN_SUBSET},
        "model": {"backbone": "tinyresnet", "width": 8, "exits": [2, 5]},
        "training": {"epochs": 1, "batch_size": 64, "lr": 5e-3, "device": "cpu", "threads": 1, **training},
    })


def _conv_output_dtypes(model) -> list[torch.dtype]:
    """Record the dtype of the first convolution's output at every call."""
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    return seen


# ------------------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("precision, dtype", [  # an epoch in CPU float16 takes about 1.7 s
    ("bf16", torch.bfloat16), pytest.param("fp16", torch.float16, marks=pytest.mark.slow)])
def test_autocast_trains_in_low_precision_and_evaluates_in_float32(digits, precision, dtype, monkeypatch):
    """The steps' convolutions run in the low precision (so autocast really is on), evaluation in float32, and the
    exit outputs are float32. fp16 gets a gradient scaler (CPU autocast has float16 in this torch)."""
    built = []

    def build_and_watch(cfg, dataset=None):
        model = build_model_for(cfg, dataset)
        built.append((model, _conv_output_dtypes(model)))
        return model

    monkeypatch.setattr(sys.modules["eeopt.training.loop"], "build_model_for", build_and_watch)
    result = train(_cfg(precision=precision), progress=False, dataset=digits)
    (model, dtypes), = built
    steps = epoch.steps_per_epoch(TRAIN_SUBSET, 64)
    assert dtypes[:steps] == [dtype] * steps  # the training steps
    assert set(dtypes[steps:]) == {torch.float32}  # val accuracy, then the val and test exit outputs
    assert result.val.logits.dtype == result.test.logits.dtype == "float32"
    assert math.isfinite(result.history[0]["train_loss"]) and max(result.test.accuracy) > 0.3  # it learned
    scaler = training_precision(precision, torch.device("cpu")).scaler
    assert (scaler is not None) == (precision == "fp16")


@pytest.mark.slow  # an epoch in CPU float16: about 1.8 s
def test_fp16_keeps_its_loss_scale_in_the_checkpoint(digits, tmp_path):
    def stop(epoch_, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(precision="fp16"), tmp_path, progress=False, dataset=digits, callback=stop)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["scaler"]
    assert saved["scale"] > 0 and 0 <= saved["_growth_tracker"] <= epoch.steps_per_epoch(TRAIN_SUBSET, 64)


# ------------------------------------------------------------------------------------------------ no host syncs
SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
EEOPT_DIR = os.path.dirname(eeopt.__file__) + os.sep  # eeopt's own code (not torch's, wherever the venv is)


def _count_host_reads(monkeypatch, log: list, at: list) -> None:
    """Patch the Tensor methods that copy a value to the host; log (method, steps done so far) for each call made
    from eeopt's own code (torch's internals, e.g. AdamW's CPU step counter, are not the step's doing)."""
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(EEOPT_DIR):
                log.append((_name, len(at)))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("check_every", [3, 1000])
def test_a_training_step_never_reads_the_device(digits, monkeypatch, check_every):
    """With the loss read only at checks, eeopt's code copies nothing to the host except at a check: during the step
    that completes a window of `check_every` steps, and after the last step. (The code before this change read
    `loss.item()` at every step: 10 reads for 10 steps.)"""
    cfg = _cfg(check_every=check_every, precision="bf16")
    tc = cfg.training
    model = build_model_for(cfg, digits)
    stage = plan_stages(tc)[0]
    optimizer = make_optimizer(list(model.parameters()), tc)
    scheduler = make_scheduler(optimizer, tc.schedule, 100)
    steps_done: list[int] = []
    reads: list[tuple[str, int]] = []
    _count_host_reads(monkeypatch, reads, steps_done)
    model.train()
    epoch.train_epoch(model, digits, stage, tc, optimizer, scheduler, torch.Generator().manual_seed(0),
                      torch.device("cpu"), epoch=1, first_step=0, total_steps=100,
                      on_step=lambda done, mean: steps_done.append(done))
    monkeypatch.undo()
    steps = epoch.steps_per_epoch(TRAIN_SUBSET, 64)
    assert len(steps_done) == steps
    # a read during step s happens after s - 1 steps were reported; checks end steps 3, 6, 9 and the epoch
    checks = [s for s in range(1, steps + 1) if s % check_every == 0]
    expected_at = [s - 1 for s in checks] + ([steps] if steps % check_every else [])
    assert [at for _, at in reads] == expected_at, reads


# ------------------------------------------------------------------------------------------------ divergence
class _NanAtCall:
    """A forward pre-hook that turns the model's input into NaN at its `n`-th call (only while training)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, module, args):
        if not module.training:
            return None
        self.calls += 1
        return (args[0] * math.nan,) if self.calls == self.n else None


@pytest.mark.parametrize("check_every, checked", [(5, "steps 6 to 10"), (50, "steps 1 to 10")])
def test_a_nan_at_step_7_stops_training_naming_the_step_and_the_steps_checked(digits, monkeypatch, check_every,
                                                                            checked):
    hook = _NanAtCall(7)

    def build_with_nan(cfg, dataset=None):
        model = build_model_for(cfg, dataset)
        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(sys.modules["eeopt.training.loop"], "build_model_for", build_with_nan)
    rows = []
    with pytest.raises(TrainingDiverged, match=rf"loss nan at epoch 1, step 7 .*{checked}.*lower training\.lr"):
        train(_cfg(check_every=check_every, epochs=2), progress=False, dataset=digits,
              callback=lambda e, row: rows.append(row))
    assert rows == []  # stopped within epoch 1
    assert hook.calls == 10  # every step of the epoch ran: the check is deferred


# ------------------------------------------------------------------------------------------------ throughput
def test_images_per_second_is_recorded_per_epoch(digits, tmp_path):
    result = train(_cfg(epochs=2), tmp_path, progress=False, dataset=digits)
    for row in result.history:
        assert 0 < row[IMAGES_PER_S] < math.inf
        # images over the training part of the epoch, which the row's seconds (with val accuracy) exceeds
        assert row[IMAGES_PER_S] > TRAIN_SUBSET / row["seconds"]
    assert train_key(IMAGES_PER_S) == "train/images_per_s"
    import json

    assert [r[IMAGES_PER_S] for r in json.loads((tmp_path / "history.json").read_text())] == [
        r[IMAGES_PER_S] for r in result.history]


def test_epoch_stats_count_the_images_trained_on(digits):
    cfg = _cfg()
    tc = cfg.training
    model = build_model_for(cfg, digits).train()
    optimizer = make_optimizer(list(model.parameters()), tc)
    stats = epoch.train_epoch(model, digits, plan_stages(tc)[0], tc, optimizer, make_scheduler(optimizer, "constant", 10),
                              torch.Generator().manual_seed(0), torch.device("cpu"), epoch=1, first_step=0,
                              total_steps=10)
    assert stats.images == TRAIN_SUBSET and stats.images_per_s == pytest.approx(TRAIN_SUBSET / stats.seconds)


# ------------------------------------------------------------------------------------------------ device rules
def test_channels_last_only_for_convolutions_on_cuda(digits):
    model = build_model_for(_cfg(), digits)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert input_memory_format(model, torch.device("cuda")) is torch.channels_last
    assert input_memory_format(mlp, torch.device("cuda")) is torch.contiguous_format
    assert input_memory_format(model, torch.device("cpu")) is torch.contiguous_format
    prepare_for_device(model, torch.device("cpu"))
    assert all(p.is_contiguous() for p in model.parameters())


def test_a_torch_compile_failure_is_one_config_error_line(digits):
    """A real dynamo failure (a compiler backend that raises, as inductor does without a C++ compiler)."""

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    model = torch.compile(build_model_for(_cfg(), digits), backend=broken_backend)
    with pytest.raises(ConfigError, match=r"^training\.compile: torch\.compile failed .*no C\+\+ compiler.*"
                                          r"set training\.compile: false$"):
        with compile_errors(True):
            model(torch.as_tensor(digits.train.x[:4]))


def test_unsupported_autocast_precision_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^training\.precision: bf16 needs autocast"):
        training_precision("bf16", torch.device("meta"))
    assert training_precision("fp32", torch.device("cpu")).dtype is None


# ------------------------------------------------------------------------------------------------ study trials
def test_a_trial_runs_on_what_ray_gave_it():
    from eeopt.study.worker import pin_to_trial_resources

    auto = _cfg(device="auto")
    assert pin_to_trial_resources(auto, {"CPU": 2.0, "GPU": 0.25}).training.device == "cuda"
    assert pin_to_trial_resources(auto, {"CPU": 1.0}).training.device == "cpu"
    assert pin_to_trial_resources(_cfg(device="cpu"), {"CPU": 1, "GPU": 1}) == _cfg(device="cpu")
    assert pin_to_trial_resources(auto, {}) == auto  # outside Tune: as configured
    from eeopt.training.checkpoint import config_fingerprint

    assert config_fingerprint(pin_to_trial_resources(auto, {"GPU": 1})) == config_fingerprint(auto)
