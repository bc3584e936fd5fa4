"""eeopt.inference: the early-exit predictor equals the policy applied to exit outputs, on a model trained on digits
(cascade heads and failure heads), for every built-in score with and without calibrators, at batch 1 and 64; batch
compaction really skips work; `eeopt predict` and `eeopt profile` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eeopt.cli import main
from eeopt.config import DataConfig, TrainConfig
from eeopt.errors import ConfigError
from eeopt.inference import EarlyExitPredictor, Prediction, load_model_dir, profile_latency
from eeopt.core.outputs import ExitOutputs
from eeopt.core.policy_file import ExitDecider, PolicyFile
from eeopt.core.scores import compute_score
from eeopt.training import collect_exit_outputs

SCORES = ("msp", "entropy", "margin", "doctor", "learned")
CALIBRATORS = ("none", "temperature", "vector", "isotonic")
#: A sample may take another exit than the reference only if its score is this close to a threshold.
NEAR = 1e-4
#: ... and at most this share of the samples may (float32 convolutions differ in the last bits between batches).
MAX_NEAR_SHARE = 0.005


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tinyresnet with cascade heads and failure heads, 2 epochs on digits (~5 s), written as `eeopt train`
    does; and its test split with exit outputs computed at batch 256."""
    from eeopt.data import load_dataset
    from eeopt.training import train

    torch.set_num_threads(1)
    cfg = TrainConfig.model_validate({
        "seed": 0,
        "data": {"name": "digits"},
        "model": {"backbone": "tinyresnet", "width": 8, "cascade": True, "failure_head": True},
        "training": {"epochs": 2, "batch_size": 64, "lr": 5e-3, "device": "cpu", "failure_loss": "bce"},
    })
    folder = tmp_path_factory.mktemp("model")
    dataset = load_dataset(DataConfig(name="digits"), seed=0)
    result = train(cfg, folder, progress=False, dataset=dataset)
    model, _ = load_model_dir(folder)
    assert model.cascade and model.has_failure_heads and model.num_exits == 5
    outputs = collect_exit_outputs(model, dataset.test, 256, model.costs, source="test")
    return {"folder": folder, "model": model, "x": dataset.test.x, "outputs": outputs, "val": result.val}


def quantile_thresholds(scores: np.ndarray) -> tuple[float, ...]:
    """Each exit lets out about 1/(K-k) of the samples still running, at a threshold half-way between two
    neighbouring scores."""
    k_all, n = scores.shape
    running = np.ones(n, dtype=bool)
    out = []
    for k in range(k_all - 1):
        s = np.unique(scores[k][running])
        cut = int(round(len(s) * (1 - 1 / (k_all - k))))
        out.append(float((s[cut - 1] + s[cut]) / 2))
        running &= scores[k] < out[-1]
    return tuple(out)


def make_policy(trained, score: str, calibrator: str) -> tuple[PolicyFile, np.ndarray]:
    """The policy with quantile thresholds on the test scores, and the reference scores [K, N] (calibrated)."""
    from eeopt.core.calibration import create_calibrator

    outputs = trained["outputs"]
    cal = create_calibrator(calibrator).fit(trained["val"]) if calibrator != "none" else None
    scores = compute_score(score, cal.apply(outputs) if cal is not None else outputs)
    policy = PolicyFile(score=score, thresholds=quantile_thresholds(scores), costs=tuple(outputs.costs),
                        cost_unit="flops", budget=None, calibrator=calibrator,
                        calibrator_state=cal.state_dict() if cal is not None else None)
    return policy, scores


def assert_agrees(got: Prediction, policy: PolicyFile, outputs: ExitOutputs, scores: np.ndarray) -> int:
    """Predictions and exits equal `policy.decide(outputs)` except for samples whose reference score sits within
    NEAR of the threshold where the two paths part; returns how many such samples there were."""
    predictions, exits, ref_scores = policy.decide(outputs)
    differ = np.flatnonzero((got.exits != exits) | (got.labels != predictions))
    for n in differ:
        parted = min(got.exits[n], exits[n])  # the first exit where one path left and the other did not
        assert got.exits[n] != exits[n], f"sample {n}: same exit {exits[n]} but another prediction"
        threshold = policy.thresholds[parted]
        assert abs(scores[parted, n] - threshold) <= NEAR * max(1.0, abs(threshold)), (
            f"sample {n}: exit {got.exits[n]} vs {exits[n]}, score {scores[parted, n]} far from threshold {threshold}")
    assert differ.size <= MAX_NEAR_SHARE * outputs.num_samples, differ.size
    same = got.exits == exits
    np.testing.assert_allclose(got.scores[same], ref_scores[same], rtol=0, atol=NEAR)
    return differ.size


