"""timm / torchvision backbones (eeopt.models.external): the split reads the library's own features, pretrained
weights load from a state dict or the library's cache (never the network), frozen training keeps them bit-identical,
the early-exit predictor agrees with the policy, and a ViT-S's costs match timm's model.

Tests marked `extras` need timm and torchvision and run in .venv-extras (`make test-extras`); elsewhere they skip.
Every network here is randomly initialised; nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eeopt.cli import main
from eeopt.config import ModelConfig, TrainConfig
from eeopt.config.loading import load_config
from eeopt.errors import ConfigError
from eeopt.models import build_model, count_flops, create_backbone, load_pretrained
from eeopt.training.stages import plan_stages

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"

try:
    import timm
    import torchvision
except ImportError:  # the default .venv: its CPU torch has no matching torchvision (see NOTES.md)
    timm = torchvision = None

needs_libraries = pytest.mark.skipif(timm is None or torchvision is None, reason="needs timm: runs in .venv-extras")


# --------------------------------------------------------------------------------------------------- no library
def test_a_missing_library_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` fails, as where it is not installed
    out = tmp_path / "out"
    code = main(["train", str(QUICKSTART), "--output-dir", str(out),
                 "--set", "model.backbone=timm:vit_tiny_patch16_224"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "model.backbone: timm:vit_tiny_patch16_224 needs timm" in err and 'pip install "eeopt[timm]"' in err
    assert not out.exists()


def test_pretrained_plans_a_heads_stage_that_trains_the_final_head_too():
    def tc(**training):
        return TrainConfig.model_validate({"model": {"pretrained": "w.pt"}, "training": training}).training

    assert tc().mode == "frozen"  # a pretrained backbone defaults to frozen, no backbone epochs
    [heads] = plan_stages(tc(epochs=2), pretrained=True)
    assert (heads.name, heads.epochs, heads.trains) == ("heads", 2, ("final_head", "early_heads", "failure_heads"))
    # with backbone epochs (fine-tuning first) the backbone stage trains the final head, as without weights
    stages = plan_stages(tc(epochs=2, backbone_epochs=1), pretrained=True)
    assert [(s.name, s.trains) for s in stages] == [("backbone", ("backbone", "final_head")),
                                                   ("heads", ("early_heads", "failure_heads"))]


# --------------------------------------------------------------------------------------------------- the split
def _library_net(name: str, size: int, **kwargs):
    """The original library network `name` ("timm:x" / "torchvision:x") for images of `size`, eval mode, with
    randomised BatchNorm statistics (so that loading buffers matters)."""
    prefix, model = name.split(":")
    if prefix == "timm":
        if timm.models.model_entrypoint(model).__module__.endswith(("vision_transformer", "deit")):
            kwargs.setdefault("img_size", size)
        net = timm.create_model(model, **kwargs)
    else:
        net = torchvision.models.get_model(model, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return net.eval()


def _features(net, name: str, x: torch.Tensor) -> torch.Tensor:
    """The library's own features: timm's forward_features, torchvision's features (ResNet: up to layer4)."""
    if name.startswith("timm:"):
        return net.forward_features(x)
    if hasattr(net, "features"):
        return net.features(x)
    return torch.nn.Sequential(*list(net.children())[:-2])(x)


SPLITS = [  # (name, image size, backbone_kwargs): small variants of each family
    ("timm:vit_tiny_patch16_224", 32, {"depth": 3}),
    ("timm:deit_tiny_distilled_patch16_224", 32, {"depth": 2}),
    ("timm:vit_tiny_patch16_224", 32, {"depth": 2, "global_pool": "avg", "class_token": False}),
    ("timm:resnet18", 64, {}),
    ("timm:convnext_atto", 64, {}),
    ("timm:efficientnet_b0", 64, {}),
    ("torchvision:resnet18", 64, {}),
    ("torchvision:efficientnet_b0", 64, {}),
]


@pytest.mark.extras
@needs_libraries
@pytest.mark.parametrize("name,size,kwargs", SPLITS,
                         ids=[":".join([n, *(f"{k}={v}" for k, v in kw.items())]) for n, _, kw in SPLITS])
