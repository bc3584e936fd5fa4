"""Orchestration overhead of a study: N tiny trials through eeopt (Optuna storage + Ray Tune + MLflow) versus the
same trainings in a plain loop (`run_trial`, no Ray, no storage, no MLflow).

    .venv/bin/python benchmarks/bench_study.py [--trials 8] [--repeats 3]

Ray is started first and timed on its own; the study then reuses it, so the difference per trial is what eeopt adds
once Ray is up (Tune scheduling, worker start, Optuna ask/tell, MLflow runs, params, metrics and artifacts, plots).
Both sides run trials one at a time (max_concurrent 1) so the comparison is like for like. The steady state (trial
1's end to the last trial's, per trial) leaves out what a study pays once; the four plots a trial writes are also
timed on their own. The host's speed drifts by tens of percent within minutes, so the loop and the study are
measured in pairs, back to back, `--repeats` times, and the pair with the median overhead is reported (every
pair's figure is kept). Writes benchmarks/results/study.json (or `--out`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from common import machine_info, progress, write_result

TRIAL = {
    "seed": 0,
    "data": {"name": "digits", "train_subset": 600},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3]},
    "training": {"epochs": 1, "batch_size": 64, "lr": 0.003, "threads": 1},
    "policy": {"trials": 30},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3,
                        help="loop + study pairs, one after the other; the median pair is reported")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/study.json)")
    args = parser.parse_args()
    machine = machine_info()
    n = args.trials

    import ray

    from eeopt.config import TrainConfig
    from eeopt.study import run_trial

    cfg = TrainConfig.model_validate(TRIAL)
    progress("plain loop: 1 warm-up trial")
    run_trial(cfg, plots=False)  # warm-up: imports and first-call costs stay out of the comparison
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_s = time.perf_counter() - started
    progress(f"ray.init: {ray_s:.1f} s")
    pairs = []
    for repeat in range(args.repeats):
        # each pair: the loop, then the study on fresh stores, back to back, so both see the machine alike
        with tempfile.TemporaryDirectory() as tmp:
            pairs.append(measure_pair(cfg, Path(tmp), n, repeat))
        progress(f"pair {repeat + 1}/{args.repeats}: loop {pairs[-1]['loop_s']:.1f} s, study "
                 f"{pairs[-1]['study_s']:.1f} s, overhead {pairs[-1]['overhead_per_trial_s']:.2f} s per trial")
    ray.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        plots_s = time_plots(cfg, Path(tmp))
    median = sorted(pairs, key=lambda p: p["overhead_per_trial_s"])[len(pairs) // 2]
    r = {**median, "trials": n, "ray_init_s": ray_s, "plots_s": plots_s, "repeats": len(pairs),
         "overheads_per_trial_s": [p["overhead_per_trial_s"] for p in pairs],
         "loops_per_trial_s": [p["loop_s"] / n for p in pairs], "trial": TRIAL}
    write_result("study", r, machine, out=args.out)

    print(f"\n{n} tiny trials (digits, tinyresnet width 8, 1 epoch), one at a time; the median of {len(pairs)} pairs\n")
    print("| what | seconds | per trial |")
    print("| --- | ---: | ---: |")
    print(f"| plain loop (`run_trial`) | {r['loop_s']:.1f} | {r['loop_s'] / n:.2f} |")
    print(f"| `ray.init` (once) | {ray_s:.1f} | |")
    print(f"| eeopt study (Tune + Optuna storage + MLflow), Ray up | {r['study_s']:.1f} | {r['study_s'] / n:.2f} |")
    print(f"| **overhead** | {r['overhead_s']:.1f} | **{r['overhead_per_trial_s']:.2f}** |")
    print(f"| steady state: trial 1 to trial {n - 1} finished, per trial | | {r['steady_per_trial_s']:.2f} |")
    print(f"| the trial's four plots, rendered in this process | | {plots_s:.2f} |")
    print(f"| first trial finished after | {r['first_trial_end_s']:.1f} | |")
    print(f"| after the last trial finished (the plot writer's backlog, closing) | {r['after_last_trial_s']:.1f} | |")
    print("overhead per trial, every pair: " + ", ".join(f"{v:.2f}" for v in r["overheads_per_trial_s"]))


def measure_pair(cfg, folder: Path, n: int, repeat: int) -> dict:
    """The plain loop of `n` trials, then the same trials as a study on fresh stores in `folder` (Ray is up)."""
    from eeopt.study import Study, run_trial

    started = time.perf_counter()
    for i in range(n):
        run_trial(cfg.model_copy(update={"seed": i}), output_dir=folder / f"loop-{i}", plots=False)
    loop_s = time.perf_counter() - started
    study_file = folder / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        **TRIAL,
        "search_space": {"training.lr": {"type": "float", "low": 0.002, "high": 0.004}},
        "study": {"name": "overhead", "trials": n, "sampler": "random", "seed": repeat,
                  "resources": {"cpus_per_trial": 1, "max_concurrent": 1}},
    }))
    started, wall_start = time.perf_counter(), time.time()
    summary = Study.from_yaml(study_file).run(progress=False)
    study_s = time.perf_counter() - started
    assert summary.completed == n, summary
    steady_s, first_end, last_end = steady_per_trial(f"sqlite:///{folder / 'eeopt.db'}", "overhead")
    return {"loop_s": loop_s, "study_s": study_s, "overhead_s": study_s - loop_s,
            "overhead_per_trial_s": (study_s - loop_s) / n, "steady_per_trial_s": steady_s,
            "steady_overhead_per_trial_s": steady_s - loop_s / n, "one_time_s": study_s - n * steady_s,
            "first_trial_end_s": first_end - wall_start, "after_last_trial_s": wall_start + study_s - last_end}


def steady_per_trial(storage: str, name: str) -> tuple[float, float, float]:
    """(seconds per trial once the first has finished: from the first trial's end to the last one's, over N-1;
    the first trial's end; the last trial's end, as Unix times). The steady state leaves out what a study pays
    once (opening the stores, the first worker's imports) and the plots still being drawn after the last trial."""
    import optuna

    ends = sorted(t.datetime_complete for t in optuna.load_study(study_name=name, storage=storage).get_trials()
                  if t.datetime_complete is not None)
    return (ends[-1] - ends[0]).total_seconds() / (len(ends) - 1), ends[0].timestamp(), ends[-1].timestamp()


def time_plots(cfg, folder: Path) -> float:
    """Best of 3: the four plots every study trial writes (`save_trial_plots`), for one tiny trial's result."""
    from eeopt.plots import save_trial_plots
    from eeopt.study import run_trial

    result, _ = run_trial(cfg, output_dir=folder / "trial")
    times = []
    for i in range(3):
        started = time.perf_counter()
        save_trial_plots(result, folder / f"plots-{i}")
        times.append(time.perf_counter() - started)
    return min(times)


if __name__ == "__main__":
    main()
