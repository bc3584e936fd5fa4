"""Data throughput: the streamed path (DataLoader with 0, 1, 2 workers) against the in-memory path, on an image folder.

    .venv/bin/python benchmarks/bench_data.py [--train 10000] [--test 1000] [--workers 0 1 2] [--threads 1]
                                              [--repeats 2]

The folder holds Fashion-MNIST PNGs (the first `--train` training and `--test` test images of Debian's IDX files,
written once to benchmarks/cache/fashion-png-N/, git-ignored). For each path: `load_dataset` seconds (in memory:
every image decoded; streamed: the file listing and the train statistics from up to 5000 images), one shuffled pass
over the train split without a model (the data alone; a streamed split starts its workers here), and one training
epoch of `tinyresnet` (width 16, batch 128, `--threads` torch threads in the training process) whose seconds
include the per-exit accuracy on the val split, and the training process's CPU seconds over that `train` call (with
workers, their decoding is not in it). Images per second = train images / seconds. One warm-up run first
(imports, first-call allocations), then `--repeats` interleaved rounds over the paths (so drifting load hits all
alike); each number is the best of its rounds. Writes benchmarks/results/data.json (or `--out`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from eeopt.config import TrainConfig
from eeopt.data import iterate_batches, load_dataset, read_idx
from eeopt.training import train

from common import CACHE, FASHION_ROOT, machine_info, progress, write_result


def write_pngs(root: Path, n_train: int, n_test: int) -> Path:
    """root/{train,test}/<label>/<k>.png from Debian's Fashion-MNIST files (skipped when already written)."""
    from PIL import Image

    folder = root / f"fashion-png-{n_train}-{n_test}"
    done = folder / "complete"
    if done.is_file():
        progress(f"using the PNG folder {folder}")
        return folder
    progress(f"writing {n_train} + {n_test} PNGs into {folder}")
    parts = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", n_train),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", n_test)}
    for part, (images_file, labels_file, n) in parts.items():
        images = read_idx(Path(FASHION_ROOT) / images_file)[:n]
        labels = read_idx(Path(FASHION_ROOT) / labels_file)[:n]
        for label in np.unique(labels):
            (folder / part / f"{label}").mkdir(parents=True, exist_ok=True)
        for k, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(folder / part / f"{label}" / f"{k:05d}.png")
    done.write_text("ok\n")
    return folder


def config(folder: Path, args, stream: bool, workers: int | None, train_subset: int | None = None) -> TrainConfig:
    return TrainConfig.model_validate({
        "seed": 0,
        "data": {"name": "imagefolder", "root": str(folder), "stream": stream, "workers": workers,
                 "train_subset": train_subset},
        "model": {"backbone": "tinyresnet", "width": args.width, "exits": "every_block", "head": "linear"},
        "training": {"epochs": 1, "batch_size": args.batch_size, "optimizer": "adamw", "lr": 2e-3,
                     "device": "cpu", "threads": args.threads},
    })


def measure(folder: Path, args, stream: bool, workers: int | None) -> dict:
    cfg = config(folder, args, stream, workers)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    dataset = load_dataset(cfg.data, cfg.seed)
    load_s = time.perf_counter() - started
    n = len(dataset.train)
    started = time.perf_counter()
    seen = sum(len(y) for _, y in iterate_batches(dataset.train, args.batch_size, True, torch.Generator().manual_seed(0)))
    data_s = time.perf_counter() - started
    assert seen == n
    cpu_started = time.process_time()
    result = train(cfg, progress=False, dataset=dataset)
    cpu_s = time.process_time() - cpu_started
    epoch_s = result.history[0]["seconds"]
    row = {"path": "in memory" if not stream else f"streamed, {workers} workers", "stream": stream,
           "workers": workers, "train_images": n, "val_images": len(dataset.val), "load_s": load_s,
           "data_pass_s": data_s, "data_images_per_s": n / data_s, "epoch_s": epoch_s,
           "epoch_images_per_s": n / epoch_s, "train_process_cpu_s": cpu_s, "val_acc_last": result.history[0][f"val_acc_exit{result.val.num_exits}"]}
    progress(f"{row['path']}: load {load_s:.1f} s, data pass {data_s:.1f} s ({row['data_images_per_s']:.0f} img/s), "
             f"epoch {epoch_s:.1f} s ({row['epoch_images_per_s']:.0f} img/s), training process CPU {cpu_s:.1f} s")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=1_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/data.json)")
    args = parser.parse_args()
    machine = machine_info()
    folder = write_pngs(CACHE, args.train, args.test)
    progress("warm-up: one small in-memory run")
    warm = config(folder, args, stream=False, workers=None, train_subset=512)
    train(warm, progress=False)
    variants = [(False, None)] + [(True, w) for w in args.workers]
    runs: list[list[dict]] = [[] for _ in variants]
    for round_ in range(args.repeats):
        progress(f"round {round_ + 1} of {args.repeats}")
        for k, (stream, workers) in enumerate(variants):
            runs[k].append(measure(folder, args, stream=stream, workers=workers))
    rows = []
    for measured in runs:
        best = dict(measured[0])
        for key in ("load_s", "data_pass_s", "epoch_s", "train_process_cpu_s"):
            best[key] = min(m[key] for m in measured)
        best["data_images_per_s"] = best["train_images"] / best["data_pass_s"]
        best["epoch_images_per_s"] = best["train_images"] / best["epoch_s"]
        best["epoch_s_runs"] = [m["epoch_s"] for m in measured]
        rows.append(best)
    write_result("data", {"train": args.train, "test": args.test, "threads": args.threads, "width": args.width,
                          "batch_size": args.batch_size, "repeats": args.repeats, "rows": rows}, machine,
                 out=args.out)
    print(f"\nImage folder of {args.train} Fashion-MNIST PNGs (28x28 grey), tinyresnet width {args.width}, "
          f"batch {args.batch_size}, {args.threads} training thread(s)\n")
    print("| path | load s | data pass img/s | epoch s | epoch img/s | training process CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['path']} | {r['load_s']:.1f} | {r['data_images_per_s']:.0f} | {r['epoch_s']:.1f} | "
              f"{r['epoch_images_per_s']:.0f} | {r['train_process_cpu_s']:.1f} |")


if __name__ == "__main__":
    main()
