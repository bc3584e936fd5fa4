"""eeopt.models.msdnet: the authors' parameter counts and per-exit cost shares, training (joint, frozen), early-exit
inference over multi-scale states, cascade and failure heads, `eeopt train` on Fashion-MNIST, and the paper study
file's model. Small random-initialised networks on CPU; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from eeopt.cli import main
from eeopt.config import DataConfig, ModelConfig, TrainConfig, load_config
from eeopt.errors import ConfigError
from eeopt.inference import EarlyExitPredictor
from eeopt.models import MultiExitModel, build_model, create_backbone, head_input_shapes
from eeopt.models.msdnet import CIFAR_ANYTIME, CIFAR_BUDGET, IMAGENET, LayerPlan, MSDNet, plan_layers
from eeopt.core.outputs import ExitOutputs
from eeopt.core.policy_file import PolicyFile
from eeopt.core.scores import compute_score
from eeopt.training import collect_exit_outputs, exit_loss, train
from test_inference import quantile_thresholds

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "paper-msdnet-cifar100.yaml"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: A 3-scale MSDNet small enough for CPU tests: 3 blocks of one layer each (scales out: 3, 2, 1), width 4. As in
#: the authors' settings, the last layer keeps only the coarsest scale, so every parameter is used.
TINY = dict(blocks=3, step=1, base=1, growth_rate=4)
#: The ImageNet layout (4 scales, 7x7/2 + max-pool stem, classifiers that keep their input's channels), tiny: 4
#: blocks of one layer (scales out: 4, 3, 2, 1).
TINY_IMAGENET = dict(TINY, blocks=4, growth_factor=[1, 2, 4, 4], bn_factor=[1, 2, 4, 4], stem="imagenet")

# The authors' settings, their parameter counts and their per-exit share of multiply-adds (exit k / last exit).
# Reference numbers from the authors' own code: kalviny/MSDNet-PyTorch models/msdnet.py (commit 9a6386e) and
# op_counter.py (commit 6c08a22), reconstructed in a scratch folder outside the repository and run with
# `python run_ref.py` (MSDNet(args) with these settings, `measure_model(model, 32, 32)` / `(model, 224, 224)`).
# Their counter also counts ReLUs, pooling and linear biases, which torch's FlopCounterMode does not (their conv
# and linear-weight multiply-adds alone are exactly eeopt's FLOPs / 2): eeopt's early-exit shares come out 0.03-0.6 %
# lower, the earliest exits most (ReLUs weigh more in the cheap early blocks).
AUTHORS = {
    "cifar100_anytime": dict(
        arch=CIFAR_ANYTIME, width=16, size=32, classes=100, params=3_067_960,
        shares=[0.19938, 0.33588, 0.48851, 0.61012, 0.75503, 0.88178, 1.0],
    ),
    "cifar100_budget": dict(
        arch=CIFAR_BUDGET, width=16, size=32, classes=100, params=2_078_924,
        shares=[0.11730, 0.24538, 0.47087, 0.71331, 1.0],
    ),
    "imagenet": dict(
        arch=IMAGENET, width=32, size=224, classes=1000, params=23_958_440,
        shares=[0.24983, 0.50382, 0.74100, 0.92205, 1.0],
    ),
}


def _tiny_model(size: int = 16, in_channels: int = 3, classes: int = 5, **model) -> MultiExitModel:
    kwargs = model.pop("backbone_kwargs", TINY)
    cfg = ModelConfig.model_validate({"backbone": "msdnet", "width": 4, "backbone_kwargs": kwargs, **model})
    return build_model(cfg, classes, in_channels, size)


# ------------------------------------------------------------------------------------------------ the authors' numbers
@pytest.mark.parametrize("setting", sorted(AUTHORS))
def test_parameter_counts_and_cost_shares_equal_the_authors(setting):
    """Backbone + MSDNet classifiers (no failure heads) have exactly the authors' parameters; the cumulative FLOPs
    per exit over the last's are their multiply-add shares within 1 %."""
    ref = AUTHORS[setting]
    backbone = create_backbone("msdnet", 3, ref["size"], ref["width"], **ref["arch"])
    model = MultiExitModel(backbone, range(len(backbone.blocks)), "msdnet", False, False, ref["classes"])
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    from eeopt.models import count_exit_costs

    costs = count_exit_costs(model, (3, ref["size"], ref["size"]))
    np.testing.assert_allclose(costs / costs[-1], ref["shares"], rtol=0.01)
    assert np.all(np.diff(costs) > 0)