def test_last_exit_reads_the_library_features_from_a_saved_state_dict(tmp_path, name, size, kwargs):
    net = _library_net(name, size, **kwargs)
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    backbone = create_backbone(name, 3, (size, size), 16, **kwargs)
    assert load_pretrained(backbone, str(path)) == path
    backbone.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        state = backbone.stem(x)
        for block in backbone.blocks:
            state = block(state)
        reference = _features(net, name, x)
        if state.ndim == 3:  # tokens: the final norm belongs to the backbone; heads read the pooled token
            assert torch.equal(backbone.norm(state), reference)
            # timm's pre-logits (a distilled DeiT averages its class and distillation tokens there: ours read the
            # class token, as the others do)
            pooled = reference[:, 0] if "distilled" in name else net.forward_head(reference, pre_logits=True)
            assert torch.equal(backbone(x), pooled)
        else:
            assert torch.equal(state, reference) and torch.equal(backbone(x), reference)
    # the backbone's parameters are the library model's without its classifier (and, for ConvNeXt, the norm
    # that timm's head applies after pooling)
    classifier = {k for k, _ in net.named_parameters() if k.startswith(("head.", "fc.", "classifier.", "head_dist."))}
    expected = sum(p.numel() for k, p in net.named_parameters() if k not in classifier)
    assert sum(p.numel() for p in backbone.parameters()) == expected
    assert len(backbone.pretrained_mean) == len(backbone.pretrained_std) == 3


@pytest.mark.extras
@needs_libraries
def test_torchvision_vit_and_convnext_splits_read_their_features():
    """Small instances built directly (torchvision's named ViTs and ConvNeXts are too big to build in a test)."""
    from torchvision.models import ConvNeXt, VisionTransformer
    from torchvision.models.convnext import CNBlockConfig

    from eeopt.models.external import _split_torchvision

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64).eval()
    convnext = ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)], layer_scale=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        backbone = _split_torchvision(vit, "vit", 3, (32, 32))
        assert len(backbone.blocks) == 3
        tokens = torch.cat([vit.class_token.expand(2, -1, -1), vit._process_input(x)], dim=1)
        assert torch.equal(backbone(x), vit.encoder(tokens)[:, 0])  # the class token after the final norm
        backbone = _split_torchvision(convnext, "convnext", 3, (32, 32))
        assert len(backbone.blocks) == 4 and torch.equal(backbone(x), convnext.features(x))
        classifier = sum(p.numel() for p in convnext.classifier.parameters())  # with the post-pooling norm
        expected = sum(p.numel() for p in convnext.parameters()) - classifier
        assert sum(p.numel() for p in backbone.parameters()) == expected


@pytest.mark.extras
@needs_libraries
@pytest.mark.parametrize("name,kwargs,exits", [
    ("timm:vit_tiny_patch16_224", {"depth": 4, "embed_dim": 48, "num_heads": 2}, [1, 3]),
    ("timm:convnext_atto", {}, [2, 5, 9]),
])
def test_a_timm_model_trains_one_step_with_exits_after_chosen_blocks(name, kwargs, exits):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=name, exits=exits, backbone_kwargs=kwargs, failure_head=True), 5, 3, 32)
    assert model.exit_blocks == [b - 1 for b in exits] + [len(model.backbone.blocks) - 1]
    assert np.all(np.diff(model.costs) > 0)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.logits.shape == (len(exits) + 1, 4, 5) and out.failure.shape == (len(exits) + 1, 4)
    loss = sum(torch.nn.functional.cross_entropy(logits, torch.arange(4) % 5) for logits in out.logits)
    loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(out.failure, torch.ones_like(out.failure))
    loss.backward()
    no_gradient = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_gradient  # every parameter (stem, blocks, norms, heads) learns from the exits
    optimizer.step()
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert sum(changed) > 0.8 * len(changed)  # (ConvNeXt's layer scale starts at 1e-6: its norms barely move)


