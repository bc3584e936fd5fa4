"""Policy evaluation and the global sweep on one pinned thread: vectorised vs per-policy loops, and sweep scaling.

    .venv/bin/python benchmarks/bench_policies.py [--quick]

(a) M = 1,000 threshold policies x N = 10,000 samples x K = 8 exits (synthetic exit outputs, msp scores computed
    once, thresholds at random per-exit score quantiles as the threshold search draws them): `evaluate_thresholds`
    against two per-policy loops. The loops are timed on the first `--loop-policies` policies and scaled to M, and
    their results are checked against `evaluate_thresholds` on those policies.
(b) `global_sweep` at N = 1,000,000, K = 8 from synthetic score / correctness arrays (no logits): a realistic
    case (scores grow with depth, about 4 record scores per sample) and the worst case (every score a record).
Times are the best of `--repeats` runs (time.perf_counter). Prints a markdown table and writes
benchmarks/results/policies.json (or `--out`).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy is imported
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from eeopt.core.metrics.efficiency import global_sweep  # noqa: E402
from eeopt.core.policies import evaluate_thresholds  # noqa: E402
from eeopt.core.scores import compute_score  # noqa: E402
from eeopt.core.synthetic import synthetic_exit_outputs  # noqa: E402

from common import machine_info, progress, write_result  # noqa: E402


def loop_exit_index(scores, correct, costs, thresholds):
    """The straightforward loop: per policy, a masked pass per exit assigns exit indices, then gathers."""
    k, n = scores.shape
    samples = np.arange(n)
    acc, mean_cost, share = [], [], []
    for t in thresholds:
        exits = np.full(n, k - 1)
        undecided = np.ones(n, dtype=bool)
        for e in range(k - 1):
            leave = undecided & (scores[e] >= t[e])
            exits[leave] = e
            undecided &= ~leave
        acc.append(correct[exits, samples].mean())
        mean_cost.append(costs[exits].mean())
        share.append(np.bincount(exits, minlength=k) / n)
    return np.array(acc), np.array(mean_cost), np.array(share)


def loop_masked_heads(probs, labels, scores, costs, thresholds):
    """The loop NOTES.md measured: softmax once, then per policy a masked pass over the heads that takes each
    leaving sample's prediction from that head's probabilities (argmax) and compares it with the label."""
    k, n = scores.shape
    acc, mean_cost, share = [], [], []
    for t in thresholds:
        remaining = np.ones(n, dtype=bool)
        hits, total_cost, counts = 0, 0.0, np.zeros(k)
        for e in range(k):
            leave = remaining & (scores[e] >= t[e]) if e < k - 1 else remaining.copy()
            hits += int((probs[e][leave].argmax(axis=1) == labels[leave]).sum())
            counts[e] = leave.sum()
            total_cost += counts[e] * costs[e]
            remaining &= ~leave
        acc.append(hits / n)
        mean_cost.append(total_cost / n)
        share.append(counts / n)
    return np.array(acc), np.array(mean_cost), np.array(share)


def loop_counting(scores, correct, costs, thresholds):
    """A tighter loop: per policy and exit, count the masked samples (no exit-index array, no gathers)."""
    k, n = scores.shape
    acc, share = [], []
    for t in thresholds:
        undecided = np.ones(n, dtype=bool)
        n_correct, counts = 0, np.zeros(k)
        for e in range(k):
            leave = undecided & (scores[e] >= t[e]) if e < k - 1 else undecided
            counts[e] = np.count_nonzero(leave)
            n_correct += np.count_nonzero(leave & correct[e])
            undecided &= ~leave
        acc.append(n_correct / n)
        share.append(counts / n)
    share = np.array(share)
    return np.array(acc), share @ costs, share


def best_of(repeats: int, fn, *args) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - started)
    return min(times), out


def sweep_data(n: int, k: int, worst: bool, seed: int = 0):
    """Scores [K, N] that grow with depth around a per-sample difficulty; correctness drawn from the scores."""
    rng = np.random.default_rng(seed)
    if worst:
        scores = np.sort(rng.random((k, n)), axis=0)  # increasing along exits: every score is a record
    else:
        difficulty = rng.normal(size=n)
        depth = np.linspace(-1.0, 1.5, k)[:, None]
        scores = 1.0 / (1.0 + np.exp(-(depth - difficulty[None, :] + 0.7 * rng.normal(size=(k, n)))))
    correct = rng.random((k, n)) < scores
    return scores, correct, np.arange(1, k + 1) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sweep, fewer loop policies and repeats")
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--exits", type=int, default=8)
    parser.add_argument("--loop-policies", type=int, default=None, help="policies the loops run on (default 100)")
    parser.add_argument("--sweep-samples", type=int, default=None, help="N of the sweep (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=None, help="best of this many runs (default 3)")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/policies.json)")
    args = parser.parse_args()
    machine = machine_info()
    loop_m = args.loop_policies or (20 if args.quick else 100)
    sweep_n = args.sweep_samples or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats or (2 if args.quick else 3)
    m, n, k = args.policies, args.samples, args.exits

    outputs = synthetic_exit_outputs(k, n, 10, seed=0)
    scores, correct, costs = compute_score("msp", outputs), outputs.correct, outputs.costs
    rng = np.random.default_rng(0)
    ordered = np.sort(scores[:-1], axis=1)
    positions = np.minimum((rng.random((m, k - 1)) * n).astype(np.int64), n - 1)
    thresholds = ordered[np.arange(k - 1)[None, :], positions]  # [M, K-1] random per-exit quantiles

    t_vec, result = best_of(repeats, evaluate_thresholds, scores, correct, costs, thresholds)
    progress(f"evaluate_thresholds: {t_vec:.4f} s")
    rows = [("(a) `evaluate_thresholds`", f"M={m}, N={n}, K={k}", t_vec, "measured")]
    record = {"policies": m, "samples": n, "exits": k, "loop_policies": loop_m, "sweep_samples": sweep_n,
              "repeats": repeats, "evaluate_thresholds_s": t_vec, "loops": [], "sweeps": []}
    probs, labels = outputs.probs, outputs.labels

    def masked_heads(_scores, _correct, _costs, thr):
        return loop_masked_heads(probs, labels, _scores, _costs, thr)

    for name, loop in (("per-policy loop, masked argmax over heads (NOTES.md)", masked_heads),
                       ("per-policy loop (exit index + gathers)", loop_exit_index),
                       ("per-policy loop (count_nonzero per exit)", loop_counting)):
        t_loop, (acc, cost, share) = best_of(repeats, loop, scores, correct, costs, thresholds[:loop_m])
        np.testing.assert_array_equal(acc, result.accuracy[:loop_m])
        np.testing.assert_array_equal(share, result.exit_share[:loop_m])
        np.testing.assert_allclose(cost, result.mean_cost[:loop_m], rtol=1e-12)
        rows.append((f"(a) {name}", f"M={m}, N={n}, K={k}", t_loop * m / loop_m,
                     f"{loop_m} policies x {m // loop_m}; speed-up of evaluate_thresholds "
                     f"{t_loop * m / loop_m / t_vec:.0f}x"))
        record["loops"].append({"name": name, "seconds": t_loop * m / loop_m,
                                "speedup": t_loop * m / loop_m / t_vec})
        progress(f"{name}: {t_loop * m / loop_m:.4f} s (scaled)")

    for label, worst in (("realistic scores", False), ("worst case, every score a record", True)):
        s, c, sc = sweep_data(sweep_n, k, worst)
        events = int(np.count_nonzero(np.diff(np.fmax.accumulate(s[:-1], axis=0), axis=0) > 0)) + sweep_n
        t_sweep, curve = best_of(repeats, global_sweep, s, c, sc)
        rows.append((f"(b) `global_sweep`, {label}", f"N={sweep_n:,}, K={k}", t_sweep,
                     f"{events:,} events, {curve.threshold.size:,} curve points"))
        record["sweeps"].append({"name": label, "seconds": t_sweep, "events": events,
                                 "points": int(curve.threshold.size)})
        progress(f"global_sweep, {label}: {t_sweep:.4f} s")
        del s, c, curve

    cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    record["pinned_cpu"] = cpu
    record["rows"] = [{"benchmark": a, "size": b, "seconds": c, "notes": d} for a, b, c, d in rows]
    write_result("policies", record, machine, out=args.out)
    print(f"\nOne thread pinned (cpu {cpu}), "
          f"numpy {np.__version__}, Python {platform.python_version()}, best of {repeats}\n")
    print("| benchmark | size | seconds | notes |")
    print("| --- | --- | ---: | --- |")
    for name, size, seconds, notes in rows:
        print(f"| {name} | {size} | {seconds:.4f} | {notes} |")


if __name__ == "__main__":
    main()