@pytest.mark.parametrize("calibrator", CALIBRATORS)
@pytest.mark.parametrize("score", SCORES)
def test_predictor_equals_the_policy_on_exit_outputs(trained, score, calibrator):
    policy, scores = make_policy(trained, score, calibrator)
    _, exits, _ = policy.decide(trained["outputs"])
    assert np.all(np.bincount(exits, minlength=5) > 0), np.bincount(exits, minlength=5)  # every exit takes samples
    predictor = EarlyExitPredictor(trained["model"], policy)
    for batch_size in (1, 64):
        got = predictor.predict(trained["x"], batch_size=batch_size)
        assert got.labels.dtype == np.int64 and got.exits.dtype == np.int64 and got.scores.dtype == np.float64
        assert_agrees(got, policy, trained["outputs"], scores)


def test_compaction_runs_later_stages_only_on_the_samples_still_running(trained):
    """Forward hooks count the samples each exit's block and head receive: exactly those that did not leave
    before it, so the work skipped is real."""
    policy, _ = make_policy(trained, "msp", "temperature")
    model = trained["model"]
    seen = {"block": np.zeros(5, dtype=np.int64), "head": np.zeros(5, dtype=np.int64)}
    hooks = []
    for k in range(5):
        block = model.backbone.blocks[model.exit_blocks[k]]
        hooks.append(block.register_forward_hook(lambda m, i, o, k=k: seen["block"].__setitem__(
            k, seen["block"][k] + o.shape[0])))
        hooks.append(model.heads[k].register_forward_pre_hook(lambda m, i, k=k: seen["head"].__setitem__(
            k, seen["head"][k] + i[0].shape[0])))
    try:
        got = EarlyExitPredictor(model, policy).predict(trained["x"], batch_size=64)
    finally:
        for h in hooks:
            h.remove()
    reached = np.array([(got.exits >= k).sum() for k in range(5)])
    np.testing.assert_array_equal(seen["block"], reached)
    np.testing.assert_array_equal(seen["head"], reached)
    assert reached[-1] < reached[0] / 3  # most samples never reach the last stage


def test_batch_1_decides_without_the_numpy_batch_path(trained, monkeypatch):
    """At batch 1 an msp policy (without a calibrator or with temperature scaling) decides on Python floats
    (`ExitDecider.leaves`); the NumPy batch path (`ExitDecider.__call__`, arrays and an `ExitOutputs` per call) only
    scores the samples that left, once per exit reached. A score the lean path does not cover goes through it at
    every exit a sample reaches as well, which shows the count sees the batch path when it is used."""
    batch_path = ExitDecider.__call__
    calls = []

    def counted(self, *args):
        calls.append(args[0])
        return batch_path(self, *args)

    monkeypatch.setattr(ExitDecider, "__call__", counted)
    for score, calibrator in (("msp", "none"), ("msp", "temperature"), ("entropy", "none")):
        policy, _ = make_policy(trained, score, calibrator)
        calls.clear()
        got = EarlyExitPredictor(trained["model"], policy).predict(trained["x"][:60], batch_size=1)
        records = np.unique(got.exits).size  # one batch call per exit taken (60 samples: one group)
        decisions = int(np.minimum(got.exits + 1, 4).sum())  # the last exit takes the rest without deciding
        assert len(calls) == records + (0 if score == "msp" else decisions), (score, calibrator)


def test_predictor_takes_numpy_and_reports_bad_inputs(trained):
    policy, _ = make_policy(trained, "margin", "none")
    predictor = EarlyExitPredictor(trained["model"], policy)
    x = trained["x"][:40]
    a, b = predictor.predict(x.numpy(), batch_size=7), predictor.predict(x, batch_size=40)
    same = a.exits == b.exits
    assert same.sum() >= 39 and np.array_equal(a.labels[same], b.labels[same])
    with pytest.raises(ConfigError, match=r"input: expected shape \[N, 1, 8, 8\]"):
        predictor.predict(x[:, :, :4])
    with pytest.raises(ConfigError, match="policy: has 4 exits"):
        EarlyExitPredictor(trained["model"], PolicyFile("msp", (0.5, 0.5, 0.5), (1.0, 2.0, 3.0, 4.0), "flops", None))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_predictor_on_cuda_agrees_with_the_policy(trained):
    import copy

    policy, scores = make_policy(trained, "entropy", "temperature")
    predictor = EarlyExitPredictor(copy.deepcopy(trained["model"]), policy, device="cuda")
    for batch_size in (1, 64, 1024):
        assert_agrees(predictor.predict(trained["x"], batch_size=batch_size), policy, trained["outputs"], scores)