@pytest.mark.parametrize("change, params", [
    # the authors' code (as above) with the anytime model changed so: `prune` min, no bottleneck, no transitions,
    # lin_grow over 6 blocks, 4 scales (at 64x64: their classifier needs an 8x8 coarsest map)
    ({"prune": "min"}, 2_819_862),
    ({"bottleneck": False}, 3_214_264),
    ({"reduction": 0.0}, 4_092_868),
    ({"step_mode": "lin_grow", "step": 1, "base": 1, "blocks": 6}, 2_852_392),
    ({"growth_factor": [1, 2, 4, 4], "bn_factor": [1, 2, 4, 4], "growth_rate": 8, "stem": "small"}, 3_915_612),
])
def test_other_settings_have_the_authors_parameter_counts(change, params):
    size = 64 if len(change.get("growth_factor", [])) == 4 else 32
    backbone = create_backbone("msdnet", 3, size, 16, **{**CIFAR_ANYTIME, **change})
    model = MultiExitModel(backbone, range(len(backbone.blocks)), "msdnet", False, False, 100)
    assert sum(p.numel() for p in model.parameters()) == params


def test_layer_plan_of_the_anytime_model():
    """The authors' `max` schedule on 4 + 6 * 2 = 16 layers: all 3 scales, then one dropped at layers 7 and 13,
    each followed by a transition (the scales their code gives this model's layers)."""
    plan = [p for block in plan_layers([4, 2, 2, 2, 2, 2, 2], 3, "max", 0.5) for p in block]
    assert len(plan) == 16
    dropped = [i + 1 for i, p in enumerate(plan) if p.in_scales > p.out_scales]
    assert dropped == [7, 13] and [i + 1 for i, p in enumerate(plan) if p.transition] == [7, 13]
    assert plan[0] == LayerPlan(3, 3, False) and plan[-1] == LayerPlan(1, 1, False)
    # `min` keeps every scale until the coarsest could no longer be reached; transitions at L/3 and 2L/3
    plan = [p for block in plan_layers([4, 2, 2, 2, 2, 2, 2], 3, "min", 0.5) for p in block]
    assert [p.out_scales for p in plan][-3:] == [3, 2, 1] and [p.transition for p in plan].count(True) == 2
    assert not any(p.transition for block in plan_layers([4, 2], 3, "max", 0) for p in block)  # reduction 0


def test_a_layer_keeps_its_input_maps_and_adds_growth_channels_at_each_scale():
    """Dense connectivity: each output scale is its input map followed by growth_rate * growth_factor[s] new
    channels at the same resolution; a layer that drops the finest scale returns the coarser ones only."""
    backbone = create_backbone("msdnet", 3, 16, 4, **TINY).eval()
    with torch.no_grad():
        maps = backbone.stem(torch.randn(2, 3, 16, 16))
        assert [tuple(m.shape[1:]) for m in maps] == [(4, 16, 16), (8, 8, 8), (16, 4, 4)]
        first = backbone.blocks[0][0](maps)  # 3 scales in, 3 out
        second = backbone.blocks[1][0](first)  # 3 in, 2 out (then a transition)
    for inp, out, growth in zip(maps, first, (4, 8, 16)):
        assert out.shape == (2, inp.shape[1] + growth, *inp.shape[2:]) and torch.equal(out[:, :inp.shape[1]], inp)
    assert len(second) == 2
    for inp, out, growth in zip(first[1:], second, (8, 16)):
        assert out.shape == (2, inp.shape[1] + growth, *inp.shape[2:]) and torch.equal(out[:, :inp.shape[1]], inp)


# ------------------------------------------------------------------------------------------------ building, training
@pytest.mark.parametrize("variant, size", [("cifar", 16), ("imagenet", 64)])
def test_variants_build_train_one_step_and_cost_more_at_every_exit(variant, size):
    torch.manual_seed(0)
    kwargs = TINY if variant == "cifar" else TINY_IMAGENET
    model = _tiny_model(size, backbone_kwargs=kwargs)
    k_all = len(model.backbone.blocks)
    assert model.num_exits == k_all and model.head_type == "msdnet"  # one MSDNet classifier per block by default
    assert np.all(np.diff(model.costs) > 0)
    scales = 3 if variant == "cifar" else 4
    first = model.backbone.stem(torch.zeros(1, 3, size, size))
    side = size if variant == "cifar" else size // 4
    assert [m.shape[-1] for m in first] == [side >> s for s in range(scales)]
    hidden = model.heads[0].convs[0].out_channels  # CIFAR classifier: 128; ImageNet: the coarsest scale's channels
    assert hidden == (128 if variant == "cifar" else model.backbone.block_channels[0])

    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(x)
    assert out.logits.shape == (k_all, 4, 5) and out.failure is None
    exit_loss(out.logits, y, torch.ones(k_all)).backward()
    opt.step()
    unchanged = {n for n, p in model.named_parameters() if torch.equal(before[n], p)}
    # every parameter trains; the ImageNet stem convolution's bias only by rounding (BatchNorm follows it)
    assert unchanged <= {"backbone.stem.scales.0.0.bias"}, unchanged


