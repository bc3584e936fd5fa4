"""Trials sharing a GPU: benchmarks/gpu_study.yaml (2 trials at gpus_per_trial 0.5, at once) run as a real study in
bf16 and in fp32; images per second of each trial's epochs as MLflow holds them (`train/images_per_s`).

    .venv/bin/python benchmarks/bench_gpu_training.py                 # CUDA; benchmarks/gpu_check.sh runs it
    .venv/bin/python benchmarks/bench_gpu_training.py --device cpu --train-subset 512 --out /tmp/dry.json

Each precision is its own study (Optuna storage, MLflow store and runs folder in a temporary folder; local Ray).
Per trial: every epoch's images per second, the device it trained on (`env.device`) and the GPU Ray gave it
(`eeopt.gpus`); the bf16 / fp32 ratio compares the mean over trials of the last epoch (the first pays cuDNN's kernel
search). `--device cpu` is a dry run of the same path without a GPU (gpus_per_trial 0, one CPU per trial).
Writes benchmarks/results/gpu_training.json (or `--out`), which `report.py` renders in BENCHMARKS.md's GPU section.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine_info, progress, write_result

STUDY = ROOT / "benchmarks" / "gpu_study.yaml"
PRECISIONS = ("bf16", "fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--train-subset", type=int, default=None, help="fewer training images (a dry run)")
    parser.add_argument("--epochs", type=int, default=None, help="override training.epochs")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/gpu_training.json)")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu_training: torch sees no CUDA device (use --device cpu for a dry run)")
    if args.device == "cpu" and args.out is None:
        sys.exit("bench_gpu_training: a --device cpu dry run needs --out (the results file is for the GPU run)")
    machine = machine_info()
    from eeopt.study import Study

    studies = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            overrides = _overrides(precision, Path(tmp), args)
            study = Study.from_yaml(STUDY, overrides)
            trials = study.settings.trials
            progress(f"{precision}: {trials} trials, {study.settings.resources.gpus_per_trial:g} GPU and "
                     f"{study.settings.resources.cpus_per_trial:g} CPUs each, {study.settings.resources.max_concurrent}"
                     " at once")
            started = time.perf_counter()
            summary = study.run(progress=False)
            seconds = time.perf_counter() - started
            if summary.completed != trials:
                sys.exit(f"bench_gpu_training: {precision}: {summary.completed} of {trials} trials completed "
                         f"({summary})")
            rows = _trial_rows(f"sqlite:///{Path(tmp) / 'mlflow.db'}", study.name)
            for row in rows:
                progress(f"  trial {row['trial']} on {row['device']} (GPU {row['gpus']}): images/s per epoch "
                         + ", ".join(f"{v:,.0f}" for v in row["images_per_s"]))
            studies[precision] = {"seconds": seconds, "trials": rows,
                                  "last_epoch_images_per_s": _mean([r["images_per_s"][-1] for r in rows])}
    ratio = studies["bf16"]["last_epoch_images_per_s"] / studies["fp32"]["last_epoch_images_per_s"]
    import yaml

    config = yaml.safe_load(STUDY.read_text())
    results = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "study": "benchmarks/gpu_study.yaml",
        "overrides": _overrides("{precision}", Path("{tmp}"), args),
        "train_subset": args.train_subset,
        "epochs": args.epochs or config["training"]["epochs"],
        "batch_size": config["training"]["batch_size"],
        "width": config["model"]["width"],
        "resources": config["study"]["resources"] if args.device == "cuda" else _CPU_RESOURCES,
        "studies": studies,
        "bf16_over_fp32": ratio,
    }
    write_result("gpu_training", results, machine, out=args.out)
    print(f"\nimages / s, last epoch, mean over trials: bf16 {studies['bf16']['last_epoch_images_per_s']:,.0f}, "
          f"fp32 {studies['fp32']['last_epoch_images_per_s']:,.0f}; bf16 / fp32 = {ratio:.2f}")


_CPU_RESOURCES = {"cpus_per_trial": 1, "gpus_per_trial": 0, "max_concurrent": 2}


def _overrides(precision: str, tmp: Path, args) -> list[str]:
    """The study file's --set overrides for one precision: its name, stores in `tmp`, and the dry run's settings."""
    out = [f"training.precision={precision}", f"study.name=gpu-{precision}",
           f"study.storage=sqlite:///{tmp / 'eeopt.db'}", f"study.mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
           f"study.runs_dir={tmp / 'runs'}"]
    if args.train_subset is not None:
        out.append(f"data.train_subset={args.train_subset}")
    if args.epochs is not None:
        out.append(f"training.epochs={args.epochs}")
    if args.device == "cpu":
        out += ["training.device=cpu", "policy.trials=30", "study.ray.num_cpus=2",
                *(f"study.resources.{k}={v}" for k, v in _CPU_RESOURCES.items())]
    return out


def _trial_rows(tracking_uri: str, study_name: str) -> list[dict]:
    """Per trial run of the study's MLflow experiment: its number, images/s per epoch, device and GPU tags."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    rows = []
    for run in client.search_runs([experiment.experiment_id], "tags.`eeopt.role` = 'trial'"):
        history = sorted(client.get_metric_history(run.info.run_id, "train/images_per_s"), key=lambda m: m.step)
        if not history:
            sys.exit(f"bench_gpu_training: trial run {run.info.run_name} logged no train/images_per_s")
        tags = run.data.tags
        rows.append({
            "trial": int(tags["optuna.trial_number"]),
            "images_per_s": [m.value for m in history],
            "device": tags.get("env.device", "unknown"),
            "gpus": tags.get("eeopt.gpus", "unknown"),
            "gpu_name": tags.get("eeopt.gpu_name"),
            "lr": float(run.data.params.get("training.lr", "nan")),
        })
    return sorted(rows, key=lambda r: r["trial"])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


if __name__ == "__main__":
    main()
