"""Early-exit inference that really saves time: `EarlyExitPredictor` against the full network and against computing
every exit and then choosing, at the policies chosen on val for 25 / 50 / 75 % of the last exit's FLOPs.

    .venv/bin/python benchmarks/bench_inference.py [--threads 1,2] [--samples 2560] [--samples-b1 500] [--quick]
    .venv/bin/python benchmarks/bench_inference.py --device cuda --out benchmarks/results/inference_cuda.json

The model is the benchmark model of `common.MODEL_CONFIG` (tiny ResNet, 5 exits, Fashion-MNIST; cached under
benchmarks/cache/). Policies: `eeopt.core.search.search_policies` on val (msp, no calibrator, 300 NSGA-II trials), then
`eeopt.core.policy_choice.policy_from_search(search, budget)`. Inputs: the first `--samples` test images (batch 256) and the
first `--samples-b1` (batch 1). Three ways to predict them, each timed on the same inputs, interleaved, best of
`--repeats`:

- full network: every block, then the last exit's head only (no early heads): what the policy is compared with;
- compute every exit, then choose: one forward pass with every head (`model(x)`), then the first exit whose msp
  passes its threshold, in torch (the research-code way: it "takes" exits but saves no compute);
- `EarlyExitPredictor(model, policy).predict(x, batch_size)`: stage by stage, samples that exit leave the batch.

FLOPs-predicted speed-up = last exit's FLOPs / mean FLOPs of the policy on these inputs (exit shares the predictor
took, times the policy's cumulative costs). Measured speed-up = full network's time / predictor's time. It also
reports `eeopt.inference.profile_latency` per exit (next to the FLOPs per exit), a latency-predicted speed-up (the
same exit shares times the profiled cumulative latencies) and the host-side decision time per exit (`ExitDecider`,
the calibrate-score-threshold step between stages; at batch 1 `ExitDecider.leaves`, what the predictor calls
there). Targets on CPU: measured / predicted >= 0.8 at batch 256; measured / latency-predicted >= 0.85 at batch 1,
1 thread (what the predictor itself costs beyond the network's exits: decisions, host copies, Python). Writes
benchmarks/results/inference.json (or `--out`).
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from common import load_exit_outputs, machine_info, progress, trained_model, write_result

BUDGETS = (0.25, 0.5, 0.75)


def full_network(model, x, batch_size: int) -> np.ndarray:
    """Predictions of the plain network: all blocks, the last head only."""
    last = model.num_exits - 1
    out = []
    for start in range(0, x.shape[0], batch_size):
        h = x[start:start + batch_size]
        for k in range(model.num_exits):
            h = model.run_blocks(k, h)
        out.append(model.run_head(last, h).argmax(1).cpu().numpy())
    return np.concatenate(out)


def all_exits_then_choose(model, x, batch_size: int, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Every exit computed for every sample, then the first exit whose msp passes its threshold (torch, float32)."""
    import torch

    thr = torch.tensor(np.append(thresholds, -np.inf), dtype=torch.float32)  # [K], the last exit takes the rest
    preds, exits = [], []
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start:start + batch_size]).logits  # [K, B, C]
        conf = torch.softmax(logits.float(), dim=-1).amax(-1)  # [K, B]
        exit_ = (conf >= thr.to(conf.device)[:, None]).to(torch.int8).argmax(0)  # first passing exit [B]
        pred = logits.argmax(-1).gather(0, exit_[None].long())[0]
        preds.append(pred.cpu().numpy())
        exits.append(exit_.cpu().numpy())
    return np.concatenate(preds), np.concatenate(exits).astype(np.int64)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def decision_us(predictor, logits: np.ndarray, repeats: int) -> list[float]:
    """Median microseconds of the predictor's host-side decision at each exit for a batch of logits [K, B, C]: the
    call the predictor makes at each exit at that batch size (`leaves` on the row as Python floats at batch 1; the
    predictor then also scores the samples that left, many at once, which `breakdown` counts)."""
    out = []
    decider = predictor.decider
    for k in range(logits.shape[0]):
        call = (functools.partial(decider.leaves, k, logits[k, 0].tolist()) if logits.shape[1] == 1
                else functools.partial(decider, k, logits[k]))
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        out.append(float(np.median(times) * 1e6))
    return out


class TimedDecider:
    """An `ExitDecider` whose two entry points (a batch: `__call__`; one sample: `leaves`) add their wall time
    to `spent["decision"]`."""

    def __init__(self, decider, spent: dict):
        self.decider, self.spent = decider, spent

    def _timed(self, fn, *args):
        started = time.perf_counter()
        out = fn(*args)
        self.spent["decision"] += time.perf_counter() - started
        return out

    def __call__(self, *args):
        return self._timed(self.decider, *args)

    def leaves(self, *args):
        return self._timed(self.decider.leaves, *args)