# --------------------------------------------------------------------------------------------------- cost
@pytest.mark.extras
@needs_libraries
def test_vit_small_costs_and_parameters_match_timms_model():
    """Exits after blocks 4, 8, 12 of a ViT-S/16 at 224: the last exit costs the backbone's own FLOPs (8.48e9 with
    torch's counter, classifier removed) plus three small heads; the backbone has timm's parameters."""
    model = build_model(ModelConfig(backbone="timm:vit_small_patch16_224", exits=[4, 8, 12]), 10, 3, 224)
    net = timm.create_model("vit_small_patch16_224")
    net.reset_classifier(0)
    own = count_flops(net, torch.zeros(1, 3, 224, 224))
    assert 8.3e9 < own < 8.7e9
    assert model.num_exits == 3 and abs(model.costs[-1] / own - 1) < 0.05
    assert model.costs[0] < model.costs[1] < model.costs[2]
    assert abs(model.costs[0] / own - 1 / 3) < 0.02  # a third of the blocks, with the stem (tiny next to a block)
    assert sum(p.numel() for p in model.backbone.parameters()) == sum(p.numel() for p in net.parameters())


# --------------------------------------------------------------------------------------------------- weights
@pytest.mark.extras
@needs_libraries
def test_cached_weights_load_offline_and_a_missing_file_is_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kwargs = {"depth": 2}
    backbone = create_backbone("timm:vit_tiny_patch16_224", 3, (224, 224), 16, **kwargs)
    with pytest.raises(ConfigError) as err:
        load_pretrained(backbone, True)
    message = str(err.value)
    repo = "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert "\n" not in message and f"{tmp_path / 'hf' / repo}/snapshots/<revision>/model.safetensors" in message
    assert message.startswith("model.pretrained: no cached weights for timm:vit_tiny_patch16_224")

    # the same file in the hub cache's layout loads, without network
    net = _library_net("timm:vit_tiny_patch16_224", 224, **kwargs)
    snapshot = tmp_path / "hf" / repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "hf" / repo / "refs").mkdir()
    (tmp_path / "hf" / repo / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snapshot / "model.safetensors"))
    assert load_pretrained(backbone, True) == snapshot / "model.safetensors"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(backbone.eval()(x), net.forward_head(net.forward_features(x), pre_logits=True))
    # at another image size, timm's checkpoint filter resamples the position embedding (14x14 -> 2x2 patches)
    small = create_backbone("timm:vit_tiny_patch16_224", 3, (32, 32), 16, **kwargs)
    load_pretrained(small, True)
    assert torch.equal(small.blocks[0].attn.qkv.weight, backbone.blocks[0].attn.qkv.weight)
    assert small.stem.pos_embed.shape == (1, 5, 192) and backbone.stem.pos_embed.shape == (1, 197, 192)

    tv = create_backbone("torchvision:resnet18", 3, (64, 64), 16)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    with pytest.raises(ConfigError, match=r"^model.pretrained: no cached weights for torchvision:resnet18: put the "
                                          rf"file at {checkpoints}/resnet18-[0-9a-f]+\.pth"):
        load_pretrained(tv, True)
    with pytest.raises(ConfigError, match="model.pretrained: .*nope.pt is not a file"):
        load_pretrained(tv, str(tmp_path / "nope.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save(net.state_dict(), wrong)  # a ViT's weights for a ResNet
    with pytest.raises(ConfigError, match=r"wrong.pt does not fit torchvision:resnet18: (missing|unexpected) "):
        load_pretrained(tv, str(wrong))


@pytest.mark.extras
@needs_libraries
def test_pretrained_data_follows_the_weights_input_size_and_statistics(tmp_path):
    from eeopt.config import DataConfig
    from eeopt.models.external import pretrained_data, pretrained_statistics

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")  # only looked for here: nothing is read before the model exists
    vit = ModelConfig(backbone="timm:vit_small_patch16_224", pretrained=str(weights))
    data, stats = pretrained_data(vit, DataConfig(name="imagefolder"))
    assert data.image_size == 224 and stats == ((0.5,) * 3, (0.5,) * 3)  # timm's pretrained_cfg for this ViT
    assert pretrained_data(vit, DataConfig(name="imagefolder", image_size=64))[0].image_size == 64  # data wins
    effnet = ModelConfig(backbone="torchvision:efficientnet_b3", pretrained=str(weights))
    data, stats = pretrained_data(effnet, DataConfig(name="cifar10"))
    assert data.image_size == 300 and stats == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    scratch = ModelConfig(backbone="timm:vit_small_patch16_224")  # not pretrained: the data's own size and stats
    assert pretrained_data(scratch, DataConfig(name="cifar10")) == (DataConfig(name="cifar10"), None)
    assert pretrained_data(ModelConfig(backbone="resnet20"), DataConfig(normalization="pretrained"))[1] is None
    # weights that are not there fail before any data is loaded, in one line
    with pytest.raises(ConfigError, match=r"^model.pretrained: .*nope.pt is not a file \(a state dict of timm:"):
        pretrained_data(ModelConfig(backbone="timm:resnet18", pretrained=str(tmp_path / "nope.pt")), DataConfig())
    with pytest.raises(ConfigError, match="^model.pretrained: only timm:<name> and torchvision:<name> backbones"):
        pretrained_data(ModelConfig(backbone="resnet20", pretrained=True), DataConfig())
    for name in ("timm:vit_small_patch16_224", "timm:resnet18", "torchvision:efficientnet_b3"):
        backbone = create_backbone(name, 3, (64, 64), 16)  # the attributes say the same as the metadata
        assert (backbone.pretrained_mean, backbone.pretrained_std) == pretrained_statistics(name)


@pytest.mark.extras
@needs_libraries
def test_importing_eeopt_imports_neither_library():
    code = ("import sys, eeopt, eeopt.models, eeopt.training, eeopt.cli; "
            "print(sorted({'timm', 'torchvision'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------------- training
VIT_DIGITS = {"depth": 3, "embed_dim": 32, "num_heads": 2, "patch_size": 4}  # 8x8 digits: 4 patch tokens


@pytest.fixture(scope="module")
def frozen_vit(tmp_path_factory):
    """A ViT 'pretrained' from a state dict the test saves from a random timm model, heads trained 2 epochs on
    digits in frozen mode (the pretrained default), written as `eeopt train` does."""
    from eeopt.data import load_dataset
    from eeopt.training import train

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vit")
    net = timm.create_model("vit_tiny_patch16_224", img_size=8, in_chans=1, **VIT_DIGITS).eval()
    torch.save(net.state_dict(), folder / "weights.pt")
    cfg = TrainConfig.model_validate({
        "data": {"name": "digits"},
        "model": {"backbone": "timm:vit_tiny_patch16_224", "backbone_kwargs": VIT_DIGITS, "exits": [1, 2],
                  "failure_head": True, "pretrained": str(folder / "weights.pt")},
        "training": {"epochs": 2, "batch_size": 64, "lr": 5e-3, "device": "cpu", "failure_loss": "bce"},
    })
    assert cfg.training.mode == "frozen" and cfg.training.backbone_epochs == 0
    dataset = load_dataset(cfg.data, seed=0)
    result = train(cfg, folder / "run", progress=False, dataset=dataset)
    return {"net": net, "result": result, "dataset": dataset, "folder": folder / "run"}


@pytest.mark.extras
@needs_libraries
def test_frozen_training_keeps_the_pretrained_backbone_bit_identical(frozen_vit):
    net, result = frozen_vit["net"], frozen_vit["result"]
    model = result.model
    assert [row["stage"] for row in result.history] == ["heads", "heads"]  # no backbone stage
    reference = create_backbone("timm:vit_tiny_patch16_224", 1, (8, 8), 16, **VIT_DIGITS)
    load_pretrained(reference, str(frozen_vit["folder"].parent / "weights.pt"))
    trained = model.backbone.state_dict()
    assert trained.keys() == reference.state_dict().keys()
    assert all(torch.equal(trained[k].cpu(), v) for k, v in reference.state_dict().items())
    x = frozen_vit["dataset"].test.x[:16]
    with torch.no_grad():  # and it still computes timm's features
        assert torch.equal(model.backbone.norm(_tokens(model, x)), net.forward_features(x))
    # the heads stage trained the final head too: a linear probe of random features, well above chance (10 classes)
    assert result.history[-1][f"val_acc_exit{model.num_exits}"] > 0.2


def _tokens(model, x):
    h = model.backbone.stem(x)
    for block in model.backbone.blocks:
        h = block(h)
    return h


@pytest.mark.extras
@needs_libraries
def test_the_predictor_on_a_vit_equals_the_policy_at_batch_1_and_64(frozen_vit):
    from test_inference import assert_agrees, quantile_thresholds

    from eeopt.inference import EarlyExitPredictor, load_model_dir
    from eeopt.core.policy_file import PolicyFile
    from eeopt.core.scores import compute_score
    from eeopt.training import collect_exit_outputs

    model, _ = load_model_dir(frozen_vit["folder"])  # rebuilt from model.pt: needs no pretrained file
    split = frozen_vit["dataset"].test
    outputs = collect_exit_outputs(model, split, 256, model.costs, source="test")
    scores = compute_score("msp", outputs)
    policy = PolicyFile(score="msp", thresholds=quantile_thresholds(scores), costs=tuple(outputs.costs),
                        cost_unit="flops", budget=None)
    _, exits, _ = policy.decide(outputs)
    assert np.all(np.bincount(exits, minlength=model.num_exits) > 0)
    predictor = EarlyExitPredictor(model, policy)
    for batch_size in (1, 64):
        assert_agrees(predictor.predict(split.x, batch_size=batch_size), policy, outputs, scores)


# --------------------------------------------------------------------------------------------------- the study
@pytest.mark.extras
@needs_libraries
def test_the_vit_imagenet_study_trains_shrunk_on_a_tiny_image_folder(tmp_path, capsys):
    """studies/vit-imagenet.yaml's fixed part, with only the sizes shrunk (a 3-block ViT-Ti at 16 px, weights
    from a saved state dict, 3 classes of generated images, one epoch), through `eeopt train`."""
    from PIL import Image

    from eeopt.core.outputs import ExitOutputs

    rng = np.random.default_rng(0)
    for part, count in (("train", 12), ("val", 4)):
        for k, cls in enumerate(("n01", "n02", "n03")):
            (tmp_path / "data" / part / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                pixels[..., k] //= 4  # a colour cue per class
                Image.fromarray(pixels).save(tmp_path / "data" / part / cls / f"{i}.JPEG", format="JPEG")
    kwargs = {"depth": 3, "patch_size": 8, "embed_dim": 32, "num_heads": 2}
    net = timm.create_model("vit_tiny_patch16_224", img_size=16, **kwargs)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    study = ROOT / "studies" / "vit-imagenet.yaml"
    out = tmp_path / "out"
    code = main(["train", str(study), "--output-dir", str(out), "--quiet",
                 "--set", f"data.root={tmp_path / 'data'}", "--set", "data.train_subset=null",
                 "--set", "data.val_fraction=0.25", "--set", "data.image_size=16", "--set", "data.workers=0",
                 "--set", "model.backbone=timm:vit_tiny_patch16_224", "--set", f"model.backbone_kwargs={kwargs}",
                 "--set", "model.exits=[1, 2]", "--set", f"model.pretrained={tmp_path / 'weights.pt'}",
                 "--set", "training.epochs=1", "--set", "training.batch_size=8", "--set", "policy.trials=20"])
    assert code == 0, capsys.readouterr().err
    assert load_config(study, study=True).study.name == "vit-s-imagenet"  # the whole study file validates
    val, test = ExitOutputs.load(out / "val.npz"), ExitOutputs.load(out / "test.npz")
    assert val.num_exits == test.num_exits == 3 and test.num_samples == 12 and val.num_samples == 9
    assert np.all(np.diff(test.costs) > 0) and test.scores is not None  # failure heads, as in the study file
