"""Certified exit policies on the benchmark model: `eeopt exits certify` with one shared threshold and per-exit.

    .venv/bin/python benchmarks/bench_certify.py [--epsilon 0.01] [--delta 0.1] [--draws 200] [--quick]

The exit outputs are those of the benchmark model (`common.MODEL_CONFIG`, trained once and cached). Part 1 runs the
command as a user would, `eeopt exits certify --fit-on val.npz --evaluate-on test.npz --risk performance-gap
--epsilon E --delta D` with each method (ltt, ucb-wsr, crc) and with `--per-exit` (ltt), and records the
certified policy's test risk, accuracy, mean cost and speed-up beside the uncontrolled val-optimal policy at the
same val cost; then the impossible request (100 calibration samples, epsilon 0, delta 0.01). Part 2 checks the
promise on this model: the val and test images are pooled (16,000), split `--draws` times at random into a
calibration set of val's size and a test set of the rest, and each draw certifies a shared threshold (ltt, ucb-wsr,
crc) and picks the uncontrolled one (the cheapest whose calibration risk is <= epsilon); the share of draws whose
test risk exceeds epsilon is what the promise bounds by delta (up to the test set's own sampling noise). Writes
benchmarks/results/certify.json.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from contextlib import redirect_stdout

import numpy as np

from common import load_exit_outputs, machine_info, progress, trained_model, write_result


def certify_cli(folder, fit, epsilon: float, delta: float, *extra: str, table: bool = False) -> tuple[dict, float, str]:
    """`eeopt exits certify ... --json` through the real entry point: (its JSON, seconds, and with `table` the
    table it prints without --json, at 80 columns)."""
    from eeopt.cli import main

    argv = ["exits", "certify", "--fit-on", str(fit), "--evaluate-on", str(folder / "test.npz"), "--risk",
            "performance-gap", "--epsilon", str(epsilon), "--delta", str(delta), *extra]
    buf = io.StringIO()
    started = time.perf_counter()
    with redirect_stdout(buf):
        code = main([*argv, "--json"])
    seconds = time.perf_counter() - started
    assert code == 0, f"eeopt {' '.join(argv)} exited {code}"
    printed = io.StringIO()
    if table:
        import os

        os.environ["COLUMNS"] = "80"
        with redirect_stdout(printed):
            main(argv)
    return json.loads(buf.getvalue()), seconds, printed.getvalue()


def row(name: str, out: dict, seconds: float) -> dict:
    m, f = out["metrics"], out["fit_metrics"]
    stat = out.get("p_value", out.get("bound"))
    return {
        "name": name, "method": out["method"], "per_exit": out["per_exit"], "certified": out["certified"],
        "n": out["n"], "statistic": stat, "candidates": out["candidates"], "passed": out["passed"],
        "val_risk": f["certified/risk"], "test_risk": m["certified/risk"], "test_accuracy": m["certified/accuracy"],
        "test_cost_share": m["certified/mean_cost"] / out["costs"][-1], "test_speedup": m["certified/speedup"],
        "uncontrolled_test_risk": m["uncontrolled/risk"], "uncontrolled_test_accuracy": m["uncontrolled/accuracy"],
        "uncontrolled_test_speedup": m["uncontrolled/speedup"], "thresholds": out["thresholds"],
        "seconds": round(seconds, 2),
    }


def resample(val, test, epsilon: float, delta: float, draws: int, wsr_draws: int, seed: int = 0) -> dict:
    """Random calibration/test splits of the pooled val + test images: how often each choice breaks epsilon (the
    WSR test, ~100 times slower than the others at 6,000 samples, on the first `wsr_draws` draws only)."""
    from eeopt.risk_control import exit_losses, fixed_sequence, naive_index, shared_candidates

    scores = np.concatenate([val.confidence, test.confidence], axis=1)
    losses = np.concatenate([exit_losses("performance-gap", val), exit_losses("performance-gap", test)], axis=1)
    correct = np.concatenate([val.correct, test.correct], axis=1)
    costs = val.costs
    total, n = scores.shape[1], val.num_samples
    rng = np.random.default_rng(seed)
    methods = ("ltt", "ucb-wsr", "crc", "uncontrolled")
    risk = {m: np.full(draws, np.nan) for m in methods}
    speedup = {m: np.full(draws, np.nan) for m in methods}
    seconds = {m: 0.0 for m in methods}
    for d in range(draws):
        perm = rng.permutation(total)
        cal, rest = perm[:n], perm[n:]
        c = shared_candidates(scores[:, cal], losses[:, cal], correct[:, cal], costs)
        for m in methods:
            if m == "ucb-wsr" and d >= wsr_draws:
                continue
            started = time.perf_counter()
            i = naive_index(c, epsilon) if m == "uncontrolled" else fixed_sequence(m, c, epsilon, delta).index
            seconds[m] += time.perf_counter() - started
            t = c.thresholds[i, 0] if i >= 0 else np.inf
            s = scores[:-1, rest]
            passed = s >= t
            exits = np.where(passed.any(axis=0), passed.argmax(axis=0), len(costs) - 1)
            risk[m][d] = losses[exits, rest].mean()
            speedup[m][d] = costs[-1] / costs[exits].mean()
        if (d + 1) % 50 == 0:
            progress(f"  resampling: {d + 1}/{draws} draws")
    return {
        "draws": draws, "calibration_samples": n, "test_samples": total - n,
        "methods": [{"method": m, "draws": int(np.sum(~np.isnan(risk[m]))),
                     "exceed": float(np.nanmean(risk[m] > epsilon) if m != "ucb-wsr" else
                                     np.mean(risk[m][:wsr_draws] > epsilon)),
                     "mean_risk": float(np.nanmean(risk[m])), "mean_speedup": float(np.nanmean(speedup[m])),
                     "seconds_per_draw": seconds[m] / int(np.sum(~np.isnan(risk[m])))}
                    for m in methods],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--wsr-draws", type=int, default=40, help="draws that also run ucb-wsr (slow)")
    parser.add_argument("--quick", action="store_true", help="20 draws, 60 per-exit trials (a smoke run)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    machine = machine_info()
    folder = trained_model()
    val, test = load_exit_outputs(folder)
    eps, delta = args.epsilon, args.delta
    trials = ["--trials", "60"] if args.quick else []
    rows, tables = [], {}
    for name, extra in (("shared, ltt", ["--method", "ltt"]), ("shared, ucb-wsr", ["--method", "ucb-wsr"]),
                        ("shared, crc", ["--method", "crc"]), ("per-exit, ltt", ["--method", "ltt", "--per-exit",
                                                                                 *trials])):
        progress(f"eeopt exits certify ({name}), epsilon {eps}, delta {delta}")
        out, seconds, table = certify_cli(folder, folder / "val.npz", eps, delta, *extra, table=name == "shared, ltt")
        rows.append(row(name, out, seconds))
        tables[name] = table
    progress("the impossible request: 100 calibration samples, epsilon 0, delta 0.01")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        small = val.subset(np.arange(100)).save(Path(tmp) / "val100.npz")
        impossible, _, impossible_table = certify_cli(folder, small, 0.0, 0.01, table=True)
    progress(f"resampling the pooled val + test images ({20 if args.quick else args.draws} draws)")
    resampled = resample(val, test, eps, delta, 20 if args.quick else args.draws, 5 if args.quick else args.wsr_draws)
    results = {
        "epsilon": eps, "delta": delta, "risk": "performance-gap", "val_samples": val.num_samples,
        "test_samples": test.num_samples, "exit_accuracy_test": test.accuracy.tolist(),
        "cost_share": (val.costs / val.costs[-1]).tolist(), "rows": rows, "table_shared_ltt": tables["shared, ltt"],
        "impossible": {"certified": impossible["certified"], "thresholds": impossible["thresholds"],
                       "test_speedup": impossible["metrics"]["certified/speedup"],
                       "printed": " ".join(impossible_table.split("performance-gap on")[0].split())},
        "resampling": resampled,
    }
    write_result("certify", results, machine, out=args.out)


if __name__ == "__main__":
    main()
