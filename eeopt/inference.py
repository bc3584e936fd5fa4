"""Early-exit inference that really stops computing: `EarlyExitPredictor` and per-exit latency profiling.

`EarlyExitPredictor(model, policy).predict(x)` runs the network one segment at a time (`MultiExitModel.exit_step`)
in `torch.inference_mode()`. After each exit the samples still in the batch get their calibrated score
(`eeopt.core.policy_file.ExitDecider`, the same calibrator and score code as `PolicyFile.decide`); those whose score
passes that exit's threshold leave with that exit's prediction, and only the rest go on (batch compaction: their
backbone state, whatever the family's (a map, tokens, multi-scale maps), and, for cascade heads, their previous
exit's logits are indexed down). A batch in which every sample
has left stops there. Its predictions and exits equal `policy.decide` on the exit outputs of the same inputs, up to
samples whose score lies within float rounding of a threshold (the network's float32 arithmetic may differ in the
last bits between batch compositions).

`profile_latency` measures the cumulative wall-clock latency to each exit of a batch (segments 0..k, with each
exit's logits brought to the host, as the predictor does to decide), after a warm-up, as the median and the
10th/90th percentiles of repeated runs; on CUDA every timestamp follows a `torch.cuda.synchronize`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eeopt.config import TrainConfig
from eeopt.errors import ConfigError, ExitOutputsError
from eeopt.models import MultiExitModel
from eeopt.core.outputs import ExitOutputs
from eeopt.core.policy_file import ExitDecider, PolicyFile, decision_summary


@dataclasses.dataclass
class Prediction:
    """What `EarlyExitPredictor.predict` returns for N samples.

    Attributes:
        labels: int64 [N] predicted class (the calibrated prediction of the exit taken).
        exits: int64 [N] exit taken, 0-based (users read exit{k+1}).
        scores: float64 [N] the policy's score at the exit taken.
    """

    labels: np.ndarray
    exits: np.ndarray
    scores: np.ndarray

    def exit_shares(self, num_exits: int) -> np.ndarray:
        """Share of the samples leaving at each exit, float [K]."""
        return np.bincount(self.exits, minlength=num_exits) / max(self.exits.size, 1)


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from a name; CUDA only when available.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for on a machine without it.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device: {device!r} is not a torch device (cpu, cuda, cuda:1, ...): {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asked for, but CUDA is not available on this machine (use cpu)")
    return dev


#: At batch 1, the predictions and scores of this many samples are computed at once, after they have run.
SINGLES_PER_RECORD = 256


class EarlyExitPredictor:
    """A multi-exit network and a policy file: predictions that compute only the exits each sample needs.

    Args:
        model: the trained `MultiExitModel` (moved to `device` and put in eval mode, in place).
        policy: the policy to apply; its number of exits must be the model's.
        device: where the network runs ("cpu", "cuda", ...); decisions are taken on the host (a batch in NumPy, a
            single sample's exit on Python floats: `ExitDecider.leaves`).

    Raises:
        ConfigError: the policy has another number of exits, needs a failure head the model lacks, or the device
            is unavailable.
    """

    def __init__(self, model: MultiExitModel, policy: PolicyFile, *, device: str | torch.device = "cpu"):
        if policy.num_exits != model.num_exits:
            raise ConfigError(f"policy: has {policy.num_exits} exits (costs) but the model has {model.num_exits}")
        if policy.score == "learned" and not model.has_failure_heads:
            raise ConfigError("policy: score 'learned' needs a model with failure heads (model.failure_head: true)")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.policy = policy
        self.decider = ExitDecider(policy)
        self._dtype = next(model.parameters()).dtype

    @property
    def num_exits(self) -> int:
        return self.model.num_exits

    def predict(self, x: torch.Tensor | np.ndarray, batch_size: int = 256) -> Prediction:
        """Predict inputs `x` [N, *model.input_shape] (preprocessed as the model was trained: the dataset's
        normalisation), `batch_size` samples at a time.

        Raises:
            ConfigError: `x` does not have the model's input shape, or batch_size < 1.
        """
        x = self._check_input(x)
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
        n = x.shape[0]
        labels = np.zeros(n, dtype=np.int64)
        exits = np.zeros(n, dtype=np.int64)
        scores = np.zeros(n, dtype=np.float64)
        decider = self.decider  # read once per call, so a caller may wrap it (benchmarks/bench_inference.py does)
        run, step = ((self._predict_singles, SINGLES_PER_RECORD) if batch_size == 1
                     else (self._predict_batch, batch_size))
        with torch.inference_mode():
            for start in range(0, n, step):
                stop = min(start + step, n)
                run(x[start:stop], labels[start:stop], exits[start:stop], scores[start:stop], decider)
        return Prediction(labels, exits, scores)

    def _predict_singles(self, xs: torch.Tensor, labels: np.ndarray, exits: np.ndarray, scores: np.ndarray,
                         decider: ExitDecider) -> None:
        """Batch 1: each sample of `xs` [B, *input_shape] runs alone, segment by segment, until
        `ExitDecider.leaves` lets it out (on Python floats: no NumPy array and no compaction per exit); then the
        predictions and scores of the samples that left at each exit are computed at once by the batch path, the
        one `PolicyFile.decide` agrees with."""
        last = self.model.num_exits - 1
        leaves = decider.leaves
        taken: list[list[tuple[int, list[float], float | None]]] = [[] for _ in range(last + 1)]
        for i, h in enumerate(xs.to(self.device, dtype=self._dtype, non_blocking=True).split(1)):
            previous: torch.Tensor | None = None
            for k in range(last + 1):
                h, logits, failure = self.model.exit_step(k, h, previous)
                row = logits.tolist()[0]  # the host copy (synchronises)
                learned = None if failure is None else torch.sigmoid(failure.float()).item()
                if k == last or leaves(k, row, learned):
                    break
                previous = logits
            taken[k].append((i, row, learned))
        for k, samples in enumerate(taken):
            if samples:
                index, rows, learned = zip(*samples)
                index = np.asarray(index)
                learned = None if learned[0] is None else np.asarray(learned)
                predicted, score, leave = decider(k, np.asarray(rows), learned)
                assert leave.all(), "ExitDecider.leaves disagrees with the batch path"
                labels[index], exits[index], scores[index] = predicted, k, score

    def _predict_batch(self, xb: torch.Tensor, labels: np.ndarray, exits: np.ndarray, scores: np.ndarray,
                       decider: ExitDecider) -> None:
        """Run one batch segment by segment, writing each sample's decision into the given views."""
        h = xb.to(self.device, dtype=self._dtype, non_blocking=True)
        previous: torch.Tensor | None = None
        remaining = np.arange(xb.shape[0])  # positions in the batch of the samples still running
        for k in range(self.num_exits):
            h, logits, failure = self.model.exit_step(k, h, previous)
            host_logits = logits.float().cpu().numpy()  # brings the stage's result to the host (synchronises)
            learned = torch.sigmoid(failure.float()).cpu().numpy() if failure is not None else None
            predicted, score, leave = decider(k, host_logits, learned)
            done = remaining[leave]
            labels[done], exits[done], scores[done] = predicted[leave], k, score[leave]
            if leave.all() or k == self.num_exits - 1:
                return
            if leave.any():
                keep = torch.from_numpy(np.flatnonzero(~leave)).to(self.device)
                h, logits = self.model.keep_samples(h, keep), logits.index_select(0, keep)
                remaining = remaining[~leave]
            previous = logits

    def _check_input(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
                raise ConfigError(f"input: expected a numeric array, got dtype {x.dtype}")
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"input: expected a torch.Tensor or numpy array, got {type(x).__name__}")
        expected = tuple(self.model.input_shape)
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise ConfigError(f"input: expected shape [N, {', '.join(map(str, expected))}] (the model's input, "
                              f"preprocessed like its dataset), got {list(x.shape)}")
        if x.shape[0] == 0:
            raise ConfigError("input: no samples (N = 0)")
        return x


# --------------------------------------------------------------------------------------------------- profiling
@dataclasses.dataclass
class LatencyProfile:
    """Cumulative latency to each exit of one batch, from repeated timed runs.

    Attributes:
        batch_size: samples per timed batch; device: where it ran.
        median_ms, p10_ms, p90_ms: float [K] milliseconds from the batch's start to exit k's logits on the host.
        repeats, warmup: timed runs and untimed runs before them.
        flops: float [K] the model's counted cumulative FLOPs per sample (None when not counted), for comparison.
    """

    batch_size: int
    device: str
    median_ms: np.ndarray
    p10_ms: np.ndarray
    p90_ms: np.ndarray
    repeats: int
    warmup: int
    flops: np.ndarray | None = None

    @property
    def per_sample_ms(self) -> np.ndarray:
        """median_ms / batch_size [K]: the per-sample cost written into exit outputs as ``latency_ms``."""
        return self.median_ms / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "device": self.device,
            "median_ms": self.median_ms.tolist(),
            "p10_ms": self.p10_ms.tolist(),
            "p90_ms": self.p90_ms.tolist(),
            "per_sample_ms": self.per_sample_ms.tolist(),
            "repeats": self.repeats,
            "warmup": self.warmup,
            "flops": None if self.flops is None else np.asarray(self.flops, dtype=np.float64).tolist(),
        }


