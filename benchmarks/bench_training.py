"""Training cost of the exits: seconds per epoch of tinyresnet with an exit after every block vs the final exit only;
then the same model's images per second at fp32 and under bf16 autocast on the CPU (`training.precision`).

    .venv/bin/python benchmarks/bench_training.py [--train-subset 10000] [--repeats 3] [--threads 2]
    .venv/bin/python benchmarks/bench_training.py --precision-only [--train-subset 2000]   # only fp32 vs bf16

Both models share the backbone, data, optimizer (AdamW, batch 128) and seed. Runs are interleaved after one warm-up
run; each column is the best of `--repeats`: "seconds / epoch" is history's wall-clock `seconds` (the training steps
plus per-exit accuracy on a 500-image val split), "CPU seconds / run" the process CPU time of the whole `train` call
(steadier when other processes share the cores). Prints a markdown table; the target is a ratio <= 1.3. The
precision runs (every exit, interleaved fp32 / bf16 after a bf16 warm-up) report history's `images_per_s` (the
training steps only), best of `--repeats`, with the load average before them and their own date, command and
training-set size. `--precision-only` runs just those and replaces the "precision" part of an existing result
file, keeping the exits comparison. Writes benchmarks/results/training.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from eeopt.config import TrainConfig
from eeopt.data import load_dataset
from eeopt.training import train

from common import RESULTS, command_line, machine_info, progress, write_result


def config(exits, args, precision: str = "fp32") -> TrainConfig:
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
            "training": {"epochs": 1, "batch_size": 128, "device": "cpu", "threads": args.threads,
                         "precision": precision},
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
    parser.add_argument("--precision-only", action="store_true",
                        help="only fp32 vs bf16, into the existing result file's 'precision'")
    args = parser.parse_args()
    machine = machine_info()
    if args.precision_only:
        path = args.out or RESULTS / "training.json"
        payload = json.loads(open(path).read())
        dataset = load_dataset(config("every_block", args).data, seed=0)
        payload["results"]["precision"] = precision_runs(dataset, args)
        with open(path, "w") as f:
            f.write(json.dumps(payload, indent=1, allow_nan=True) + "\n")
        progress(f"wrote the precision part of {path}")
        print_precision(payload["results"]["precision"], args)
        return

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

    precision = precision_runs(dataset, args)

    base = "final exit only"
    rows = []
    for name, exits in variants.items():
        w, c = min(wall[name]), min(cpu[name])
        rows.append({"model": name, "exits": 1 if exits != "every_block" else 5, "epoch_s": w,
                     "epoch_ratio": w / min(wall[base]), "cpu_s": c, "cpu_ratio": c / min(cpu[base])})
    write_result("training", {"train_subset": args.train_subset, "width": args.width, "threads": args.threads,
                              "repeats": args.repeats, "rows": rows, "wall": wall, "cpu": cpu,
                              "precision": precision}, machine, out=args.out)
    print(f"\nFashion-MNIST, {args.train_subset} training images, tinyresnet width {args.width}, batch 128, "
          f"{args.threads} torch threads, best of {args.repeats}\n")
    print("| model | exits | seconds / epoch (wall) | ratio | CPU seconds / run | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, exits in variants.items():
        k = 1 if exits != "every_block" else 5
        w, c = min(wall[name]), min(cpu[name])
        print(f"| {name} | {k} | {w:.2f} | {w / min(wall[base]):.2f} | {c:.2f} | {c / min(cpu[base]):.2f} |")
    print_precision(precision, args)


def print_precision(precision: dict, args) -> None:
    print(f"\nimages / s (training steps), every exit, best of {args.repeats}; load average before: "
          f"{' / '.join(f'{v:.2f}' for v in precision['load_average'])}\n")
    print("| precision | images / s | vs fp32 |\n| --- | ---: | ---: |")
    for name, best in precision["best_images_per_s"].items():
        print(f"| {name} | {best:,.0f} | {best / precision['best_images_per_s']['fp32']:.2f} |")


def precision_runs(dataset, args) -> dict:
    """Images per second of one epoch (every exit) at fp32 and under bf16 autocast, interleaved, best of repeats."""
    from eeopt.names import IMAGES_PER_S

    load = [round(v, 2) for v in os.getloadavg()]
    date = machine_info()["date"]
    progress(f"precision: bf16 warm-up, then {args.repeats} x (fp32, bf16); load average {load}")
    train(config("every_block", args, "bf16"), progress=False, dataset=dataset)  # warm-up: bf16 kernels' first use
    runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for name in runs:
            result = train(config("every_block", args, name), progress=False, dataset=dataset)
            runs[name].append(result.history[0][IMAGES_PER_S])
            progress(f"{name}: {runs[name][-1]:,.0f} images/s")
    best = {name: max(values) for name, values in runs.items()}
    return {"date": date, "command": command_line(), "train_subset": args.train_subset,
            "threads": args.threads, "width": args.width,
            "load_average": load, "images_per_s": runs, "best_images_per_s": best,
            "bf16_over_fp32": best["bf16"] / best["fp32"], "bf16_cpu": _bf16_cpu_flags()}


def _bf16_cpu_flags() -> list[str]:
    """The CPU's bfloat16 instructions (without them torch emulates bf16 matmuls and convolutions, slowly)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in ("avx512_bf16", "amx_bf16") if f in flags]


if __name__ == "__main__":
    main()
