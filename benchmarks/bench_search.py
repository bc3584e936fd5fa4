"""Inner threshold search on real exit outputs: Optuna per-exit search vs the exact global sweep vs a grid.

    .venv/bin/python benchmarks/bench_search.py [--seeds 3] [--trials 300] [--grid 4,8,16] [--quick]

The exit outputs are those of the benchmark model (`common.MODEL_CONFIG`: the tiny ResNet, an exit after each of its
5 blocks, trained on 20,000 Fashion-MNIST images; trained once and cached under benchmarks/cache/). Every method
chooses its policies on val (6,000 images) and is reported on test (10,000 images), with the msp score and no
calibrator. For each budget (a share of the last exit's FLOPs) the policy with the best val accuracy within the
budget is taken, and its test accuracy is reported (`eeopt.core.metrics.efficiency`, the rule behind acc_at_50).

- "Optuna per-exit search (eeopt)": `eeopt.core.search.search_thresholds`, as every study trial runs it (NSGA-II, 300
  trials, seeds 0.. `--seeds`-1; the candidates also include the global sweep's val frontier, so it is never worse
  on val than the sweep).
- "Optuna trials only": the same search without the sweep's frontier among its candidates (what Optuna found).
- The eeopt search again with `--more-trials` (3,000) trials: does a longer search find more?
- "global sweep": one threshold shared by every exit, every distinct value tried exactly
  (`eeopt.core.metrics.efficiency.global_sweep`, `sweep_efficiency`).
- "grid G^(K-1)": per-exit thresholds at G evenly spaced val-score quantiles per exit (0 = every sample leaves,
  1 = none does), all G^(K-1) combinations evaluated at once by `eeopt.core.policies.evaluate_thresholds`.

Times are wall-clock seconds for choosing on val and evaluating the chosen front on test (process warm, imports
excluded), the best of the seeds for deterministic methods. Writes benchmarks/results/search.json.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from common import load_exit_outputs, machine_info, progress, trained_model, write_result

BUDGETS = (25, 50, 75)


def grid_thresholds(sorted_scores: np.ndarray, levels: int) -> np.ndarray:
    """[levels^(K-1), K-1] thresholds: every combination of `levels` evenly spaced quantiles per exit."""
    from eeopt.core.search import quantile_thresholds

    q = np.linspace(0.0, 1.0, levels)
    combos = np.array(list(itertools.product(q, repeat=sorted_scores.shape[0])))
    return quantile_thresholds(sorted_scores, combos)


def method_row(name: str, eff, seconds: float, policies: int, fit_eff=None) -> dict:
    """One method's numbers: test accuracy, val accuracy and test mean cost (share of the last exit) per budget."""
    row = {"method": name, "seconds": seconds, "policies": policies, "acc_cost_auc": float(eff.acc_cost_auc)}
    for c in eff.choices:
        if c.budget in BUDGETS or c.budget == 100:
            row[f"test_acc_at_{c.budget}"] = float(c.report_accuracy)
            row[f"val_acc_at_{c.budget}"] = float(c.fit_accuracy)
            row[f"test_cost_at_{c.budget}"] = float(c.report_mean_cost)
    return row


def run_grid(fit, report, costs, levels: int):
    from eeopt.core.metrics.efficiency import efficiency, frontier_indices
    from eeopt.core.policies import evaluate_thresholds

    started = time.perf_counter()
    thresholds = grid_thresholds(np.sort(fit.scores[:-1], axis=1), levels)
    val = evaluate_thresholds(fit.scores, fit.correct, costs, thresholds)
    front = frontier_indices(val.mean_cost, val.accuracy)
    test = evaluate_thresholds(report.scores, report.correct, costs, thresholds[front])
    eff = efficiency(costs, val.mean_cost[front], val.accuracy[front], test.mean_cost, test.accuracy)
    return eff, time.perf_counter() - started, thresholds.shape[0]


def run_sweep(fit, report, costs):
    from eeopt.core.metrics.efficiency import global_sweep, sweep_efficiency

    started = time.perf_counter()
    val = global_sweep(fit.scores, fit.correct, costs)
    test = global_sweep(report.scores, report.correct, costs)
    eff = sweep_efficiency(costs, val, test)
    return eff, time.perf_counter() - started, val.threshold.size


