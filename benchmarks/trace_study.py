"""Which orchestration modules one study trial touches: `eeopt study run` on a one-trial study, traced.

    .venv/bin/python benchmarks/trace_study.py

The driver (this process, every thread) is traced with `sys.setprofile`: a module counts when one of its functions
runs. The Ray workers (the trial's, the plot writer's) cannot be traced from here; they run with
`PYTHONPROFILEIMPORTTIME=1`, and a module counts when a worker imports it (an upper bound: imported is not always
called). Orchestration is `eeopt.cli`, `eeopt.study` and `eeopt.stores`; the trial pipeline, training, models,
data, plots and the core are not counted (issue 19). Writes benchmarks/results/trace_study.json (or `--out`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import yaml

from bench_study import TRIAL  # the same tiny trial as the overhead benchmark
from common import machine_info, progress, write_result

ORCHESTRATION = ("eeopt.cli", "eeopt.study", "eeopt.stores")
STUDY = {**TRIAL, "search_space": {"training.lr": {"type": "float", "low": 0.002, "high": 0.004}},
         "study": {"name": "trace", "trials": 1, "sampler": "random", "resources": {"cpus_per_trial": 1}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/trace_study.json)")
    args = parser.parse_args()
    machine = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study_file = folder / "study.yaml"
        study_file.write_text(yaml.safe_dump(STUDY))
        ray_temp = folder / "ray"
        os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # inherited by the local Ray the study starts, and its workers
        os.environ["RAY_TMPDIR"] = str(ray_temp)
        called: set[str] = set()

        def profile(frame, event, arg):
            if event == "call" and frame.f_code.co_name != "<module>":  # a function ran, not an import
                name = frame.f_globals.get("__name__", "")
                if name.startswith(ORCHESTRATION):
                    called.add(name)

        progress("running a one-trial study, tracing the driver")
        from eeopt.cli import main as cli_main

        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            code = cli_main(["study", "run", str(study_file)])
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
        if code != 0:
            raise SystemExit(f"the study failed (exit {code})")
        imported = _worker_imports(ray_temp)
    driver = sorted(called)
    workers = sorted(imported)
    union = sorted(set(driver) | set(workers))
    by_package = {pkg: [m for m in union if m == pkg or m.startswith(pkg + ".")] for pkg in ORCHESTRATION}
    write_result("trace_study", {"driver_called": driver, "workers_imported": workers, "modules": union,
                                 "by_package": by_package, "study": STUDY}, machine, out=args.out)
    print(f"\n{len(union)} orchestration modules on one trial's path:")
    for pkg, mods in by_package.items():
        print(f"  {pkg} ({len(mods)}): {', '.join(m.removeprefix(pkg + '.') for m in mods)}")
    print(f"driver (called): {len(driver)}; workers (imported): {len(workers)}")


def _worker_imports(ray_temp: Path) -> set[str]:
    """The orchestration modules the study's Ray workers imported (`-X importtime` lines in Ray's worker logs)."""
    pattern = re.compile(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)")
    found = set()
    for log in ray_temp.rglob("worker-*.err"):
        for match in pattern.finditer(log.read_text(errors="replace")):
            name = match.group(1)
            if name.startswith(ORCHESTRATION):
                found.add(name)
    return found


if __name__ == "__main__":
    main()
