"""Render BENCHMARKS.md from the benchmarks' result files (benchmarks/results/*.json).

    .venv/bin/python benchmarks/report.py --start   # `make bench` runs this first: the machine and its load now
    .venv/bin/python benchmarks/report.py           # render BENCHMARKS.md from whatever results exist

Every section is computed from its JSON file (numbers, target verdicts, the command that reproduces it); a section
whose file is missing says so and names the command. Prose that explains a benchmark lives here; numbers do not.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, machine_info

OUT = ROOT / "BENCHMARKS.md"
SESSION = RESULTS / "session.json"


def load(name: str, results: Path = RESULTS) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt_load(machine: dict) -> str:
    la = machine.get("load_average") or []
    return " / ".join(f"{v:.2f}" for v in la)


def ran(data: dict) -> str:
    """One line: when it ran, load at its start, how long it took, and the command."""
    m = data["machine"]
    gpu = f" GPU: {m['cuda']}." if m.get("cuda") and data["results"].get("device", "cpu") != "cpu" else ""
    return (f"Ran {m['date']} in {data['seconds']:.0f} s; load average at its start {fmt_load(m)} (1 / 5 / 15 min; "
            f"it lags, so it includes the benchmark before it); nice {m.get('nice', 0)}.{gpu}\n\n"
            f"```\n{data['command']}\n```\n")


def missing(title: str, command: str) -> str:
    return (f"## {title}\n\nNot measured in this run. To measure: `{command}`, then "
            "`.venv/bin/python benchmarks/report.py`.\n")


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def acc(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return "**met**"
    gap = (target - value) if higher_is_better else (value - target)
    return f"**missed** by {gap:.2f}"


# --------------------------------------------------------------------------------------------------- sections
def header(session: dict | None) -> str:
    out = ["# Benchmarks\n",
           "Measured numbers, not promises. `make bench` runs every benchmark below and regenerates this file from "
           "their result files (`benchmarks/results/*.json`, committed beside it) with `benchmarks/report.py`; each "
           "section gives the command that reproduces it. The same machines vary from day to day (NOTES.md): "
           "compare numbers measured side by side in one run, and read absolute times with the date and load.\n"]
    if session is None:
        out.append("The result files were not written by one `make bench` run; each section gives its own date and "
                   "load.\n")
        return "\n".join(out)
    m = session["machine"]
    total = session.get("total_seconds")
    lines = [
        "## Machine\n",
        "| | |", "| --- | --- |",
        f"| CPU | {m['cpu']} ({', '.join(m.get('cpu_flags', [])) or 'flags unknown'}) |",
        f"| cores | {m['cores']} ({m['usable_cores']} usable by this process) |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| Python / NumPy / torch | {m['python']} / {m['numpy']} / {m.get('torch')} |",
        f"| CUDA | {m.get('cuda') or 'none'} |",
        f"| started | {m['date']} |",
        f"| load average at start (1 / 5 / 15 min) | {fmt_load(m)} |",
        f"| idle at start | {'yes' if m['idle'] else 'no'} (idle: 1-minute load below 0.5) |",
        f"| nice | {m.get('nice', 0)} |",
    ]
    if total is not None:
        lines.append(f"| `make bench` took | {total / 60:.1f} min (target: under 15 min on 2 cores) |")
    out.append("\n".join(lines) + "\n")
    if not m["idle"] or m.get("nice", 0) > 0:
        out.append(f"**Measured under load**: the machine was {'not idle' if not m['idle'] else 'idle'} at the start "
                   f"(load {fmt_load(m)}) and the run was at nice {m.get('nice', 0)}, sharing the cores with other "
                   "work. Absolute times are upper bounds and ratios are noisier than on an idle machine; rerun "
                   "`make bench` on an idle machine before quoting them.\n")
    return "\n".join(out)


def inference_section(data: dict | None, title: str = "Early-exit inference (CPU)") -> str:
    if data is None:
        return missing(title, ".venv/bin/python benchmarks/bench_inference.py")
    r = data["results"]
    runs = r["runs"]
    share = r["cost_share"]
    out = [f"## {title}\n", ran(data)]
    out.append(
        "The benchmark model (tiny ResNet, an exit after each of its 5 blocks, Fashion-MNIST; see *Inner threshold "
        "search*) with the policies chosen on val for 25 / 50 / 75 % of the last exit's FLOPs (msp, no calibrator, "
        "`search_policies` then `policy_from_search`), run on the first "
        f"{next((x['samples'] for x in runs if x['batch_size'] != 1), 0):,} test images at batch 256 and the first "
        f"{next((x['samples'] for x in runs if x['batch_size'] == 1), 0):,} at batch 1; best of "
        f"{r['repeats']} interleaved repeats. *Full network*: every block, then the last head only. *Predicted*: "
        "the FLOPs-predicted speed-up, last exit's FLOPs / the policy's mean FLOPs on these images. *Measured*: full "
        "network's time / `EarlyExitPredictor.predict`'s time. *Latency-predicted*: the same exit shares times the "
        "cumulative latency per exit that `profile_latency` measured at that batch size (what the speed-up would be "
        "if a batch cost what it costs to run all of it through the network; it ignores the decisions and the "
        "smaller batches after compaction). *All exits then choose*: one forward pass with every head, then the "
        "first exit whose msp passes (in torch), the full network's time / its time. Targets: *m / p* (measured / "
        "predicted) >= 0.8 at batch 256; *m / lp* (measured / latency-predicted: what the predictor costs beyond "
        "the network's exits) >= 0.85 at batch 1, 1 thread.\n")
    out.append(f"Cumulative FLOPs share per exit: {', '.join(f'{s:.3f}' for s in share)}.\n")
    out.append("| threads | batch | budget | exit shares | mean cost | predicted | latency-predicted | measured | "
               "**measured / predicted** | **measured / latency-predicted** | target | all exits then choose | "
               "predictor vs all exits |")
    out.append("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for x in runs:
        target = inference_target(x)
        out.append(
            f"| {x['threads']} | {x['batch_size']} | {x['budget']:.0%} | "
            f"{', '.join(f'{s:.2f}' for s in x['exit_shares'])} | {x['mean_cost_share']:.2f} | "
            f"{x['predicted_speedup']:.2f}x | {x['latency_predicted_speedup']:.2f}x | {x['measured_speedup']:.2f}x | "
            f"**{x['ratio']:.2f}** | **{x['measured_speedup'] / x['latency_predicted_speedup']:.2f}** | "
            f"{'none' if target is None else f'{target[0]} >= {target[2]} {verdict(target[1], target[2])}'} | "
            f"{x['all_exits_speedup']:.2f}x | {x['predictor_vs_all_exits']:.2f}x |")
    out.append("")
    out.append("Milliseconds per image:\n")
    out.append("| threads | batch | budget | full network | all exits then choose | `EarlyExitPredictor` |")
    out.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in runs:
        ms = x["ms_per_sample"]
        out.append(f"| {x['threads']} | {x['batch_size']} | {x['budget']:.0%} | {ms['full']:.3f} | "
                   f"{ms['all_exits']:.3f} | {ms['predictor']:.3f} |")
    out.append("")
    out.append("Where the predictor's time goes, ms per image (separate `predict` runs with timers around "
               "`model.exit_step` and the decision, the fastest of the repeats; *other*: logits to the host, "
               "compaction, Python; on a loaded machine these runs can differ from the timed ones above), "
               "and what the profile predicts for the network alone (exit shares times the profiled latency per "
               "image at that batch size):\n")
    out.append("| threads | batch | budget | full network | predictor | network | network, profile-predicted | "
               "decision | other | measured / latency-predicted |")
    out.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in runs:
        bd = x.get("predictor_breakdown_ms")
        if not bd:
            continue
        predicted_net = None
        prof = r["profiles"].get(f"{x['threads']}/{x['batch_size']}")
        if prof is not None:
            lat = [v / x["batch_size"] for v in prof["median_ms"]]
            predicted_net = sum(s * l for s, l in zip(x["exit_shares"], lat))
        out.append(f"| {x['threads']} | {x['batch_size']} | {x['budget']:.0%} | {x['ms_per_sample']['full']:.3f} | "
                   f"{bd['total']:.3f} | {bd['network']:.3f} | "
                   f"{'n/a' if predicted_net is None else f'{predicted_net:.3f}'} | {bd['decision']:.3f} | "
                   f"{bd['other']:.3f} | {x['measured_speedup'] / x['latency_predicted_speedup']:.2f} |")
    out.append("")
    out.append(targets_summary(runs))
    out.append(why_missed(runs, r))
    out.append(where_time_goes(r))
    agree = r.get("agreement", [])
    if agree:
        out.append("Check: on the timed batch-256 images the predictor's exits differ from `PolicyFile.decide` on the "
                   "test exit outputs for " + ", ".join(f"{a['exit_mismatches']} images at {a['budget']:.0%}"
                                                        for a in agree)
                   + " (a mismatch should only come from a score within float tolerance of a threshold: batched "
                   "float32 arithmetic can differ from the stored outputs' in the last bits).\n")
    return "\n".join(out)


def inference_target(x: dict) -> tuple[str, float, float] | None:
    """(the ratio a run row's target is on, its value, the target), or None where none is set: measured /
    predicted >= 0.8 at batch 256; measured / latency-predicted >= 0.85 at batch 1 on 1 thread (issue 17)."""
    if x["batch_size"] >= 256:
        return "m / p", x["ratio"], 0.8
    if x["batch_size"] == 1 and x["threads"] == 1:
        return "m / lp", x["measured_speedup"] / x["latency_predicted_speedup"], 0.85
    return None


def targets_summary(runs: list[dict]) -> str:
    lines = ["Against the targets (measured / predicted >= 0.8 at batch 256; measured / latency-predicted >= 0.85 "
             "at batch 1, 1 thread):"]
    for batch in (256, 1):
        for threads in sorted({x["threads"] for x in runs}):
            sel = [(x, inference_target(x)) for x in runs if x["batch_size"] == batch and x["threads"] == threads]
            sel = [(x, t) for x, t in sel if t is not None]
            if not sel:
                continue
            name, target = sel[0][1][0], sel[0][1][2]
            worst, (_, value, _) = min(sel, key=lambda s: s[1][1])
            ratios = ", ".join(f"{t[1]:.2f} at {x['budget']:.0%}" for x, t in sel)
            status = ("**met** at every budget" if value >= target else
                      f"**missed** at {sum(t[1] < target for _, t in sel)} of {len(sel)} budgets, worst by "
                      f"{target - value:.2f} ({value:.2f} at {worst['budget']:.0%})")
            lines.append(f"- batch {batch}, {threads} thread{'s' if threads > 1 else ''}, {name}: {ratios}: "
                         f"{status}.")
    return "\n".join(lines) + "\n"


def why_missed(runs: list[dict], r: dict) -> str:
    """Each missed target's ratio as the product of its two causes, read off the same run's numbers."""
    missed = [x for x in runs if (t := inference_target(x)) is not None and t[1] < t[2]]
    out = [why_missed_latency([x for x in missed if inference_target(x)[0] == "m / lp"], r),
           why_missed_flops([x for x in missed if inference_target(x)[0] == "m / p"], r)]
    return "\n".join(part for part in out if part)


def why_missed_latency(missed: list[dict], r: dict) -> str:
    """measured / latency-predicted = (full network / the profile's full pass) x (the profile's time for the exit
    shares / the predictor's time), per image."""
    if not missed:
        return ""
    lines = ["Why the batch-1 misses: measured / latency-predicted = (full network / the profile's full pass) x "
             "(profile-predicted time / the predictor's time). The first factor is the most the ratio can reach: the "
             "profile computes every exit's head and brings its logits to the host, the full network only the last "
             "head. The second is what the predictor costs beyond the network's exits: decisions, host copies, "
             "Python."]
    for x in missed:
        prof = r["profiles"].get(f"{x['threads']}/{x['batch_size']}")
        if prof is None:
            continue
        lat = [v / x["batch_size"] for v in prof["median_ms"]]  # ms per image
        ms = x["ms_per_sample"]
        ceiling = ms["full"] / lat[-1]
        profiled = sum(s * v for s, v in zip(x["exit_shares"], lat))
        own = profiled / ms["predictor"]
        lines.append(f"- batch {x['batch_size']}, {x['threads']} thread{'s' if x['threads'] > 1 else ''}, "
                     f"{x['budget']:.0%}: {ceiling * own:.2f} = {ceiling:.2f} (full network {ms['full']:.3f} ms per "
                     f"image, the profile's full pass {lat[-1]:.3f} ms) x {own:.2f} (profile-predicted "
                     f"{profiled:.3f} ms, the predictor {ms['predictor']:.3f} ms).")
    return "\n".join(lines) + "\n"


def why_missed_flops(missed: list[dict], r: dict) -> str:
    """measured / predicted = (latency-predicted / predicted) x (measured / latency-predicted)."""
    if not missed:
        return ""
    lines = ["Why the misses: measured / predicted = (latency-predicted / predicted) x (measured / latency-predicted). "
             "The first factor is FLOPs against time: the profile's latency share of the exit most images take, "
             "against its FLOPs share (early blocks work on large feature maps and small channel counts, which a "
             "CPU runs at fewer FLOPs per second than the later blocks). The second is the predictor against the "
             "profile: its decisions and host copies per exit, and the smaller batches after compaction (at "
             "batch 1 every exit taken pays a whole decision; a batch of 256 spreads it over its images)."]
    for x in missed:
        prof = r["profiles"].get(f"{x['threads']}/{x['batch_size']}")
        flops_vs_time = x["latency_predicted_speedup"] / x["predicted_speedup"]
        own = x["ratio"] / flops_vs_time
        main = max(range(len(x["exit_shares"])), key=lambda e: x["exit_shares"][e])
        where = ""
        if prof is not None:
            med = prof["median_ms"]
            where = (f"; {x['exit_shares'][main]:.0%} of the images leave at exit {main + 1}, "
                     f"{r['cost_share'][main]:.3f} of the FLOPs but {med[main] / med[-1]:.3f} of the time")
        bd = x.get("predictor_breakdown_ms") or {}
        cost = ""
        if bd:
            cost = (f"; decisions {bd['decision']:.3f} and other {bd['other']:.3f} of the predictor's "
                    f"{bd['total']:.3f} ms per image")
        lines.append(f"- batch {x['batch_size']}, {x['threads']} thread{'s' if x['threads'] > 1 else ''}, "
                     f"{x['budget']:.0%}: {x['ratio']:.2f} = {flops_vs_time:.2f} (FLOPs vs time{where}) x "
                     f"{own:.2f} (predictor vs profile{cost}).")
    return "\n".join(lines) + "\n"


def where_time_goes(r: dict) -> str:
    """Per-exit latency next to FLOPs, and the decision time, for each profiled (threads, batch)."""
    profiles, decisions = r["profiles"], r["decision_us"]
    share = r["cost_share"]
    out = ["### Where the time goes: FLOPs vs measured latency per exit\n",
           "`profile_latency` (the whole batch through every exit, cumulative time until each exit's logits are "
           "on the host; median of its repeats), as a share of the last exit's, next to the FLOPs share. *Decision* "
           "is the predictor's host-side step at that exit (`ExitDecider`: scores and thresholds, in NumPy for a "
           "batch; at batch 1 whether the sample leaves, on Python floats: `leaves`), median microseconds per call "
           "for the batch.\n"]
    keys = sorted(profiles, key=lambda k: (int(k.split("/")[0]), -int(k.split("/")[1])))
    head = "| exit | FLOPs share |" + "".join(
        f" latency share ({k.split('/')[0]} thr, batch {k.split('/')[1]}) |" for k in keys)
    out.append(head)
    out.append("| ---: | ---: |" + " ---: |" * len(keys))
    for e in range(len(share)):
        cells = []
        for k in keys:
            med = profiles[k]["median_ms"]
            cells.append(f" {med[e] / med[-1]:.3f} ({med[e]:.3f} ms) |")
        out.append(f"| {e + 1} | {share[e]:.3f} |" + "".join(cells))
    out.append("")
    out.append("| threads / batch | full pass, ms per image | decision per exit, us per call | all K decisions as a "
               "share of a full pass |")
    out.append("| --- | ---: | --- | ---: |")
    for k in keys:
        b = int(k.split("/")[1])
        per_image = profiles[k]["median_ms"][-1] / b
        dec = decisions[k]
        share_dec = sum(dec) / 1e3 / profiles[k]["median_ms"][-1]
        out.append(f"| {k.split('/')[0]} thr / {b} | {per_image:.4f} | {', '.join(f'{d:.0f}' for d in dec)} | "
                   f"{pct(share_dec)} |")
    out.append("")
    return "\n".join(out)


def search_section(data: dict | None) -> str:
    title = "Inner threshold search: Optuna per-exit vs the exact global sweep vs a grid"
    if data is None:
        return missing(title, ".venv/bin/python benchmarks/bench_search.py")
    r = data["results"]
    out = [f"## {title}\n", ran(data)]
    acc_test = r["exit_accuracy"]["test"]
    out.append(
        f"Real exit outputs: the benchmark model (`benchmarks/common.py`: tiny ResNet width 16, an exit after each "
        f"of its {r['num_exits']} blocks, linear heads, trained for 2 epochs on 20,000 Fashion-MNIST images; "
        f"trained once and cached under `benchmarks/cache/`). Val {r['val_samples']:,} images, test "
        f"{r['test_samples']:,}. Test accuracy per exit: {', '.join(f'{a:.3f}' for a in acc_test)}; cumulative "
        f"FLOPs share per exit: {', '.join(f'{s:.3f}' for s in r['cost_share'])}.\n")
    out.append(
        "Every method chooses on val (msp score, no calibrator) and is reported on test: at each budget (a share "
        "of the last exit's FLOPs) the candidate with the best val accuracy within the budget, its test accuracy "
        "(the rule behind `acc_at_50`); AUC is `acc_cost_auc` (test accuracy averaged over every budget from the "
        f"first exit's cost to the last's). The Optuna rows are the mean over {r['seeds']} seeds (min-max in "
        f"brackets), {r['trials']} NSGA-II trials each, as every study trial runs it; *Optuna per-exit search "
        "(eeopt)* also puts the global sweep's val frontier among its candidates (so it is never worse on val), "
        "*Optuna trials only* does not. The grids try G evenly spaced val-score quantiles per exit (0 = every "
        "image leaves, 1 = none), all G^(K-1) combinations, evaluated at once by `evaluate_thresholds`. Seconds: "
        "choosing on val plus evaluating the chosen front on test, in a warm process.\n")
    budgets = r["budgets"]
    out.append("| method | policies tried | " + " | ".join(f"test acc @ {b} %" for b in budgets)
               + " | test acc @ 100 % | AUC | seconds |")
    out.append("| --- | ---: | " + " | ".join("---:" for _ in budgets) + " | ---: | ---: | ---: |")
    for m in r["methods"]:
        def cell(key):
            v = acc(m[key])
            if key + "_min" in m and m.get("seeds", 1) > 1:
                v += f" [{m[key + '_min']:.4f}-{m[key + '_max']:.4f}]"
            return v
        out.append(f"| {m['method']} | {int(m['policies']):,} | "
                   + " | ".join(cell(f"test_acc_at_{b}") for b in budgets)
                   + f" | {cell('test_acc_at_100')} | {cell('acc_cost_auc')} | {m['seconds']:.3f} |")
    out.append("")
    out.append(search_reading(r))
    return "\n".join(out)


def search_reading(r: dict) -> str:
    """A few sentences computed from the numbers: who is best at which budget, and the sweep's gap to it."""
    lines = []
    for b in r["budgets"]:
        key = f"test_acc_at_{b}"
        valid = [m for m in r["methods"] if not math.isnan(m[key])]
        if not valid:
            lines.append(f"- {b} %: no method has a policy within the budget on val.")
            continue
        top = max(m[key] for m in valid)
        best = [m["method"] for m in valid if m[key] == top]
        sweep = next((m for m in valid if m["method"].startswith("global sweep")), None)
        gap = "" if sweep is None else (
            "; the global sweep is among them" if sweep[key] == top
            else f"; the global sweep reaches {sweep[key]:.4f} ({100 * (top - sweep[key]):.1f} points less)")
        lines.append(f"- {b} %: best test accuracy {top:.4f}, by {'; '.join(best)}{gap}.")
    half = 100 * 1.96 * math.sqrt(0.25 / r["test_samples"])
    return (f"Reading the table (test accuracy; on {r['test_samples']:,} test images a difference under about "
            f"{half:.1f} points is within the 95 % sampling noise of one accuracy):\n" + "\n".join(lines) + "\n")


def policies_section(data: dict | None) -> str:
    title = "Policy evaluation and global sweep"
    if data is None:
        return missing(title, ".venv/bin/python benchmarks/bench_policies.py")
    r = data["results"]
    out = [f"## {title}\n", ran(data)]
    out.append(
        f"One thread pinned (`OMP/OPENBLAS/MKL_NUM_THREADS=1`, `sched_setaffinity` to cpu {r['pinned_cpu']}), best of "
        f"{r['repeats']} (`time.perf_counter`).\n\n"
        f"(a) M = {r['policies']:,} threshold policies x N = {r['samples']:,} samples x K = {r['exits']} exits: "
        "synthetic exit outputs, msp scores computed once, thresholds at random per-exit score quantiles (as the "
        f"threshold search draws them). The per-policy loops ran on the first {r['loop_policies']} policies and are "
        f"scaled x{r['policies'] // r['loop_policies']}; the script checks that they give exactly the same "
        "accuracy and exit shares as `evaluate_thresholds` on those policies (mean cost to rtol 1e-12).\n\n"
        f"(b) `global_sweep` at N = {r['sweep_samples']:,}, K = {r['exits']}, from synthetic score and correctness "
        "arrays (no logits). \"Realistic\" scores grow with depth around a per-sample difficulty. In the worst case "
        f"every score is a record, so there are {r['exits'] - 1}N events.\n")
    out.append("| benchmark | size | seconds | notes |\n| --- | --- | ---: | --- |")
    for row in r["rows"]:
        out.append(f"| {row['benchmark']} | {row['size']} | {row['seconds']:.4f} | {row['notes']} |")
    out.append("")
    t = r["evaluate_thresholds_s"]
    loops = r["loops"]
    worst_sweep = max(s["seconds"] for s in r["sweeps"])
    full = r["sweep_samples"] >= 1_000_000
    out.append("Against the targets:")
    out.append(f"- `evaluate_thresholds` under 1 s on one core: {verdict(-t, -1.0)} ({1e3 * t:.1f} ms).")
    out.append("- At least 50x faster than a straightforward per-policy loop: "
               + "; ".join(f"{'**met**' if lp['speedup'] >= 50 else '**not met**'} against the "
                           f"{lp['name'].replace('per-policy loop', 'loop')} ({lp['speedup']:.0f}x)" for lp in loops)
               + ". All three loops are in the script, so either comparison can be rerun.")
    out.append(f"- `global_sweep` at N = 1,000,000, K = 8 under 2 s: "
               + (f"{verdict(-worst_sweep, -2.0)} (" + ", ".join(f"{s['seconds']:.2f} s {s['name']}"
                                                                 for s in r["sweeps"]) + ")."
                  if full else f"not measured at that size in this run (N = {r['sweep_samples']:,})."))
    out.append("")
    out.append(
        "The three loops are three readings of \"a straightforward per-policy loop\": the first is the loop "
        "NOTES.md measured (softmax once, then per policy a masked pass over the heads that takes each leaving "
        "sample's prediction from that head's probabilities), the other two precompute correctness and differ in "
        "how tightly they count.\n\n"
        "How `evaluate_thresholds` works. At each exit, a policy lets out a suffix of the samples sorted by that "
        "exit's score, and these suffixes are nested across policies. So the pass sets are bitsets (64 samples "
        "per uint64 word), built by one cumulative OR over the policies sorted by threshold. The samples a policy "
        "has not yet let out are bitsets too, and the counts are popcounts. Work is done in L2-sized chunks of "
        "policies. Total work is about K * M * N / 64 word operations plus one argsort of the N scores per exit; "
        "the rest is NumPy calls on [chunk, N/64] arrays (a cumulative OR, a row gather, and/xor, popcount, row "
        "sums), bound by NumPy's per-call cost and memory traffic. (An earlier profile, not regenerated: the "
        "argsorts took about 1 ms of 8; a dense [M, N] prototype took about 0.28 s, no faster than the loop.)\n")
    return "\n".join(out)


def evaluate_section(data: dict | None) -> str:
    title = "`eeopt exits evaluate` against a research-style threshold loop"
    if data is None:
        return missing(title, ".venv/bin/python benchmarks/bench_evaluate.py")
    r = data["results"]
    out = [f"## {title}\n", ran(data)]
    out.append(
        f"One file of synthetic exit outputs, N = {r['samples']:,}, K = {r['exits']}, C = {r['classes']} (float32 "
        f"logits). Both sides timed as whole processes (start and imports included), best of {r['repeats']}. "
        "eeopt computes every per-exit calibration and failure-prediction metric, the exact global sweep over every "
        "distinct score, its efficiency metrics and the patience baseline; the loop (what research code typically "
        "does) computes a 100-point approximation of one of eeopt's curves and nothing else.\n")
    out.append("| command | seconds | notes |\n| --- | ---: | --- |")
    out.append(f"| `eeopt exits evaluate big.npz --json` | {r['eeopt_s']:.2f} | every metric, exact sweep; "
               f"{r['speedup']:.1f}x the loop's speed |")
    out.append(f"| research loop, 100 thresholds | {r['loop_s']:.2f} | one 100-point curve |")
    out.append("")
    out.append("Stages of `exits evaluate` in-process: "
               + ", ".join(f"{k} {v:.2f} s" for k, v in r["stages_s"].items()) + ".\n")
    return "\n".join(out)


def training_section(data: dict | None) -> str:
    title = "Multi-exit training overhead"
    if data is None:
        return missing(title, ".venv/bin/python benchmarks/bench_training.py")
    r = data["results"]
    out = [f"## {title}\n", ran(data)]
    out.append(
        f"Fashion-MNIST (Debian's files), {r['train_subset']:,} training images, `tinyresnet` width {r['width']}, "
        f"AdamW, batch 128, {r['threads']} torch threads, one epoch; one warm-up run, then {r['repeats']} "
        "interleaved repeats, best of each. The same backbone with an exit (linear head) after every block versus "
        "with only the final exit. *Seconds / epoch* is the training steps plus per-exit accuracy on a 500-image "
        "val split; *CPU seconds / run* the process CPU time of the whole `train` call (steadier under load).\n")
    out.append("| model | exits | seconds / epoch (wall) | ratio | CPU seconds / run | ratio |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in r["rows"]:
        out.append(f"| {row['model']} | {row['exits']} | {row['epoch_s']:.2f} | {row['epoch_ratio']:.2f} | "
                   f"{row['cpu_s']:.2f} | {row['cpu_ratio']:.2f} |")
    exits = max(r["rows"], key=lambda row: row["exits"])  # the model with every exit against the final exit only
    ratio, cpu_ratio = exits["epoch_ratio"], exits["cpu_ratio"]
    out.append(f"\nTarget: at most 1.3x. {verdict(-ratio, -1.3)} ({ratio:.2f}x wall, {cpu_ratio:.2f}x CPU).\n")
    precision = r.get("precision")
    if precision is None:
        out.append("fp32 vs bf16 on the CPU: not measured in this run (`.venv/bin/python benchmarks/bench_training.py` "
                   "measures it).\n")
        return "\n".join(out)
    flags = ", ".join(precision.get("bf16_cpu") or []) or "none (torch emulates bf16)"
    when = (f"Ran {precision['date']}, {precision['train_subset']:,} training images, {precision['threads']} torch "
            f"threads: `{precision['command']}`. " if "date" in precision else "")
    out.append(
        f"**fp32 vs bf16 (`training.precision`) on the CPU**: the model with every exit, one epoch each, interleaved "
        f"after a bf16 warm-up, best of {len(precision['images_per_s']['fp32'])}; *images / s* is history's "
        f"`images_per_s` (the training steps only). {when}Load average before these runs: "
        f"{' / '.join(f'{v:.2f}' for v in precision['load_average'])} (1 / 5 / 15 min, on "
        f"{data['machine']['cores']} cores; it lags, so it includes the runs before). The CPU's bfloat16 "
        f"instructions: {flags}.\n")
    out.append("| precision | images / s (best) | all runs | vs fp32 |\n| --- | ---: | --- | ---: |")
    fp32 = precision["best_images_per_s"]["fp32"]
    for name, best in precision["best_images_per_s"].items():
        runs = ", ".join(f"{v:,.0f}" for v in precision["images_per_s"][name])
        out.append(f"| {name} | {best:,.0f} | {runs} | {best / fp32:.2f}x |")
    out.append("")
    return "\n".join(out)


def data_section(data: dict | None) -> str:
    title = "Data throughput: streamed (DataLoader workers) vs in memory"
    if data is None:
        return missing(title, ".venv/bin/python benchmarks/bench_data.py")
    r = data["results"]
    out = [f"## {title}\n", ran(data)]
    out.append(
        f"An image folder of {r['train']:,} Fashion-MNIST training PNGs (28x28 grey; 10 % held out as val) read by "
        "`imagefolder`, held in memory (`data.stream: false`: every image decoded by `load_dataset`) or streamed "
        "(`data.stream: true`: images decoded per batch, in the training process with 0 workers, else in "
        f"DataLoader worker processes). `tinyresnet` width {r['width']}, batch {r['batch_size']}, {r['threads']} "
        "torch thread(s) in the training process. *Load* is `load_dataset` (streamed: listing and train "
        "statistics); *data pass* one shuffled pass over the train split without a model (a streamed split starts "
        "its workers here); *epoch* one training epoch plus the per-exit accuracy on val; *CPU* the training "
        "process's CPU seconds over that `train` call (the workers' decoding is not in it, so it shows what they "
        "take off the training process; wall seconds on a loaded machine are noisy, CPU seconds less so). Images "
        "per second = train images / seconds; after a warm-up run, "
        f"{r.get('repeats', 1)} interleaved round(s), the best of each.\n")
    out.append("| path | load s | data pass, images / s | epoch s | epoch, images / s | training process CPU s |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in r["rows"]:
        cpu = row.get("train_process_cpu_s")
        out.append(f"| {row['path']} | {row['load_s']:.1f} | {row['data_images_per_s']:,.0f} | "
                   f"{row['epoch_s']:.1f} | {row['epoch_images_per_s']:,.0f} | "
                   f"{'n/a' if cpu is None else f'{cpu:.1f}'} |")
    memory = next((row for row in r["rows"] if not row["stream"]), None)
    if memory is not None:
        best = max((row for row in r["rows"] if row["stream"]), key=lambda row: row["epoch_images_per_s"],
                   default=None)
        zero = next((row for row in r["rows"] if row["stream"] and row["workers"] == 0), None)
        if best is not None:
            text = (f"\nThe fastest streamed run ({best['path']}) trained at "
                    f"{best['epoch_images_per_s'] / memory['epoch_images_per_s']:.2f}x the in-memory speed (wall "
                    "clock). ")
            if not data["machine"].get("idle", True):
                text += ("The machine was shared (see the load above): the training process got a fraction of a "
                         "core, so wall-clock differences between the paths mostly measure the other processes. ")
            if zero is not None and memory.get("train_process_cpu_s") and zero.get("train_process_cpu_s"):
                extra = zero["train_process_cpu_s"] - memory["train_process_cpu_s"]
                text += (f"In CPU time, decoding every PNG again each epoch in the training process (0 workers) "
                         f"cost {extra:+.1f} s over the in-memory epoch's {memory['train_process_cpu_s']:.1f} s; "
                         "workers take that off the training process. ")
            text += ("In memory nothing is decoded after loading, which is why `data.stream` left unset streams only "
                     "a train split above 2 GiB of float32.\n")
            out.append(text)
    return "\n".join(out)


def study_section(data: dict | None) -> str:
    title = "Study orchestration overhead"
    if data is None:
        return missing(title, ".venv/bin/python benchmarks/bench_study.py")
    r = data["results"]
    n = r["trials"]
    out = [f"## {title}\n", ran(data)]
    out.append(
        f"{n} tiny trials (digits, `tinyresnet` width 8, 1 epoch, 30 threshold-search trials) run one at a time, "
        "first in a plain loop of `run_trial` (no Ray, no storage, no MLflow; after one warm-up trial), then as an "
        "eeopt study (local Ray with 2 CPUs, started first and timed on its own; SQLite Optuna storage; SQLite "
        "MLflow store with params, metrics, artifacts and plots per trial). The loop draws no plots; the study's "
        "trials hand theirs to the study's plot writer, a Ray actor beside the trials (`eeopt.study.worker`), and "
        "the study waits for it before it returns. The overhead is the study's time minus the loop's, per trial.\n")
    out.append("| what | seconds | per trial |\n| --- | ---: | ---: |")
    out.append(f"| plain loop (`run_trial`) | {r['loop_s']:.1f} | {r['loop_s'] / n:.2f} |")
    out.append(f"| `ray.init` (once) | {r['ray_init_s']:.1f} | |")
    out.append(f"| eeopt study (Tune + Optuna storage + MLflow), Ray up | {r['study_s']:.1f} | "
               f"{r['study_s'] / n:.2f} |")
    out.append(f"| **overhead** | {r['overhead_s']:.1f} | **{r['overhead_per_trial_s']:.2f}** |")
    steady = r.get("steady_per_trial_s")
    if steady is not None:
        out.append(f"| steady state: first trial's end to the last's, per trial | | {steady:.2f} |")
        out.append(f"| of it, beyond the loop's trial | | {r['steady_overhead_per_trial_s']:.2f} |")
        out.append(f"| paid once (stores opened, the first worker's imports) | {r['one_time_s']:.1f} | |")
        out.append(f"| the four plots of one trial, in-process | | {r['plots_s']:.2f} |")
        if "after_last_trial_s" in r:
            out.append(f"| first trial finished after (stores opened, a fresh worker) | {r['first_trial_end_s']:.1f} | |")
            out.append(f"| after the last trial finished (the plot writer's backlog) | {r['after_last_trial_s']:.1f} | |")
    pairs = r.get("overheads_per_trial_s", [r["overhead_per_trial_s"]])
    loops = r.get("loops_per_trial_s", [r["loop_s"] / n])
    out.append(f"\nTarget: under 2 s per trial once Ray is up. {verdict(-r['overhead_per_trial_s'], -2.0)} "
               f"({r['overhead_per_trial_s']:.2f} s, what is paid once spread over {n} trials"
               + (f"; {r['steady_overhead_per_trial_s']:.2f} s per trial in the steady state, "
                  f"{verdict(-r['steady_overhead_per_trial_s'], -2.0)}" if steady is not None else "")
               + f"). The loop and the study run in pairs, back to back; this is the median of {len(pairs)} pairs, "
               f"whose overheads per trial were {', '.join(f'{v:.2f}' for v in pairs)} s (the plain loop at "
               f"{', '.join(f'{v:.2f}' for v in loops)} s per trial in them: this machine's speed drifts by tens of "
               "percent within minutes). What the study adds is mostly paid once: the first trial's fresh Ray "
               "worker (Ray's actor start, then seconds of imports and first calls: torch, MLflow; "
               "Tune reuses that worker for the next trials, `reuse_actors=True`) and, at the end, the plots the "
               "writer still has to draw: it draws and logs a trial's four plots in about a second, longer than "
               "these tiny trials, so it falls behind (trials of a minute or more leave it idle most of the time). "
               "Cut since 2026-12-03 12:59, when this benchmark gave 3.09 s per trial (2.42 s on an idle machine): "
               "the trial plots use fixed layouts and fixed title positions (matplotlib's constrained layout and "
               "its title placement measured every tick label: 0.72 -> 0.47 s for one trial's four plots); the plot "
               "writer imports matplotlib and opens the MLflow store while the first trial starts; a worker opens "
               "its MLflow store on a thread while it loads the trial; neither the driver nor the plot writer "
               "imports torch; a new SQLite MLflow store is a copy of an empty migrated one (MLflow's migrations "
               "took about 1.5 s per new store); a local Ray's workers get the driver's PYTHONPATH from their "
               "environment, so the workers Ray starts ahead run the trials; a worker reads the digits from the "
               "file scikit-learn bundles without importing scikit-learn. The overhead follows the machine's speed "
               "as the loop does: on 2026-12-03, on an AMD EPYC host of the same size where the loop ran at 0.27 to "
               "0.37 s per trial, two runs of this benchmark gave medians of 2.25 and 2.33 s per trial (the target "
               "missed), and single runs 1.78 to 2.36 s.\n")
    return "\n".join(out)


def trace_section(data: dict | None) -> str:
    """The orchestration modules one study trial touches (issue 19's count), by package."""
    title = "Modules on one trial's path"
    if data is None:
        return missing(title, ".venv/bin/python benchmarks/trace_study.py")
    r = data["results"]
    out = [f"## {title}\n", ran(data)]
    out.append("`eeopt study run` on a one-trial study. The driver (every thread) is traced with `sys.setprofile`: a "
               "module counts when one of its functions runs. The Ray workers (the trial's, the plot writer's) run "
               "with `PYTHONPROFILEIMPORTTIME=1`: a module counts when a worker imports it (an upper bound). The "
               "trial pipeline, training, models, data, plots and the core are not counted.\n")
    out.append("| package | modules | which |\n| --- | ---: | --- |")
    for pkg, mods in r["by_package"].items():
        names = ", ".join(f"`{m.removeprefix(pkg + '.')}`" if m != pkg else "`__init__`" for m in mods)
        out.append(f"| `{pkg}` | {len(mods)} | {names} |")
    study = [m for m in r["by_package"]["eeopt.study"] if m != "eeopt.study"]
    modules = len([f for f in (ROOT / "eeopt" / "study").glob("*.py") if f.name != "__init__.py"])
    out.append(f"\nIn the driver {len(r['driver_called'])} ran; the workers imported {len(r['workers_imported'])}. "
               "Target (issue 19): at most 8 modules of orchestration on a trial's path, down from about 15 of "
               f"`eeopt/study/`'s 17. `eeopt/study/` now has {modules} modules; besides the package's lazy "
               f"`__init__`, the path touches {len(study)} of them, and `cli/study` from the command line "
               "(`eeopt.cli` and `cli/common` are the entry every command shares). The stores layer "
               "(`eeopt/stores/`, built by issue 19 so that a store kind is one module) is counted on its own "
               "line.\n")
    return "\n".join(out)


GPU_COMMAND = "benchmarks/gpu_check.sh"


def gpu_section(inference: dict | None, training: dict | None = None) -> str:
    """The GPU section: trials sharing a GPU (bf16 vs fp32) and early-exit inference on CUDA, each from its file."""
    parts = [gpu_training_section(training)]
    if inference is not None:
        parts.append(inference_section(inference, "GPU: early-exit inference (CUDA)"))
    else:
        parts.append("## GPU: early-exit inference (CUDA)\n\n**Not measured**: no CUDA machine was lent to the runs "
                     f"behind this file. On a machine with one, `{GPU_COMMAND}` runs `bench_inference.py --device "
                     "cuda` (it trains the benchmark model first if it is not cached), writes "
                     "`benchmarks/results/inference_cuda.json`, and `benchmarks/report.py` fills this section with "
                     "the same tables as the CPU one (the predictor's measured / predicted speed-up).\n")
    return "\n".join(parts)


def gpu_training_section(data: dict | None) -> str:
    """Images per second of study trials that share one GPU, in bf16 and in fp32 (`bench_gpu_training.py`)."""
    title = "GPU: trials sharing a GPU, bf16 vs fp32"
    if data is None or data["results"].get("device") != "cuda":
        return (f"## {title}\n\n**Not measured**: no CUDA machine was lent to the runs behind this file. On a machine "
                f"with one, after `make setup` and `make data`, `{GPU_COMMAND}` (under 8 minutes) runs "
                "`benchmarks/gpu_study.yaml` (2 trials at `gpus_per_trial: 0.5`, both at once) in bf16 and in fp32 "
                "through `bench_gpu_training.py`, writes `benchmarks/results/gpu_training.json`, and "
                "`benchmarks/report.py` fills this section: images per second of every trial and epoch, the "
                "device each trial trained on, and the bf16 / fp32 ratio.\n")
    r = data["results"]
    res = r["resources"]
    out = [f"## {title}\n", ran(data)]
    out.append(
        f"`{r['study']}` on {r['gpu']}: Fashion-MNIST"
        + (f" ({r['train_subset']:,} training images)" if r.get("train_subset") else "")
        + f", `tinyresnet` width {r['width']} with an exit after every block, batch {r['batch_size']}, "
        f"{r['epochs']} epochs, `deterministic: false` (cudnn.benchmark); {res['max_concurrent']} trials at once, "
        f"each with {res['gpus_per_trial']} GPU and {res['cpus_per_trial']} CPUs. One study per precision; *images / "
        "s* is `train/images_per_s` as each trial's MLflow run holds it (the training steps of the epoch, while the "
        "other trial shares the GPU). *Device* and *GPU* are the trial's `env.device` and `eeopt.gpus` tags.\n")
    out.append("| precision | trial | device | GPU | images / s per epoch | study seconds |")
    out.append("| --- | ---: | --- | --- | --- | ---: |")
    for precision, study in r["studies"].items():
        for t in study["trials"]:
            out.append(f"| {precision} | {t['trial']} | {t['device']} | {t['gpus']} | "
                       f"{', '.join(f'{v:,.0f}' for v in t['images_per_s'])} | {study['seconds']:.0f} |")
    bf16, fp32 = (r["studies"][p]["last_epoch_images_per_s"] for p in ("bf16", "fp32"))
    out.append(f"\nLast epoch, mean over the trials: bf16 {bf16:,.0f} images / s, fp32 {fp32:,.0f}: "
               f"**bf16 / fp32 = {r['bf16_over_fp32']:.2f}**.\n")
    return "\n".join(out)


def certify_section(data: dict | None) -> str:
    """Certified policies on the benchmark model (`bench_certify.py`): the command's numbers and the resampling."""
    title = "Certified exit policies (risk control)"
    if data is None:
        return missing(title, ".venv/bin/python benchmarks/bench_certify.py")
    r = data["results"]
    eps, delta = r["epsilon"], r["delta"]
    out = [f"## {title}\n", ran(data)]
    out.append(
        f"`eeopt exits certify --fit-on val.npz --evaluate-on test.npz --risk performance-gap --epsilon {eps} "
        f"--delta {delta}` on the benchmark model (val {r['val_samples']:,} images certify, test "
        f"{r['test_samples']:,} report): the promise is that the share of test images the policy gets wrong while "
        f"the last exit gets them right stays <= {eps} with probability >= {1 - delta:g} (crc: in expectation). "
        "Beside each certified policy, the uncontrolled val-optimal policy at the same val cost (the per-exit "
        "search's most accurate, no promise). Speed-up: the last exit's FLOPs over the mean FLOPs per image.\n")
    out.append("| policy | certified | n | p-value / bound | test risk | test acc | test speed-up | val-optimal: "
               "test risk | test acc | test speed-up | seconds |")
    out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in r["rows"]:
        out.append(f"| {x['name']} | {'yes' if x['certified'] else 'no'} | {x['n']:,} | {x['statistic']:.4f} | "
                   f"{x['test_risk']:.4f} | {x['test_accuracy']:.4f} | {x['test_speedup']:.3f}x | "
                   f"{x['uncontrolled_test_risk']:.4f} | {x['uncontrolled_test_accuracy']:.4f} | "
                   f"{x['uncontrolled_test_speedup']:.3f}x | {x['seconds']:.2f} |")
    rows = {x["name"]: x for x in r["rows"]}
    shared, per_exit = rows.get("shared, ltt"), rows.get("per-exit, ltt")
    if shared and per_exit:
        cheaper = per_exit["test_speedup"] > shared["test_speedup"]
        out.append(
            f"\nPer-exit thresholds (Pareto Testing) {'are' if cheaper else 'are not'} cheaper at the same promise "
            f"here: {per_exit['test_speedup']:.3f}x against {shared['test_speedup']:.3f}x for one shared threshold "
            f"(ltt). Pareto Testing searches on half of val and tests on the other half (n = {per_exit['n']:,} "
            f"against {shared['n']:,}), so its test is less sharp"
            + ("; and the policy it certified is a shared threshold after all (the search's candidates include the "
               "exact shared-threshold front), the first "
               f"{per_exit['passed']} of its {per_exit['candidates']:,} front points passing before the first failure."
               if len(set(map(str, per_exit["thresholds"]))) == 1 else "."))
    imp = r["impossible"]
    out.append(f"\nThe impossible request (100 calibration images, epsilon 0, delta 0.01) exits 0 and prints: "
               f"\"{imp['printed'].split(' (ltt')[0]} ...\"; its policy is the last exit alone "
               f"(speed-up {imp['test_speedup']:.2f}x).\n")
    s = r["resampling"]
    out.append(
        f"Does the promise hold on this model? The val and test images are pooled and split at random "
        f"{s['draws']} times into {s['calibration_samples']:,} calibration and {s['test_samples']:,} test images; "
        f"each draw certifies a shared threshold and also takes the uncontrolled choice (the cheapest threshold "
        f"whose calibration risk is <= {eps}). P(test risk > {eps}) should be at most {delta} for ltt and ucb-wsr "
        "(the test risk is itself an estimate on 10,000 images, so a little above is noise); crc promises only "
        "the mean.\n")
    out.append("| choice | draws | P(test risk > epsilon) | mean test risk | mean speed-up | seconds per draw |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for m in s["methods"]:
        out.append(f"| {m['method']} | {m['draws']} | {m['exceed']:.3f} | {m['mean_risk']:.4f} | "
                   f"{m['mean_speedup']:.3f}x | {m['seconds_per_draw']:.4f} |")
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- main
def render(results: Path = RESULTS) -> str:
    session = load("session", results)
    parts = [
        header(session),
        inference_section(load("inference", results)),
        search_section(load("search", results)),
        certify_section(load("certify", results)),
        policies_section(load("policies", results)),
        evaluate_section(load("evaluate", results)),
        training_section(load("training", results)),
        data_section(load("data", results)),
        study_section(load("study", results)),
        trace_section(load("trace_study", results)),
        gpu_section(load("inference_cuda", results), load("gpu_training", results)),
    ]
    return "\n".join(p.rstrip() + "\n" for p in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", action="store_true", help="record the machine and its load now (make bench)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the result files")
    parser.add_argument("--output", type=Path, default=OUT, help="the file to write (default BENCHMARKS.md)")
    args = parser.parse_args()
    if args.start:
        RESULTS.mkdir(parents=True, exist_ok=True)
        m = machine_info()
        SESSION.write_text(json.dumps({"machine": m, "started": time.time()}, indent=1) + "\n")
        print(f"[report] machine: {m['cpu']}, {m['cores']} cores, load {fmt_load(m)} "
              f"({'idle' if m['idle'] else 'NOT idle'}), nice {m['nice']}", file=sys.stderr)
        return
    if SESSION.is_file():
        session = json.loads(SESSION.read_text())
        if "total_seconds" not in session and "started" in session:
            session["total_seconds"] = round(time.time() - session["started"], 1)
            session["finished"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            SESSION.write_text(json.dumps(session, indent=1) + "\n")
    args.output.write_text(render(args.results))
    print(f"[report] wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
