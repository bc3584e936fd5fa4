"""Backbones (walked through the registry), exit heads, MultiExitModel, exit placement and FLOP counting."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import eeopt.models.costs as costs_module
from eeopt.config import FlopShares, ModelConfig
from eeopt.errors import ConfigError
from eeopt.models import (
    ExitForward,
    MultiExitModel,
    build_model,
    count_exit_costs,
    count_flops,
    create_backbone,
    list_backbones,
    make_exit_head,
)

torch.set_num_threads(1)

SHAPES = [(1, (28, 28)), (3, (32, 32))]


def _model(backbone="tinyresnet", classes=10, in_ch=1, size=(28, 28), **cfg) -> MultiExitModel:
    torch.manual_seed(0)
    cfg.setdefault("width", 8)
    return build_model(ModelConfig(backbone=backbone, **cfg), classes, in_ch, size)


def _counted(fn, *args) -> int:
    """An independent count: FlopCounterMode around the call itself."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def _conv(cin: int, cout: int, k: int, hw: int) -> int:
    """Textbook FLOPs of a convolution: 2 * MACs = 2 * Cin * Cout * k * k * H_out * W_out (square maps)."""
    return 2 * cin * cout * k * k * hw * hw


# --------------------------------------------------------------------------------------------------- registry
def test_registry_lists_the_documented_variants():
    expected = {"tinyresnet", "resnet20", "resnet32", "resnet56", "resnet110", "resnet18", "resnet34", "resnet50"}
    assert expected <= set(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.parametrize("in_ch,size", SHAPES)
def test_every_backbone_builds_runs_and_trains(name, in_ch, size):
    model = _model(name, classes=7, in_ch=in_ch, size=size, failure_head=True)
    backbone = model.backbone
    assert len(backbone.block_channels) == len(backbone.blocks) == model.num_exits
    assert backbone.num_features == backbone.block_channels[-1]
    x = torch.randn(2, in_ch, *size)
    features = backbone(x)
    assert features.shape[:2] == (2, backbone.num_features)
    model.train()
    out = model(x)
    assert isinstance(out, ExitForward)
    assert out.logits.shape == (model.num_exits, 2, 7)
    assert out.failure.shape == (model.num_exits, 2)
    assert torch.isfinite(out.logits).all()
    (out.logits.square().mean() + out.failure.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert model.costs.shape == (model.num_exits,)
    assert np.all(np.diff(model.costs) > 0)


@pytest.mark.parametrize(
    "name,width,blocks,channels",
    [
        ("tinyresnet", 16, 5, [16, 32, 32, 64, 64]),
        ("resnet20", 16, 9, [16] * 3 + [32] * 3 + [64] * 3),
        ("resnet110", 16, 54, [16] * 18 + [32] * 18 + [64] * 18),
        ("resnet18", 64, 8, [64, 64, 128, 128, 256, 256, 512, 512]),
        ("resnet50", 16, 16, [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3),
    ],
)
def test_variant_architectures(name, width, blocks, channels):
    backbone = create_backbone(name, 3, (32, 32), width)
    assert len(backbone.blocks) == blocks
    assert backbone.block_channels == channels


def test_tinyresnet_strides_and_spatial_sizes():
    backbone = create_backbone("tinyresnet", 1, (28, 28), 16).eval()
    h = backbone.stem(torch.zeros(1, 1, 28, 28))
    sizes = []
    for block in backbone.blocks:
        h = block(h)
        sizes.append(h.shape[-1])
    assert sizes == [28, 14, 14, 7, 7]


@pytest.mark.parametrize(
    "name,reference",
    # torchvision's parameter counts (11,689,512 and 25,557,032) minus their 1000-class fc layers
    [("resnet18", 11_689_512 - (512 * 1000 + 1000)), ("resnet50", 25_557_032 - (2048 * 1000 + 1000))],
)
def test_width_64_imagenet_variants_match_the_standard_networks(name, reference):
    backbone = create_backbone(name, 3, (224, 224), 64)  # 224 px selects the 7x7 stride-2 stem with max-pool
    assert sum(p.numel() for p in backbone.parameters()) == reference


def test_create_backbone_errors_and_kwargs():
    with pytest.raises(ConfigError, match=r"model\.backbone: unknown backbone 'resnet7'.*resnet20.*tinyresnet"):
        create_backbone("resnet7", 3, (32, 32), 16)
    with pytest.raises(ConfigError, match=r"model\.backbone_kwargs: unknown key 'dpeths'"):
        create_backbone("resnet20", 3, (32, 32), 16, dpeths=(1, 1, 1))
    with pytest.raises(ConfigError, match="one entry per stage"):
        create_backbone("resnet20", 3, (32, 32), 16, depths=(1, 1))
    # caller kwargs win over the variant's architecture
    backbone = create_backbone("resnet20", 3, (32, 32), 16, depths=(1, 2, 1), channels=(4, 8, 12))
    assert backbone.block_channels == [4, 8, 8, 12]
    bottleneck = create_backbone("tinyresnet", 1, (28, 28), 8, block="bottleneck")
    assert bottleneck.block_channels == [32, 64, 64, 128, 128]


def test_build_model_reports_bad_exit_blocks():
    with pytest.raises(ConfigError, match=r"model\.exits: block 6 .* 5 blocks"):
        _model(exits=[2, 6])
    with pytest.raises(ConfigError, match=r"model\.backbone: unknown backbone"):
        _model("nope")


# --------------------------------------------------------------------------------------------------- exit placement
def test_every_block_and_explicit_lists():
    assert _model(exits="every_block").exit_blocks == [0, 1, 2, 3, 4]
    explicit = _model(exits=[2, 4])
    assert explicit.exit_blocks == [1, 3, 4] and explicit.num_exits == 3
    with_last = _model(exits=[2, 5])  # the last block is not duplicated
    assert with_last.exit_blocks == [1, 4] and with_last.num_exits == 2
    assert _model(exits=[5]).exit_blocks == [4]
    assert len(with_last(torch.randn(1, 1, 28, 28)).logits) == 2


@pytest.mark.parametrize("shares", [[0.1, 0.3, 0.5, 0.7], [0.5], [0.2, 0.21, 0.22], [0.9, 0.99]])
def test_flop_shares_choose_the_nearest_block(shares):
    model = _model("resnet20", in_ch=3, size=(32, 32), exits={"flops": shares})
    backbone = copy.deepcopy(model.backbone).eval()
    x = torch.zeros(1, 3, 32, 32)
    # brute force: count the backbone truncated after each block from scratch
    cumulative = np.array(
        [_counted(nn.Sequential(backbone.stem, *backbone.blocks[: i + 1]), x) for i in range(len(backbone.blocks))],
        dtype=float,
    )
    share = cumulative / cumulative[-1]
    expected = set()
    for s in shares:
        distances = np.abs(share - s)
        expected.add(int(np.flatnonzero(distances == distances.min())[0]))
    expected.add(len(backbone.blocks) - 1)
    assert model.exit_blocks == sorted(expected)


def test_flop_shares_model_config_object_is_accepted():
    model = _model(exits=FlopShares(flops=[0.5]))
    assert model.exit_blocks[-1] == 4 and len(model.exit_blocks) == 2


# --------------------------------------------------------------------------------------------------- costs
def test_count_flops_matches_the_textbook_formula():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, torch.zeros(1, 3, 10, 10)) == 2 * (8 * 10 * 10) * (3 * 3 * 3)
    strided = nn.Conv2d(4, 6, 5, stride=2, padding=2, bias=False)
    assert count_flops(strided, torch.zeros(1, 4, 16, 16)) == _conv(4, 6, 5, 8)
    linear = nn.Linear(20, 7)
    assert count_flops(linear, torch.zeros(1, 20)) == 2 * 20 * 7
    assert count_flops(lambda a: a @ a.T, torch.zeros(5, 3)) == 2 * 5 * 5 * 3
    head = make_exit_head("linear", 32, 10, (7, 7))
    assert count_flops(head, torch.zeros(1, 32, 7, 7)) == 2 * 32 * 10


def test_tinyresnet_backbone_flops_by_hand():
    model = _model(width=8)  # 1x28x28, channels 8-16-16-32-32, strides 1-2-1-2-1, linear heads, 10 classes
    by_hand = (
        _conv(1, 8, 3, 28)  # stem
        + 2 * _conv(8, 8, 3, 28)  # block 1
        + _conv(8, 16, 3, 14) + _conv(16, 16, 3, 14) + _conv(8, 16, 1, 14)  # block 2 with projection shortcut
        + 2 * _conv(16, 16, 3, 14)  # block 3
        + _conv(16, 32, 3, 7) + _conv(32, 32, 3, 7) + _conv(16, 32, 1, 7)  # block 4
        + 2 * _conv(32, 32, 3, 7)  # block 5
        + 2 * 32 * 10  # final linear head
    )
    assert model.backbone_flops == by_hand
    early_heads = sum(2 * c * 10 for c in (8, 16, 16, 32))
    assert model.costs[-1] == by_hand + early_heads
    assert model.costs[0] == _conv(1, 8, 3, 28) + 2 * _conv(8, 8, 3, 28) + 2 * 8 * 10


@pytest.mark.parametrize(
    "settings",
    [
        dict(head="linear"),
        dict(head="sdn", cascade=True, failure_head=True),
        dict(head="conv", failure_head=True, exits=[2, 3]),
        dict(head="sdn", backbone="resnet20", exits={"flops": [0.3, 0.6]}),
    ],
)
def test_costs_are_what_inference_computes(settings):
    settings = dict(settings)
    backbone = settings.pop("backbone", "tinyresnet")
    model = _model(backbone, **settings).eval()
    x = torch.randn(1, 1, 28, 28)
    costs = model.costs
    assert costs.dtype == np.float64 and costs.shape == (model.num_exits,)
    assert np.all(np.diff(costs) > 0)
    assert costs[-1] == _counted(model, x)
    for k in range(model.num_exits):
        assert costs[k] == _counted(model.forward_until, x, k), k
    backbone_alone = _counted(lambda t: model.heads[-1](model.backbone(t)), x)
    assert model.backbone_flops == backbone_alone
    assert np.array_equal(count_exit_costs(model, (1, 28, 28)), costs)


def _state(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def _trained_a_little(model: nn.Module) -> nn.Module:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        out = model(torch.randn(4, 1, 28, 28))
        out.logits.logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    return model


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_counting_leaves_the_model_bit_identical(mode):
    model = _trained_a_little(_model(head="conv", failure_head=True))
    if mode == "eval":
        model.eval()
    elif mode == "mixed":
        model.heads.eval()
    before, flags = _state(model)
    count_exit_costs(model, (1, 28, 28))
    count_flops(model, torch.randn(1, 1, 28, 28))
    after, flags_after = _state(model)
    assert flags_after == flags
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_state_check_catches_counting_in_train_mode(monkeypatch):
    # Control for the test above: counting the original in train mode (the NOTES.md bug) does move BN statistics,
    # and count_exit_costs notices.
    model = _trained_a_little(_model())
    before, _ = _state(model)
    _counted(model, torch.randn(2, 1, 28, 28))
    after, _ = _state(model)
    assert not torch.equal(before["backbone.blocks.0.bn1.running_mean"], after["backbone.blocks.0.bn1.running_mean"])
    monkeypatch.setattr(costs_module, "_eval_copy", lambda m: m)
    with pytest.raises(RuntimeError, match="changed the model's buffers"):
        count_exit_costs(model, (1, 28, 28))


# --------------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("failure_head", [False, True])
@pytest.mark.parametrize("cascade", [False, True])
def test_parameter_groups_partition_all_parameters(failure_head, cascade):
    model = _model(head="sdn", cascade=cascade, failure_head=failure_head)
    groups = model.parameter_groups()
    assert set(groups) == {"backbone", "final_head", "early_heads", "failure_heads"}
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["final_head"]} == {id(p) for p in model.heads[-1].parameters()}
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in model.backbone.parameters()}
    assert bool(groups["failure_heads"]) == failure_head
    assert groups["early_heads"]


@pytest.mark.parametrize("head", ["linear", "sdn", "conv"])
def test_cascade_heads_take_the_previous_logits(head):
    x = torch.randn(3, 1, 28, 28)
    for cascade in (False, True):
        model = _model(head=head, cascade=cascade).eval()
        with torch.no_grad():
            before = model(x).logits
            model.heads[0].fc.weight.add_(1.0)
            after = model(x).logits
        assert not torch.allclose(before[0], after[0])
        # exit 1 and later early exits change only through the cascade; the final head never takes logits
        assert torch.allclose(before[1], after[1]) != cascade
        assert torch.allclose(before[-1], after[-1])
        if head != "sdn":
            channels = model.backbone.block_channels[model.exit_blocks[1]]
            assert model.heads[1].fc.in_features == channels + (10 if cascade else 0)


def test_failure_heads_present_or_absent():
    x = torch.randn(2, 1, 28, 28)
    plain = _model()
    assert plain(x).failure is None and len(plain.failure_heads) == 0
    assert plain.forward_until(x, 1)[1] is None
    with_failure = _model(failure_head=True)
    out = with_failure(x)
    assert out.failure.shape == (5, 2)
    assert len(with_failure.failure_heads) == 5
    assert with_failure.costs[-1] > plain.costs[-1]


@pytest.mark.parametrize("settings", [dict(head="linear"), dict(head="sdn", cascade=True, failure_head=True)])
def test_forward_until_equals_forward(settings):
    model = _model(**settings).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        full = model(x)
        for k in range(model.num_exits):
            logits, failure = model.forward_until(x, k)
            torch.testing.assert_close(logits, full.logits[k], rtol=0, atol=0)
            if full.failure is None:
                assert failure is None
            else:
                torch.testing.assert_close(failure, full.failure[k], rtol=0, atol=0)
        torch.testing.assert_close(model.forward_until(x, -1)[0], full.logits[-1], rtol=0, atol=0)
    with pytest.raises(IndexError):
        model.forward_until(x, model.num_exits)


def test_multi_exit_model_direct_construction():
    backbone = create_backbone("tinyresnet", 1, (28, 28), 8)
    model = MultiExitModel(backbone, [0, 2], "linear", False, False, 4)
    assert model.exit_blocks == [0, 2, 4] and model.num_exits == 3
    assert model.costs is None
    assert model(torch.randn(2, 1, 28, 28)).logits.shape == (3, 2, 4)
    with pytest.raises(ValueError):
        MultiExitModel(backbone, [2, 1], "linear", False, False, 4)
    with pytest.raises(ValueError):
        MultiExitModel(backbone, [7], "linear", False, False, 4)
