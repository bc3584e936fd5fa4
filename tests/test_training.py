"""eeopt.training: losses against independent computations, what each mode trains, failure heads, divergence,
resuming, output files; one slow Fashion-MNIST accuracy check."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
import torch
import torch.nn.functional as F
import yaml

from eeopt.config import DataConfig, TrainConfig
from eeopt.errors import ConfigError, TrainingDiverged
from eeopt.core.outputs import ExitOutputs
from eeopt.training import (
    collect_exit_outputs,
    distillation_loss,
    exit_loss,
    exit_weights,
    failure_loss,
    load_model,
    train,
)
from eeopt.training import epoch
from eeopt.training.stages import lr_factor, plan_stages

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------------ losses
def test_exit_weights_by_hand():
    k = 4
    assert exit_weights("uniform", k, 0.3).tolist() == [1.0] * 4
    np.testing.assert_allclose(exit_weights("linear", k, 0.3).numpy(), [0.25, 0.5, 0.75, 1.0])
    for progress in (0.0, 0.3, 1.0):
        expected = [0.01 + (d - 0.01) * progress for d in (0.25, 0.5, 0.75)] + [1.0]
        np.testing.assert_allclose(exit_weights("sdn", k, progress).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(exit_weights("sdn", k, 7.0).numpy(), exit_weights("linear", k).numpy())
    np.testing.assert_allclose(exit_weights("sdn", k, -1.0).numpy(), [0.01, 0.01, 0.01, 1.0], rtol=1e-6)
    assert exit_weights("linear", 1).tolist() == [1.0]
    with pytest.raises(ValueError, match="unknown exit weighting"):
        exit_weights("cubic", k)


def _random_batch(k=3, b=9, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, b, c, generator=g) * 2
    labels = torch.randint(0, c, (b,), generator=g)
    failure = torch.randn(k, b, generator=g)
    return logits, labels, failure


def test_exit_loss_is_weighted_mean_of_hand_computed_cross_entropies():
    logits, labels, _ = _random_batch()
    weights = torch.tensor([0.2, 0.5, 1.0])
    k, b, c = logits.shape
    ce = []
    for e in range(k):
        logp = logits[e] - torch.logsumexp(logits[e], dim=1, keepdim=True)
        ce.append(-logp[torch.arange(b), labels].mean())
    expected = sum(w * l for w, l in zip(weights, ce)) / weights.sum()
    torch.testing.assert_close(exit_loss(logits, labels, weights), expected)


def test_label_smoothing_matches_the_smoothed_target_formula_and_torch():
    logits, labels, _ = _random_batch(seed=1)
    eps, (k, b, c) = 0.1, logits.shape
    weights = torch.tensor([1.0, 2.0, 3.0])
    by_hand, by_torch = [], []
    for e in range(k):
        logp = logits[e].log_softmax(dim=1)
        target = torch.full((b, c), eps / c)
        target[torch.arange(b), labels] += 1 - eps
        by_hand.append(-(target * logp).sum(dim=1).mean())
        by_torch.append(F.cross_entropy(logits[e], labels, label_smoothing=eps))
    for ref in (by_hand, by_torch):
        expected = sum(w * l for w, l in zip(weights, ref)) / weights.sum()
        torch.testing.assert_close(exit_loss(logits, labels, weights, label_smoothing=eps), expected)


def test_bce_and_tcp_failure_losses_by_hand_and_their_targets_are_detached():
    logits, labels, failure = _random_batch(seed=2)
    correct = (logits.argmax(-1) == labels).float()
    s = torch.sigmoid(failure)
    bce = -(correct * torch.log(s) + (1 - correct) * torch.log(1 - s)).mean()
    torch.testing.assert_close(failure_loss("bce", failure, logits, labels), bce)
    p_true = torch.stack([logits[e].softmax(-1)[torch.arange(len(labels)), labels] for e in range(logits.shape[0])])
    torch.testing.assert_close(failure_loss("tcp", failure, logits, labels), ((s - p_true) ** 2).mean())

    for kind in ("bce", "tcp", "ranking"):
        lg, f = logits.clone().requires_grad_(), failure.clone().requires_grad_()
        failure_loss(kind, f, lg, labels).backward()
        assert lg.grad is None or torch.count_nonzero(lg.grad) == 0, f"{kind} sends gradient into the classifier"
        assert torch.count_nonzero(f.grad) > 0


def test_ranking_loss_matches_a_double_loop_over_pairs():
    logits, labels, failure = _random_batch(k=4, b=12, c=3, seed=3)
    logits[2] = F.one_hot(labels, 3).float() * 5  # exit 3 is always right: no pair, contributes 0
    correct = logits.argmax(-1) == labels
    per_exit = []
    for e in range(logits.shape[0]):
        terms = [
            math.log1p(math.exp(1.0 - (failure[e, i] - failure[e, j]).item()))
            for i in range(len(labels))
            for j in range(len(labels))
            if correct[e, i] and not correct[e, j]
        ]
        per_exit.append(sum(terms) / len(terms) if terms else 0.0)
    assert per_exit[2] == 0.0 and all(v > 0 for i, v in enumerate(per_exit) if i != 2)
    assert failure_loss("ranking", failure, logits, labels).item() == pytest.approx(np.mean(per_exit), rel=1e-5)
    all_right = F.one_hot(labels, 3).float().expand(4, -1, -1)
    assert failure_loss("ranking", failure, all_right, labels).item() == 0.0


def test_distillation_is_temperature_scaled_kl_from_the_detached_last_exit():
    logits, _, _ = _random_batch(k=3, b=6, c=4, seed=4)
    t = 2.0
    p = torch.softmax(logits[-1] / t, -1)
    expected = []
    for e in range(2):
        q = torch.softmax(logits[e] / t, -1)
        expected.append((p * (p.log() - q.log())).sum(-1).mean())
    lg = logits.clone().requires_grad_()
    loss = distillation_loss(lg, temperature=t)
    torch.testing.assert_close(loss, torch.stack(expected).mean() * t * t)
    loss.backward()
    assert torch.count_nonzero(lg.grad[-1]) == 0 and torch.count_nonzero(lg.grad[:-1]) > 0
    assert distillation_loss(logits[:1]).item() == 0.0


def test_learning_rate_schedules_by_hand():
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert [lr_factor("step", s, 100) for s in (0, 49, 50, 74, 75, 99)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    assert lr_factor("constant", 77, 100) == 1.0


def test_modes_plan_their_stages_and_reject_impossible_settings():
    def tc(**kw):
        return TrainConfig.model_validate({"training": kw}).training

    assert [s.name for s in plan_stages(tc(mode="joint", epochs=2))] == ["joint"]
    assert [(s.name, s.epochs) for s in plan_stages(tc(mode="frozen", epochs=2, backbone_epochs=3))] == [
        ("backbone", 3), ("heads", 2)
    ]
    assert [s.name for s in plan_stages(tc(mode="two_stage", epochs=1, backbone_epochs=1))] == ["backbone", "joint"]
    assert [s.name for s in plan_stages(tc(mode="frozen", backbone_checkpoint="m.pt"))] == ["heads"]
    with pytest.raises(ValidationError, match="backbone_epochs"):
        tc(mode="frozen", backbone_epochs=0)
    with pytest.raises(ValidationError, match="backbone_epochs"):
        tc(mode="two_stage")
    with pytest.raises(ValidationError, match="not both"):
        tc(mode="frozen", backbone_epochs=1, backbone_checkpoint="m.pt")
    assert plan_stages(tc(mode="joint", epochs=0)) == []


# ------------------------------------------------------------------------------------------------ training on digits
@pytest.fixture(scope="module")
def digits():
    from eeopt.data import load_dataset

    return load_dataset(DataConfig(name="digits"), seed=0)


def _cfg(**training) -> TrainConfig:
    model = training.pop("model", {})
    return TrainConfig.model_validate(
        {
            "seed": 0,
            "data": {"name": "digits"},
            "model": {"backbone": "tinyresnet", "width": 8, **model},
            "training": {"epochs": 1, "batch_size": 64, "lr": 5e-3, "device": "cpu", **training},
        }
    )


def _state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _changed(before, after, prefix) -> dict[str, bool]:
    """For every float parameter/buffer under `prefix`: did it change?"""
    return {n: not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix)}


def test_joint_changes_every_parameter(digits):
    init = _state(train(_cfg(epochs=0), progress=False, dataset=digits).model)
    trained = train(_cfg(epochs=1), progress=False, dataset=digits).model
    after = _state(trained)
    unchanged = [n for n, p in trained.named_parameters() if torch.equal(init[n], after[n])]
    assert not unchanged


def test_frozen_heads_stage_leaves_backbone_and_final_head_bit_identical(digits):
    after_backbone = train(_cfg(mode="frozen", backbone_epochs=1, epochs=0, lr=1e-2), progress=False, dataset=digits)
    result = train(_cfg(mode="frozen", backbone_epochs=1, epochs=2, lr=1e-2), progress=False, dataset=digits)
    k_last = result.model.num_exits - 1
    before, after = _state(after_backbone.model), _state(result.model)
    frozen = {**_changed(before, after, "backbone."), **_changed(before, after, f"heads.{k_last}.")}
    assert any(".running_mean" in n for n in frozen) and any(".num_batches_tracked" in n for n in frozen)
    assert not any(frozen.values()), [n for n, c in frozen.items() if c]
    early = {n: c for k in range(k_last) for n, c in _changed(before, after, f"heads.{k}.").items()}
    assert early and all(early.values())
    # and the early heads learned something on top of the frozen features
    assert result.val.accuracy[:-1].max() > after_backbone.val.accuracy[:-1].max() + 0.1


def test_two_stage_changes_everything_in_its_joint_stage(digits):
    stage1 = train(_cfg(mode="two_stage", backbone_epochs=1, epochs=0), progress=False, dataset=digits)
    after_backbone = _state(stage1.model)
    model = train(_cfg(mode="two_stage", backbone_epochs=1, epochs=1), progress=False, dataset=digits).model
    after = _state(model)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(after_backbone[n], after[n])]
    assert not unchanged


def test_frozen_from_a_backbone_checkpoint_of_another_exit_layout(digits, tmp_path):
    source = train(_cfg(epochs=1, model={"exits": [5]}), tmp_path / "backbone", progress=False, dataset=digits)
    assert source.model.num_exits == 1
    cfg = _cfg(mode="frozen", epochs=1, backbone_checkpoint=str(tmp_path / "backbone" / "model.pt"))
    result = train(cfg, progress=False, dataset=digits)
    src, dst, k_last = _state(source.model), _state(result.model), result.model.num_exits - 1
    for name, tensor in src.items():
        target = name.replace("heads.0.", f"heads.{k_last}.")
        assert torch.equal(tensor, dst[target]), name
    np.testing.assert_array_equal(result.val.logits[-1], source.val.logits[-1])
    bad = _cfg(mode="frozen", epochs=1, backbone_checkpoint=str(tmp_path / "backbone" / "model.pt"), model={"width": 4})
    with pytest.raises(ConfigError, match="backbone_checkpoint"):
        train(bad, progress=False, dataset=digits)


@pytest.mark.slow  # 6 epochs a case
@pytest.mark.parametrize("kind", ["bce", "tcp", "ranking"])
def test_failure_losses_train_failure_heads_that_rank_errors_below_correct_predictions(digits, kind):
    """AUROC of the learned scores vs correctness on the (held-out) test split: above 0.5 at every exit, and clearly
    above at the last three (>= 90 % accurate here). Measured: untrained failure heads average 0.42-0.60 at the last
    three exits and dip to 0.46 elsewhere; each trained loss gives 0.6-0.96 at every exit."""
    from sklearn.metrics import roc_auc_score

    cfg = _cfg(epochs=6, lr=1e-2, failure_loss=kind, failure_weight=1.0, model={"failure_head": True})
    test = train(cfg, progress=False, dataset=digits).test
    assert test.scores is not None and test.scores.shape == test.logits.shape[:2]
    assert np.all((test.scores > 0) & (test.scores < 1))
    late = range(test.num_exits - 3, test.num_exits)
    assert all(0.5 < test.accuracy[k] < 1 for k in late), test.accuracy
    every = [roc_auc_score(test.correct[k], test.scores[k]) for k in range(test.num_exits)]
    assert min(every) > 0.5, every
    aurocs = [every[k] for k in late]
    assert min(aurocs) > 0.6 and np.mean(aurocs) > 0.7, aurocs


def test_failure_loss_needs_failure_heads_and_frozen_needs_early_heads(digits):
    with pytest.raises(ValidationError, match="failure_head"):  # the schema rejects it before training starts
        _cfg(failure_loss="bce")
    with pytest.raises(ConfigError, match="train nothing"):
        train(_cfg(mode="frozen", backbone_epochs=1, model={"exits": [5]}), progress=False, dataset=digits)


def test_a_diverging_run_stops_at_once(digits):
    message = r"training diverged: loss (nan|inf).*epoch 1, step \d+.*lower training.lr"
    with pytest.raises(TrainingDiverged, match=message):
        train(_cfg(optimizer="sgd", lr=1e6, epochs=3), progress=False, dataset=digits)  # stops in epoch 1 of 3


def test_a_nan_loss_raises_on_the_first_step(digits, monkeypatch):
    monkeypatch.setattr(epoch, "stage_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1 "):
        train(_cfg(), progress=False, dataset=digits)


@pytest.mark.slow  # three trainings of 2 epochs
def test_an_interrupted_run_resumes_and_ends_exactly_like_an_uninterrupted_one(digits, tmp_path, capsys):
    cfg = _cfg(epochs=2, model={"failure_head": True}, failure_loss="bce")
    reference = train(cfg, progress=False, dataset=digits)

    def interrupt(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False, dataset=digits, callback=interrupt)
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()

    seen = []
    resumed = train(cfg, out, progress=False, dataset=digits, callback=lambda e, row: seen.append(e))
    assert seen == [2]
    assert "resuming" in capsys.readouterr().err
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    np.testing.assert_array_equal(resumed.val.logits, reference.val.logits)
    np.testing.assert_array_equal(resumed.val.scores, reference.val.scores)
    assert not (out / "checkpoint.pt").exists()

    # a checkpoint of another config is refused
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "other", progress=False, dataset=digits, callback=interrupt)
    with pytest.raises(ConfigError, match="--output-dir"):
        train(_cfg(epochs=2, lr=1e-3, model={"failure_head": True}, failure_loss="bce"), tmp_path / "other",
              progress=False, dataset=digits)


def test_outputs_history_and_files(digits, tmp_path, capsys):
    cfg = _cfg(epochs=1, exit_weights="sdn", distillation=0.5, distill_temperature=2.0, label_smoothing=0.1)
    rows = []
    result = train(cfg, tmp_path, progress=True, dataset=digits, callback=lambda e, row: rows.append((e, row)))
    k = result.model.num_exits
    assert k == 5 and np.all(np.diff(result.val.costs) > 0)
    np.testing.assert_array_equal(result.val.costs, result.model.costs)
    assert result.val.num_samples == len(digits.val.y) and result.test.num_samples == len(digits.test.y)
    assert result.val.scores is None
    assert set(result.history[0]) == {"epoch", "stage", "train_loss", "lr", "seconds", "images_per_s"} | {
        f"val_acc_exit{i}" for i in range(1, k + 1)
    }
    assert rows == [(1, result.history[0])]
    assert result.history[0]["val_acc_exit5"] == pytest.approx(result.val.accuracy[-1])
    assert "val acc" in capsys.readouterr().err

    for name in ("model.pt", "val.npz", "test.npz", "config.yaml", "history.json"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "checkpoint.pt").exists()
    for split, outputs in (("val", result.val), ("test", result.test)):
        loaded = ExitOutputs.load(tmp_path / f"{split}.npz")
        np.testing.assert_array_equal(loaded.logits, outputs.logits)
        np.testing.assert_array_equal(loaded.labels, outputs.labels)
    assert TrainConfig.model_validate(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg
    rebuilt = load_model(tmp_path / "model.pt")
    again = collect_exit_outputs(rebuilt, digits.test, 64, rebuilt.costs)
    np.testing.assert_allclose(again.logits, result.test.logits, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="no such file"):
        load_model(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_fashion_mnist_tinyresnet_reaches_80_percent():
    """12k training images, 2 epochs, one thread: about 50 s; the last exit reached 0.827-0.837 with seeds 0-2
    (batch 128 at lr 2e-3 reached only 0.811 here, too close to the bar)."""
    cfg = TrainConfig.model_validate(
        {
            "seed": 0,
            "data": {"name": "fashion-mnist", "root": str(FASHION_ROOT), "train_subset": 12000, "val_subset": 2000},
            "model": {"backbone": "tinyresnet", "width": 16},
            "training": {"epochs": 2, "batch_size": 64, "lr": 3e-3, "schedule": "cosine", "device": "cpu"},
        }
    )
    started = time.perf_counter()
    result = train(cfg, progress=False)
    seconds = time.perf_counter() - started
    assert result.test.num_samples == 10_000
    assert result.test.accuracy[-1] >= 0.80, (result.test.accuracy.tolist(), f"{seconds:.0f} s")
    assert np.all(np.diff(result.test.accuracy[1:]) > 0), result.test.accuracy.tolist()  # deeper exits do better


def test_public_api_builds_and_trains_from_a_config(digits):
    import eeopt

    cfg = _cfg(epochs=1)
    model = eeopt.build_model(cfg, dataset=digits)
    assert model.num_exits == 5 and np.all(np.diff(model.costs) > 0)
    result = eeopt.train(cfg, progress=False, dataset=digits)
    assert isinstance(result, eeopt.TrainResult) and isinstance(result.test, eeopt.ExitOutputs)
    np.testing.assert_array_equal(result.test.costs, model.costs)