def test_profile_latency_is_cumulative_and_positive(trained):
    profile = profile_latency(trained["model"], trained["x"][:16], warmup=1, repeats=5)
    assert profile.median_ms.shape == (5,) and np.all(profile.median_ms > 0)
    assert np.all(np.diff(profile.median_ms) >= 0)  # cumulative: reaching a later exit passes the earlier ones
    assert np.all(profile.p10_ms <= profile.median_ms) and np.all(profile.median_ms <= profile.p90_ms)
    np.testing.assert_allclose(profile.per_sample_ms, profile.median_ms / 16)
    assert profile.to_dict()["batch_size"] == 16


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_search_then_predict_reproduces_the_policy_files_test_numbers(trained, tmp_path, capsys):
    """`exits search --policy-out --budget 0.5` on the model folder's outputs, then `predict --split test --json`:
    the predictor's accuracy, mean cost and exit shares equal the file's test numbers (the exit-outputs
    evaluation) and `decide` on test.npz."""
    folder = trained["folder"]
    policy_path = tmp_path / "policy.json"
    assert main(["exits", "search", "--fit-on", str(folder / "val.npz"), "--evaluate-on", str(folder / "test.npz"),
                 "--trials", "60", "--score", "learned", "--calibrate", "temperature", "--policy-out",
                 str(policy_path), "--budget", "0.5"]) == 0
    capsys.readouterr()
    policy = PolicyFile.load(policy_path)
    assert main(["predict", str(folder), "--policy", str(policy_path), "--split", "test", "--json",
                 "--batch-size", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    reference = policy.evaluate(ExitOutputs.load(folder / "test.npz"))
    n = reference["samples"]
    assert out["samples"] == n
    assert out["accuracy"] == pytest.approx(reference["accuracy"], abs=1 / n + 1e-12)
    assert out["mean_cost"] == pytest.approx(reference["mean_cost"], rel=0.01)
    assert out["accuracy"] == pytest.approx(policy.report["accuracy"], abs=1 / n + 1e-12)
    np.testing.assert_allclose(out["exit_shares"], policy.report["exit_shares"], atol=1 / n + 1e-12)
    assert out["policy_file"]["accuracy"] == policy.report["accuracy"]
    # the table form names the numbers too
    assert main(["predict", str(folder), "--policy", str(policy_path), "--split", "val"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_cli_predict_input_file_writes_predictions(trained, tmp_path, capsys):
    policy, _ = make_policy(trained, "doctor", "isotonic")
    policy_path, inputs, output = tmp_path / "p.json", tmp_path / "x.npy", tmp_path / "pred.npz"
    policy.save(policy_path)
    np.save(inputs, trained["x"][:50].numpy())
    assert main(["predict", str(trained["folder"]), "--policy", str(policy_path), "--input", str(inputs),
                 "--output", str(output), "--batch-size", "1"]) == 0
    expected = EarlyExitPredictor(trained["model"], policy).predict(trained["x"][:50], batch_size=1)
    with np.load(output) as saved:
        np.testing.assert_array_equal(saved["predictions"], expected.labels)
        np.testing.assert_array_equal(saved["exits"], expected.exits)
        np.testing.assert_array_equal(saved["scores"], expected.scores)
    capsys.readouterr()
    assert main(["predict", str(trained["folder"]), "--policy", str(policy_path), "--input", str(inputs)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["exits"] == expected.exits.tolist()
    np.save(inputs, trained["x"][:5, :, :4].numpy())
    assert main(["predict", str(trained["folder"]), "--policy", str(policy_path), "--input", str(inputs)]) == 2
    err = capsys.readouterr().err.strip()
    assert "input: expected shape [N, 1, 8, 8]" in err and err.count("\n") == 0


def test_cli_profile_writes_cumulative_latency_into_the_exit_outputs(trained, tmp_path, capsys):
    import shutil

    folder = Path(shutil.copytree(trained["folder"], tmp_path / "model"))
    before = ExitOutputs.load(folder / "test.npz")
    assert before.latency_ms is None
    assert main(["profile", str(folder), "--batch-size", "8", "--repeats", "5", "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch_size"] == 8 and len(out["median_ms"]) == 5 and len(out["written"]) == 2
    for split in ("val", "test"):
        loaded = ExitOutputs.load(folder / f"{split}.npz")
        latency = loaded.latency_ms
        assert latency is not None and np.all(latency > 0) and np.all(np.diff(latency) >= 0)
        np.testing.assert_allclose(latency, np.array(out["median_ms"]) / 8)
    after = ExitOutputs.load(folder / "test.npz")
    np.testing.assert_array_equal(after.logits, before.logits)
    np.testing.assert_array_equal(after.scores, before.scores)
    assert main(["profile", str(folder), "--repeats", "2", "--warmup", "0", "--no-write"]) == 0
    assert "exit5" in capsys.readouterr().out
    assert main(["profile", str(tmp_path / "nowhere")]) == 2
    assert "no such model folder" in capsys.readouterr().err