def breakdown(model, predictor, x, batch_size: int) -> dict:
    """Milliseconds per image of one `predict` run split into the network (`model.exit_step`), the host-side
    decision (`predictor.decider`) and the rest (moving logits to the host, compaction, Python), by wrapping the
    two callables with timers for the run (the predictor's code itself is not copied)."""
    spent = {"network": 0.0, "decision": 0.0}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[key] += time.perf_counter() - started
            return out
        return wrapper

    model.exit_step = timed(model.exit_step, "network")  # an instance attribute shadows the method
    decider = predictor.decider
    predictor.decider = TimedDecider(decider, spent)
    try:
        started = time.perf_counter()
        predictor.predict(x, batch_size=batch_size)
        total = time.perf_counter() - started
    finally:
        del model.exit_step
        predictor.decider = decider
    n = x.shape[0]
    return {"total": total / n * 1e3, "network": spent["network"] / n * 1e3,
            "decision": spent["decision"] / n * 1e3,
            "other": (total - spent["network"] - spent["decision"]) / n * 1e3}


def measure(model, policies, x, batch_size: int, repeats: int, device: str) -> list[dict]:
    """Best-of-`repeats` seconds of the full network, all-exits-then-choose and the predictor for each policy."""
    import torch

    from eeopt.inference import EarlyExitPredictor

    predictors = {p.budget: EarlyExitPredictor(model, p, device=device) for p in policies}
    n = x.shape[0]
    with torch.inference_mode():
        full_network(model, x[:batch_size], batch_size)  # warm-up
        for p in policies:
            predictors[p.budget].predict(x[:batch_size], batch_size=batch_size)
        times: dict[str, list[float]] = {}
        for r in range(repeats):  # interleaved, so drifting load hits all alike
            for name, fn in [("full", lambda: full_network(model, x, batch_size))] + [
                (f"all@{p.budget}", lambda p=p: all_exits_then_choose(model, x, batch_size, p.thresholds))
                for p in policies
            ] + [(f"ee@{p.budget}", lambda p=p: predictors[p.budget].predict(x, batch_size=batch_size))
                 for p in policies]:
                times.setdefault(name, []).append(best_time(fn, 1))
            progress(f"  batch {batch_size}, repeat {r + 1}/{repeats}: full {times['full'][-1]:.2f} s, "
                     + ", ".join(f"ee@{p.budget} {times[f'ee@{p.budget}'][-1]:.2f} s" for p in policies))
        rows = []
        for p in policies:
            prediction = predictors[p.budget].predict(x, batch_size=batch_size)
            _, all_exits = all_exits_then_choose(model, x, batch_size, p.thresholds)
            shares = np.bincount(prediction.exits, minlength=model.num_exits) / n
            costs = np.asarray(p.costs)
            t_full, t_ee, t_all = min(times["full"]), min(times[f"ee@{p.budget}"]), min(times[f"all@{p.budget}"])
            predicted = costs[-1] / float(shares @ costs)
            rows.append({
                "budget": p.budget,
                "batch_size": batch_size,
                "samples": n,
                "exit_shares": shares.tolist(),
                "mean_cost_share": float(shares @ costs / costs[-1]),
                "ms_per_sample": {"full": t_full / n * 1e3, "all_exits": t_all / n * 1e3, "predictor": t_ee / n * 1e3},
                "predicted_speedup": predicted,
                "measured_speedup": t_full / t_ee,
                "ratio": (t_full / t_ee) / predicted,
                "all_exits_speedup": t_full / t_all,
                "predictor_vs_all_exits": t_all / t_ee,
                "exit_disagreements_vs_all_exits": int(np.count_nonzero(all_exits != prediction.exits)),
                "predictor_breakdown_ms": min((breakdown(model, predictors[p.budget], x, batch_size)
                                               for _ in range(repeats)), key=lambda d: d["total"]),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure at (comma-separated)")
    parser.add_argument("--samples", type=int, default=2560, help="test images timed at batch 256")
    parser.add_argument("--samples-b1", type=int, default=500, help="test images timed at batch 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trials", type=int, default=300, help="threshold-search trials on val")
    parser.add_argument("--quick", action="store_true", help="1,024 / 100 images, 2 repeats, 1 thread")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/inference.json)")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.samples_b1, args.repeats, args.threads = 1024, 100, 2, "1"
    machine = machine_info()

    import torch

    from eeopt.inference import EarlyExitPredictor, load_model_dir, profile_latency, split_data
    from eeopt.core.policy_choice import policy_from_search
    from eeopt.core.prepared import prepare_pair
    from eeopt.core.search import search_policies

    folder = trained_model()
    model, cfg = load_model_dir(folder)
    model = model.to(args.device).eval()
    val, test = load_exit_outputs(folder)
    fit, report = prepare_pair(val, test, score="msp")
    progress(f"searching policies on val ({args.trials} trials)")
    search = search_policies(fit, report, trials=args.trials, seed=0)
    policies = [policy_from_search(search, b, source={"benchmark": "bench_inference"}) for b in BUDGETS]
    costs = np.asarray(policies[0].costs)

    x, y = split_data(cfg, "test")
    x = x.to(args.device)
    # The predictor on the test images against the policy on the test exit outputs (same samples, same policy).
    agreement = []
    for p in policies:
        _, decided_exits, _ = p.decide(test)
        got = EarlyExitPredictor(model, p, device=args.device).predict(x[:args.samples], batch_size=256)
        agreement.append({"budget": p.budget,
                          "exit_mismatches": int(np.count_nonzero(got.exits != decided_exits[:args.samples])),
                          "accuracy": float(np.mean(got.labels == y[:args.samples])),
                          "test_accuracy_all": p.report["accuracy"] if p.report else None})
    progress("predictor vs policy.decide on test: "
             + ", ".join(f"{a['budget']}: {a['exit_mismatches']} exit mismatches" for a in agreement))

    runs, profiles, decisions = [], {}, {}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        progress(f"torch threads = {threads}")
        with torch.inference_mode():
            logits = model(x[:256]).logits.float().cpu().numpy()  # [K, 256, C] for timing decisions
        for batch_size, n in ((256, args.samples), (1, args.samples_b1)):
            prof = profile_latency(model, x[:batch_size], device=args.device,
                                   warmup=5 if batch_size == 1 else 2, repeats=50 if batch_size == 1 else 10)
            profiles[f"{threads}/{batch_size}"] = prof.to_dict()
            predictor = EarlyExitPredictor(model, policies[1], device=args.device)
            decisions[f"{threads}/{batch_size}"] = decision_us(predictor, logits[:, :batch_size],
                                                               200 if batch_size == 1 else 50)
            progress(f"batch {batch_size}: profile per sample {np.round(prof.per_sample_ms, 4).tolist()} ms, "
                     f"decision {np.round(decisions[f'{threads}/{batch_size}'], 1).tolist()} us")
            for row in measure(model, policies, x[:n], batch_size, args.repeats, args.device):
                shares = np.asarray(row["exit_shares"])
                lat = prof.median_ms
                row["threads"] = threads
                row["latency_predicted_speedup"] = float(lat[-1] / (shares @ lat))
                # what reaching each exit's decision costs on the host, per sample, cumulated over the exits passed
                dec_ms = np.cumsum(decisions[f"{threads}/{batch_size}"]) / 1e3
                row["latency_and_decision_predicted_speedup"] = float(lat[-1] / (shares @ (lat + dec_ms)))
                runs.append(row)
                bd = row["predictor_breakdown_ms"]
                progress(f"  budget {row['budget']}: predictor per image: network {bd['network']:.3f} ms, decision "
                         f"{bd['decision']:.3f} ms, other {bd['other']:.3f} ms (total {bd['total']:.3f} ms)")
                progress(f"  budget {row['budget']}: predicted {row['predicted_speedup']:.2f}x, measured "
                         f"{row['measured_speedup']:.2f}x (ratio {row['ratio']:.2f}), all exits "
                         f"{row['all_exits_speedup']:.2f}x")

    results = {
        "device": args.device,
        "model_dir": folder.name,
        "num_exits": model.num_exits,
        "costs": costs.tolist(),
        "cost_share": (costs / costs[-1]).tolist(),
        "backbone_flops": float(model.backbone_flops) if model.backbone_flops is not None else None,
        "policies": [p.to_dict() for p in policies],
        "agreement": agreement,
        "profiles": profiles,
        "decision_us": decisions,
        "runs": runs,
        "samples": {"256": args.samples, "1": args.samples_b1},
        "repeats": args.repeats,
    }
    write_result("inference" if args.device == "cpu" else f"inference_{args.device.split(':')[0]}", results,
                 machine, out=args.out)

    print(f"\n{args.device}, cost share per exit {np.round(costs / costs[-1], 3).tolist()}\n")
    print("| threads | batch | budget | exit shares | predicted | latency-predicted | measured | measured / predicted "
          "| measured / latency-predicted | all exits then choose |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(f"| {r['threads']} | {r['batch_size']} | {r['budget']:.0%} | {np.round(r['exit_shares'], 2).tolist()} "
              f"| {r['predicted_speedup']:.2f}x | {r['latency_predicted_speedup']:.2f}x | {r['measured_speedup']:.2f}x "
              f"| {r['ratio']:.2f} | {r['measured_speedup'] / r['latency_predicted_speedup']:.2f} "
              f"| {r['all_exits_speedup']:.2f}x |")


if __name__ == "__main__":
    main()
