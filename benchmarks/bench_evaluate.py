"""`eeopt exits evaluate big.npz --json` against a research-style threshold loop on the same file.

    .venv/bin/python benchmarks/bench_evaluate.py [--samples 200000] [--repeats 3]

The file holds synthetic exit outputs with N = 200,000 samples, K = 8 exits, C = 10 classes (float32 logits, 64 MB).
Both sides are timed as whole processes (wall clock, process start and imports included), the best of `--repeats`:

- eeopt: `python -m eeopt.cli exits evaluate big.npz --json`: every per-exit calibration and failure-prediction
  metric, the exact global sweep over every distinct score, its efficiency metrics, the patience baseline;
- the loop: what research code typically does: load, softmax once, then for each of 100 thresholds a masked pass
  over the 8 heads (a sample leaves at the first head whose max-softmax probability reaches the threshold),
  accuracy and mean cost per threshold. It computes a 100-point approximation of one of eeopt's curves and nothing
  else.

Prints a markdown table (and the time spent in eeopt's stages, in-process, for the record) and writes
benchmarks/results/evaluate.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_info, progress, write_result

LOOP = r"""
import sys
import numpy as np
data = np.load(sys.argv[1])
logits, labels, costs = data["logits"].astype(np.float64), data["labels"], data["costs"]
z = logits - logits.max(-1, keepdims=True)
probs = np.exp(z)
probs /= probs.sum(-1, keepdims=True)
k, n = logits.shape[:2]
out = []
for t in np.linspace(0.0, 1.0, 100):
    remaining = np.ones(n, dtype=bool)
    hits, cost = 0, 0.0
    for e in range(k):
        conf = probs[e].max(-1)
        leave = remaining & ((conf >= t) if e < k - 1 else True)
        hits += int((probs[e][leave].argmax(-1) == labels[leave]).sum())
        cost += costs[e] * int(leave.sum())
        remaining &= ~leave
    out.append((hits / n, cost / n))
print(len(out))
"""


def best_wall(cmd: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def stages(path: Path) -> dict[str, float]:
    """Seconds per stage of `exits evaluate`, in-process (after imports)."""
    from eeopt.core.evaluation import evaluate
    from eeopt.core.outputs import ExitOutputs
    from eeopt.core.prepared import prepare_pair

    times = {}
    t0 = time.perf_counter()
    outputs = ExitOutputs.load(path)
    times["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, split = prepare_pair(None, outputs)
    times["softmax and scores"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = evaluate(split)
    times["metrics, sweep, patience"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    json.dumps(report.to_dict())
    times["JSON"] = time.perf_counter() - t0
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/evaluate.json)")
    args = parser.parse_args()
    machine = machine_info()
    from eeopt.core.synthetic import synthetic_exit_outputs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.npz"
        synthetic_exit_outputs(8, args.samples, 10, seed=0).save(path)
        loop_file = Path(tmp) / "loop.py"
        loop_file.write_text(LOOP)
        progress(f"wrote N = {args.samples:,} synthetic exit outputs; timing `eeopt exits evaluate` "
                 f"({args.repeats} runs)")
        ours = best_wall([sys.executable, "-m", "eeopt.cli", "exits", "evaluate", str(path), "--json"], args.repeats)
        progress(f"eeopt: {ours:.2f} s; timing the research loop ({args.repeats} runs)")
        loop = best_wall([sys.executable, str(loop_file), str(path)], args.repeats)
        progress(f"loop: {loop:.2f} s; timing eeopt's stages in-process")
        parts = stages(path)
    write_result("evaluate", {"samples": args.samples, "exits": 8, "classes": 10, "repeats": args.repeats,
                              "eeopt_s": ours, "loop_s": loop, "speedup": loop / ours, "stages_s": parts},
                 machine, out=args.out)
    print(f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"N = {args.samples:,}, K = 8, C = 10; best of {args.repeats}, whole processes.\n")
    print("| command | seconds | notes |")
    print("| --- | ---: | --- |")
    print(f"| `eeopt exits evaluate big.npz --json` | {ours:.2f} | every metric, exact sweep; "
          f"{loop / ours:.1f}x faster than the loop |")
    print(f"| research loop, 100 thresholds | {loop:.2f} | one 100-point curve |")
    print("\nStages of `exits evaluate` in-process: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))


if __name__ == "__main__":
    main()