def run_optuna(fit, report, costs, trials: int, seed: int, with_sweep: bool):
    from eeopt.core.metrics.efficiency import SweepCurve
    from eeopt.core.search import search_thresholds

    # Without the sweep: hand the search a "sweep" that holds only its +inf point (every sample at the last exit),
    # a policy the candidates hold anyway, so only Optuna's trials are added.
    no_sweep = SweepCurve(np.array([np.inf]), np.array([fit.correct[-1].mean()]), np.array([costs[-1]]))
    started = time.perf_counter()
    res = search_thresholds(fit.scores, fit.correct, costs, report_scores=report.scores,
                            report_correct=report.correct, trials=trials, sampler="nsga2", seed=seed,
                            score=fit.score, fit_sweep=None if with_sweep else no_sweep)
    return res.efficiency, time.perf_counter() - started, trials


def aggregate(rows: list[dict]) -> dict:
    """Mean over seeds of every number, with min and max for the accuracies."""
    out = {"method": rows[0]["method"], "seeds": len(rows)}
    for key in rows[0]:
        if key == "method":
            continue
        values = np.array([r[key] for r in rows], dtype=float)
        out[key] = float(np.mean(values))
        if key.startswith("test_acc") or key == "acc_cost_auc":
            out[key + "_min"], out[key + "_max"] = float(np.min(values)), float(np.max(values))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="Optuna seeds to average over")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--more-trials", type=int, default=3000,
                        help="also run the eeopt search with this many trials (0: skip)")
    parser.add_argument("--grid", default="4,8,16,32", help="quantile levels per exit of each grid")
    parser.add_argument("--quick", action="store_true", help="1 seed, grids 4 and 8, no longer search")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/search.json)")
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    grids = [4, 8] if args.quick else [int(g) for g in args.grid.split(",")]
    more = 0 if args.quick else args.more_trials
    machine = machine_info()

    folder = trained_model()
    from eeopt.core.prepared import prepare_pair

    val, test = load_exit_outputs(folder)
    fit, report = prepare_pair(val, test, score="msp")
    costs = fit.costs
    k = fit.num_exits
    progress(f"exit outputs: K={k}, val N={val.num_samples}, test N={test.num_samples}")

    rows = []
    variants = [(f"Optuna per-exit search (eeopt: {args.trials} trials + sweep frontier)", args.trials, True),
                (f"Optuna trials only ({args.trials})", args.trials, False)]
    if more:
        variants.append((f"Optuna per-exit search (eeopt: {more} trials + sweep frontier)", more, True))
    for label, trials, with_sweep in variants:
        per_seed = []
        for seed in range(seeds):
            eff, seconds, n = run_optuna(fit, report, costs, trials, seed, with_sweep)
            per_seed.append(method_row(label, eff, seconds, n))
            progress(f"{label}, seed {seed}: {seconds:.2f} s, test acc@50 {per_seed[-1]['test_acc_at_50']:.4f}")
        rows.append(aggregate(per_seed))

    best = None
    for _ in range(3):  # deterministic: best of 3 times
        eff, seconds, n = run_sweep(fit, report, costs)
        best = min(best or seconds, seconds)
    rows.append(method_row("global sweep (exact, one shared threshold)", eff, best, n))
    progress(f"global sweep: {best:.3f} s, {n} thresholds")

    for levels in grids:
        eff, seconds, n = run_grid(fit, report, costs, levels)
        rows.append(method_row(f"grid {levels}^{k - 1} per-exit quantiles", eff, seconds, n))
        progress(f"grid {levels}^{k - 1} = {n} policies: {seconds:.2f} s")

    exit_acc = {"val": val.correct.mean(axis=1).tolist(), "test": test.correct.mean(axis=1).tolist()}
    results = {
        "model_dir": str(folder.name),
        "num_exits": k,
        "val_samples": val.num_samples,
        "test_samples": test.num_samples,
        "costs": costs.tolist(),
        "cost_share": (costs / costs[-1]).tolist(),
        "exit_accuracy": exit_acc,
        "trials": args.trials,
        "seeds": seeds,
        "budgets": list(BUDGETS),
        "methods": rows,
    }
    write_result("search", results, machine, out=args.out)

    print(f"\nK={k} exits, cost share {np.round(costs / costs[-1], 3).tolist()}, "
          f"exit test accuracy {np.round(exit_acc['test'], 4).tolist()}\n")
    print("| method | policies | " + " | ".join(f"test acc @{b} %" for b in BUDGETS) + " | AUC | seconds |")
    print("| --- | ---: | " + " | ".join("---:" for _ in BUDGETS) + " | ---: | ---: |")
    for r in rows:
        accs = " | ".join(f"{r[f'test_acc_at_{b}']:.4f}" for b in BUDGETS)
        print(f"| {r['method']} | {r['policies']:,} | {accs} | {r['acc_cost_auc']:.4f} | {r['seconds']:.3f} |")


if __name__ == "__main__":
    main()