def profile_latency(
    model: MultiExitModel, example: torch.Tensor, *, device: str | torch.device = "cpu", warmup: int = 3,
    repeats: int = 20,
) -> LatencyProfile:
    """Time the cumulative latency to each exit for the batch `example` [B, *input_shape].

    Every run passes the whole batch through all K segments (no sample leaves), recording the time after each
    exit's logits reach the host; exit k's latency is therefore what reaching exit k costs a batch that gets that
    far. The model is moved to `device` and put in eval mode (in place).

    Raises:
        ConfigError: warmup < 0, repeats < 1, an unavailable device or an input of the wrong shape.
    """
    if warmup < 0 or repeats < 1:
        raise ConfigError(f"profile: needs warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    expected = tuple(model.input_shape)
    if example.ndim != len(expected) + 1 or tuple(example.shape[1:]) != expected or example.shape[0] < 1:
        raise ConfigError(f"input: expected shape [B, {', '.join(map(str, expected))}], got {list(example.shape)}")
    dtype = next(model.parameters()).dtype
    x = example.to(dev, dtype=dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = np.empty((repeats, model.num_exits))
    with torch.inference_mode():
        for run in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            h, previous = x, None
            for k in range(model.num_exits):
                h, previous, failure = model.exit_step(k, h, previous)
                previous.float().cpu()
                if failure is not None:
                    failure.float().cpu()
                sync()
                if run >= warmup:
                    times[run - warmup, k] = time.perf_counter() - start
    times *= 1e3
    return LatencyProfile(
        batch_size=int(x.shape[0]),
        device=str(dev),
        median_ms=np.median(times, axis=0),
        p10_ms=np.percentile(times, 10, axis=0),
        p90_ms=np.percentile(times, 90, axis=0),
        repeats=repeats,
        warmup=warmup,
        flops=None if model.costs is None else np.asarray(model.costs, dtype=np.float64),
    )


# --------------------------------------------------------------------------------------------------- model folders
#: The exit-output files of a model folder that `profile_model_dir` writes `latency_ms` into.
OUTPUT_SPLITS = ("val", "test")


def load_model_dir(model_dir: str | os.PathLike) -> tuple[MultiExitModel, TrainConfig]:
    """The trained model (CPU, eval mode) and the resolved config of a folder `eeopt train` wrote.

    Raises:
        ConfigError: the folder or its model.pt is missing or not written by `eeopt train`.
    """
    from eeopt.training.checkpoint import read_model_file
    from eeopt.training.model_files import load_model

    folder = Path(model_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such model folder (one written by `eeopt train --output-dir`)")
    path = folder / "model.pt"
    payload = read_model_file(path)
    try:
        cfg = TrainConfig.model_validate(payload["config"])
    except Exception as exc:  # pydantic's ValidationError, or a model.pt of an older layout
        raise ConfigError(f"{path}: its config is not a train config ({type(exc).__name__})") from None
    return load_model(path), cfg


def split_data(cfg: TrainConfig, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """Inputs [N, C, H, W] and labels [N] of the `split` ("val" or "test") a run with `cfg` trained and reported
    on: the same dataset, seed, subsets and normalisation (`eeopt.data.load_dataset` is deterministic in them).

    Raises:
        ConfigError: an unknown split; DataError: the dataset's files are missing.
    """
    if split not in OUTPUT_SPLITS:
        raise ConfigError(f"--split: expected val or test, got {split!r}")
    from eeopt.data import load_dataset, split_tensors
    from eeopt.models.external import pretrained_data

    # A pretrained timm/torchvision model trained at its weights' input size and statistics: read the split so too.
    data_cfg, stats = pretrained_data(cfg.model, cfg.data, check_weights=False)
    dataset = load_dataset(data_cfg, cfg.seed, pretrained_stats=stats)
    x, y = split_tensors(getattr(dataset, split))  # a streamed split is read whole
    return x, y.numpy().astype(np.int64)


def predict_split(
    model_dir: str | os.PathLike, policy: PolicyFile, split: str = "test", *, batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, Any], Prediction]:
    """Run `policy` with `EarlyExitPredictor` over a model folder's val or test split.

    Returns:
        ({"split", "accuracy", "mean_cost" (the policy's costs, in its cost_unit), "cost_unit", "exit_shares" [K],
        "samples", "batch_size", "device", "seconds"; for a certified policy "certification": its promise and the
        realised risk, see `eeopt.risk_control.realised_risk`}, the per-sample `Prediction`).
    """
    model, cfg = load_model_dir(model_dir)
    x, y = split_data(cfg, split)
    predictor = EarlyExitPredictor(model, policy, device=device)
    started = time.perf_counter()
    prediction = predictor.predict(x, batch_size=batch_size)
    seconds = time.perf_counter() - started
    summary = {"split": split, **decision_summary(policy, prediction.labels, prediction.exits, y),
               "batch_size": batch_size, "device": str(predictor.device), "seconds": seconds}
    if policy.certification is not None:  # what a certified policy promised, and the risk it realised here
        from eeopt.risk_control import realised_risk

        stored = Path(model_dir) / f"{split}.npz"
        outputs = ExitOutputs.load(stored) if stored.is_file() else None
        summary["certification"] = realised_risk(policy, prediction.labels, prediction.exits, y, outputs)
    return summary, prediction


def profile_model_dir(
    model_dir: str | os.PathLike, *, device: str | torch.device = "cpu", batch_size: int = 1, warmup: int = 3,
    repeats: int = 20, write: bool = True, seed: int = 0,
) -> tuple[LatencyProfile, list[Path]]:
    """Profile a model folder's network on random inputs of its input shape (latency does not depend on the
    values: every run goes through all exits) and, with `write`, store the per-sample latency
    (`LatencyProfile.per_sample_ms`, ms per sample at this batch size) as ``latency_ms`` in its val.npz and
    test.npz. Returns the profile and the files written.

    Raises:
        ConfigError: see `load_model_dir` and `profile_latency`, or batch_size < 1.
        ExitOutputsError: an exit-outputs file of the folder has another number of exits than the model.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")
    folder = Path(model_dir)
    model, _ = load_model_dir(folder)
    outputs = {}
    if write:  # read (and check) them before spending time on the profile
        for split in OUTPUT_SPLITS:
            path = folder / f"{split}.npz"
            if path.is_file():
                out = ExitOutputs.load(path)
                if out.num_exits != model.num_exits:
                    raise ExitOutputsError(f"{path}: has {out.num_exits} exits but {folder / 'model.pt'} has "
                                           f"{model.num_exits}")
                outputs[path] = out
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn((batch_size, *model.input_shape), generator=generator)
    profile = profile_latency(model, example, device=device, warmup=warmup, repeats=repeats)
    from eeopt.training.checkpoint import atomic_save_outputs

    written = [atomic_save_outputs(dataclasses.replace(out, latency_ms=profile.per_sample_ms), path)
               for path, out in outputs.items()]
    return profile, written
