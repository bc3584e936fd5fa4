"""Training cost of the exits: seconds per epoch of tinyresnet with an exit after every block vs the final exit only.

    .venv/bin/python benchmarks/bench_training.py [--train-subset 10000] [--repeats 3] [--threads 2]

Both models share the backbone, data, optimizer (AdamW, batch 128) and seed. Runs are interleaved after one warm-up
run; each column is the best of `--repeats`: "seconds / epoch" is history's wall-clock `seconds` (the training steps
plus per-exit accuracy on a 500-image val split), "CPU seconds / run" the process CPU time of the whole `train` call
(steadier when other processes share the cores). Prints a markdown table; the target is a ratio <= 1.3. Writes
benchmarks/results/training.json (or `--out`).
"""

from __future__ import annotations

import argparse
import time

from eeopt.config import TrainConfig
from eeopt.data import load_dataset
from eeopt.training import train

from common import machine_info, progress, write_result


def config(exits, args) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "seed": 0,
            "data": {
                "name": "fashion-mnist",
                "root": args.root,
                "train_subset": args.train_subset,
                "val_subset": 500,
                "test_subset": 100,
            },
            "model": {"backbone": "tinyresnet", "width": args.width, "exits": exits, "head": "linear"},
            "training": {"epochs": 1, "batch_size": 128, "device": "cpu", "threads": args.threads},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--train-subset", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/training.json)")
    args = parser.parse_args()
    machine = machine_info()

    variants = {"final exit only": [5], "every block (5 exits)": "every_block"}
    dataset = load_dataset(config("every_block", args).data, seed=0)
    progress(f"warm-up epoch ({args.train_subset} images), then {args.repeats} x 2 timed epochs")
    train(config([5], args), progress=False, dataset=dataset)  # warm-up: first-call allocations, caches
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        for name, exits in variants.items():
            started = time.process_time()
            result = train(config(exits, args), progress=False, dataset=dataset)
            wall[name].append(result.history[0]["seconds"])
            cpu[name].append(time.process_time() - started)
            progress(f"{name}: epoch {wall[name][-1]:.2f} s wall, whole run {cpu[name][-1]:.2f} s CPU")

    base = "final exit only"
    rows = []
    for name, exits in variants.items():
        w, c = min(wall[name]), min(cpu[name])
        rows.append({"model": name, "exits": 1 if exits != "every_block" else 5, "epoch_s": w,
                     "epoch_ratio": w / min(wall[base]), "cpu_s": c, "cpu_ratio": c / min(cpu[base])})
    write_result("training", {"train_subset": args.train_subset, "width": args.width, "threads": args.threads,
                              "repeats": args.repeats, "rows": rows, "wall": wall, "cpu": cpu}, machine, out=args.out)
    print(f"\nFashion-MNIST, {args.train_subset} training images, tinyresnet width {args.width}, batch 128, "
          f"{args.threads} torch threads, best of {args.repeats}\n")
    print("| model | exits | seconds / epoch (wall) | ratio | CPU seconds / run | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, exits in variants.items():
        k = 1 if exits != "every_block" else 5
        w, c = min(wall[name]), min(cpu[name])
        print(f"| {name} | {k} | {w:.2f} | {w / min(wall[base]):.2f} | {c:.2f} | {c / min(cpu[base]):.2f} |")

if __name__ == "__main__":
    main()