def test_fashion_mnist_shapes_exits_and_bad_settings():
    """28x28 one-channel inputs run at 28/14/7; exits by block number and by FLOP share; bad kwargs name the field."""
    model = _tiny_model(28, in_channels=1, exits=[1, 2])
    assert head_input_shapes(model.backbone, (1, 28, 28))[-1][1:] == (7, 7)
    assert model.exit_blocks == [0, 1, 2]
    assert _tiny_model(28, in_channels=1, exits=[2]).exit_blocks == [1, 2]
    assert _tiny_model(28, in_channels=1, exits={"flops": [0.3]}).num_exits == 2
    assert ModelConfig(backbone="msdnet").head == "msdnet"  # the family's own classifier by default
    assert isinstance(create_backbone("msdnet", 3, 32, 16), MSDNet)  # defaults: the CIFAR anytime model
    bad = [
        ({"depth": 3}, "model.backbone_kwargs: unknown key 'depth' for msdnet"),
        ({"growth_factor": [1, 2], "bn_factor": [1, 2, 4]}, "model.backbone_kwargs: bn_factor needs one entry"),
        ({"growth_rate": 3, "growth_factor": [1, 1], "bn_factor": [1, 1]},
         "model.backbone_kwargs: growth_rate * growth_factor must be even"),
        ({"prune": "mid"}, "model.backbone_kwargs: prune must be max or min, got 'mid'"),
        ({"blocks": 0}, "model.backbone_kwargs: blocks must be an integer >= 1, got 0"),
        ({"reduction": 1.5}, "model.backbone_kwargs: reduction must be a number in [0, 1]"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("*", r"\*")):
            create_backbone("msdnet", 3, 32, 16, **kwargs)
    with pytest.raises(ConfigError, match=r"model.exits: block 4 does not exist \(msdnet has 3 blocks"):
        _tiny_model(28, in_channels=1, exits=[4])


# ------------------------------------------------------------------------------------------------ trained on digits
@pytest.fixture(scope="module")
def digits():
    from eeopt.data import load_dataset

    return load_dataset(DataConfig(name="digits"), seed=0)


def _cfg(**training) -> TrainConfig:
    model = training.pop("model", {})
    return TrainConfig.model_validate({
        "seed": 0,
        "data": {"name": "digits"},
        "model": {"backbone": "msdnet", "width": 4, "backbone_kwargs": TINY, **model},
        "training": {"epochs": 1, "batch_size": 64, "lr": 5e-3, "device": "cpu", **training},
    })


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A tiny MSDNet with cascade and failure heads, 2 epochs on digits (8x8: scales 8/4/2), and its test exit
    outputs at batch 256."""
    from eeopt.inference import load_model_dir

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("msdnet")
    cfg = _cfg(epochs=2, failure_loss="bce", model={"cascade": True, "failure_head": True})
    result = train(cfg, folder, progress=False, dataset=digits)
    model, _ = load_model_dir(folder)
    outputs = collect_exit_outputs(model, digits.test, 256, model.costs, source="test")
    return {"folder": folder, "model": model, "x": digits.test.x, "outputs": outputs, "val": result.val}


def test_cascade_and_failure_heads_forward_shapes(trained):
    model = trained["model"]
    assert model.cascade and model.has_failure_heads and model.num_exits == 3
    assert [h.takes_previous for h in model.heads] == [False, True, False]
    out = model(torch.as_tensor(trained["x"][:7]))
    assert out.logits.shape == (3, 7, 10) and out.failure.shape == (3, 7)
    assert trained["outputs"].accuracy[-1] > 0.3  # it learned something in 2 epochs (10 classes)


@pytest.mark.parametrize("score, calibrator", [("msp", "temperature"), ("learned", "none")])
def test_predictor_equals_the_policy_on_exit_outputs_with_compaction(trained, score, calibrator):
    """`EarlyExitPredictor` (batch compaction of the list of scale maps) takes the exits and predictions that
    `PolicyFile.decide` takes on the exit outputs of the same inputs, at batch 1 and 64; each block and head sees
    only the samples still running."""
    from eeopt.core.calibration import create_calibrator

    outputs, model = trained["outputs"], trained["model"]
    cal = create_calibrator(calibrator).fit(trained["val"]) if calibrator != "none" else None
    scores = compute_score(score, cal.apply(outputs) if cal is not None else outputs)
    policy = PolicyFile(score=score, thresholds=quantile_thresholds(scores), costs=tuple(outputs.costs), cost_unit="flops",
                        budget=None, calibrator=calibrator, calibrator_state=cal.state_dict() if cal else None)
    labels, exits, ref_scores = policy.decide(outputs)
    assert np.all(np.bincount(exits, minlength=3) > 0)
    seen = np.zeros(3, dtype=np.int64)
    hooks = [model.backbone.blocks[b].register_forward_hook(
        lambda m, i, o, k=k: seen.__setitem__(k, seen[k] + o[0].shape[0])) for k, b in enumerate(model.exit_blocks)]
    try:
        for batch_size in (1, 64):
            seen[:] = 0
            got = EarlyExitPredictor(model, policy).predict(trained["x"], batch_size=batch_size)
            # float32 convolutions may differ in the last bits between batch compositions: a sample may part only
            # where its score is within 1e-4 of the threshold
            differ = np.flatnonzero((got.exits != exits) | (got.labels != labels))
            for n in differ:
                parted = min(got.exits[n], exits[n])
                assert abs(scores[parted, n] - policy.thresholds[parted]) <= 1e-4, n
            assert differ.size <= 0.005 * outputs.num_samples
            same = got.exits == exits
            np.testing.assert_allclose(got.scores[same], ref_scores[same], rtol=0, atol=1e-4)
            np.testing.assert_array_equal(seen, [(got.exits >= k).sum() for k in range(3)])
    finally:
        for h in hooks:
            h.remove()


def test_frozen_training_leaves_the_backbone_bit_identical(trained, digits):
    """Frozen mode from the trained model's checkpoint: every backbone parameter and buffer (BatchNorm statistics
    included) and the final head stay bit-identical; the early heads train."""
    cfg = _cfg(mode="frozen", epochs=1, lr=1e-2, backbone_checkpoint=str(trained["folder"] / "model.pt"),
               model={"cascade": True, "failure_head": True})
    result = train(cfg, progress=False, dataset=digits)
    before, after = trained["model"].state_dict(), result.model.state_dict()
    frozen = [n for n in before if n.startswith(("backbone.", "heads.2."))]
    assert any(".running_mean" in n for n in frozen) and any("stem." in n for n in frozen)
    assert [n for n in frozen if not torch.equal(before[n], after[n])] == []
    assert not torch.equal(before["heads.0.fc.weight"], after["heads.0.fc.weight"])


# ------------------------------------------------------------------------------------------------ eeopt train, study
@pytest.mark.slow  # `eeopt train` on Fashion-MNIST files
@pytest.mark.skipif(not (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists()
                    and not (FASHION_ROOT / "train-images-idx3-ubyte").exists(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_eeopt_train_on_fashion_mnist_then_exits_evaluate(tmp_path, capsys):
    config = tmp_path / "msdnet.yaml"
    config.write_text(yaml.safe_dump({
        "seed": 0,
        "data": {"name": "fashion-mnist", "root": str(FASHION_ROOT), "train_subset": 256, "val_subset": 128,
                 "test_subset": 128},
        "model": {"backbone": "msdnet", "width": 4, "backbone_kwargs": TINY},
        "training": {"epochs": 1, "batch_size": 64, "device": "cpu"},
        "policy": {"trials": 20},
    }))
    out = tmp_path / "out"
    assert main(["train", str(config), "--output-dir", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["exits", "evaluate", str(out / "test.npz"), "--fit-on", str(out / "val.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    test = ExitOutputs.load(out / "test.npz")
    assert test.num_exits == 3 and test.num_samples == 128 and np.all(np.diff(test.costs) > 0)
    assert {f"exit{k}/accuracy" for k in (1, 2, 3)} <= set(report["metrics"])


def test_paper_study_file_loads_and_its_model_trains_a_step():
    """The study's fixed model is the authors' CIFAR-100 anytime MSDNet (their parameter count plus the failure
    heads); one SGD step on fake CIFAR-shaped data changes it. No study is run."""
    cfg = load_config(STUDY, ["data.root=/nonexistent", "training.batch_size=2"], study=True)
    assert set(cfg.calibration.compare) == {"none", "temperature", "vector", "histogram", "isotonic"}
    assert cfg.model.backbone == "msdnet" and cfg.training.epochs == 300
    assert cfg.train_config({"training.failure_loss": "tcp", "policy.score": "doctor"}).training.failure_loss == "tcp"
    model = build_model(cfg.model, 100, 3, 32)
    heads = sum(p.numel() for p in model.failure_heads.parameters())
    assert sum(p.numel() for p in model.parameters()) - heads == 3_067_960 and model.num_exits == 7
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([3, 97])
    opt = torch.optim.SGD(model.parameters(), lr=cfg.training.lr, momentum=cfg.training.momentum)
    before = model.heads[0].fc.weight.detach().clone()
    out = model(x)
    assert out.logits.shape == (7, 2, 100) and out.failure.shape == (7, 2)
    loss = exit_loss(out.logits, y, torch.ones(7))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.heads[0].fc.weight)
