"""Look at a study the way a person does: start `eeopt ui` and `eeopt dashboard` on free ports, take headless
Chromium screenshots of the pages their printed URLs open (Playwright, `scripts/screenshot.mjs`), stop both.

    python scripts/ui_screenshots.py STUDY.yaml [--out screenshots/] [--node-modules /tmp/pw/node_modules]

Needs Chromium (Debian: `apt-get install chromium`) and `playwright-core` (`npm install playwright-core` in some
folder; pass its node_modules). Screenshots go to an ignored folder (`screenshots/` by default); nothing is
committed. The script fails when a page never shows what it waits for: the trial runs with the objective column on
the MLflow page, the objective's name on optuna-dashboard.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(command: list[str], pattern: str, timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
    """Start an `eeopt` server command and wait for the URL it prints once the server answers."""
    proc = subprocess.Popen([sys.executable, "-m", "eeopt.cli", *command], stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    for line in proc.stderr:
        print(f"  {line.rstrip()}", file=sys.stderr)
        match = re.search(pattern, line)
        if match:
            print(f"  (answered after {time.monotonic() - started:.0f} s)", file=sys.stderr)
            return proc, match.group(0)
        if time.monotonic() > deadline:
            break
    proc.terminate()
    raise SystemExit(f"{' '.join(command)}: no URL within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def shots(mlflow_url: str, dashboard_url: str, out: Path, objective: str, study: str, best: dict) -> list[dict]:
    """The pages to look at, and what each must show before its screenshot. `best`: the best trial's number, MLflow
    run id and experiment id."""
    base = mlflow_url.split("#")[0]
    experiment = best["experiment"]
    charts = mlflow_url + "&compareRunsMode=CHART"
    trials_page = dashboard_url.rstrip("/") + "/trials"
    return [
        # the trials view: trials only, sorted by the objective, sampled values under their whole names
        {"url": mlflow_url, "out": str(out / "mlflow_runs.png"), "waitFor": "trial-", "closeAssistant": True},
        # the charts: the objective against each sampled value, then the proxies against efficiency
        {"url": charts, "out": str(out / "mlflow_charts.png"), "waitFor": " vs. ", "closeAssistant": True,
         "height": 1400},
        {"url": charts, "out": str(out / "mlflow_charts_plots.png"), "waitFor": " vs. ", "closeAssistant": True,
         "scrollTo": "plots (trials side by side", "height": 1400},
        # a trial's page: its description starts with the objective and the headline numbers
        {"url": f"{base}#/experiments/{experiment}/runs/{best['run_id']}?workflowType=machine_learning",
         "out": str(out / "mlflow_trial_page.png"), "waitFor": "Objective", "closeAssistant": True, "height": 1200},
        # for comparison: the same page without eeopt's view (what `mlflow ui` shows)
        {"url": f"{base}#/experiments/{experiment}/runs?workflowType=machine_learning",
         "out": str(out / "mlflow_without_view.png"), "waitFor": "matching runs", "closeAssistant": True},
        {"url": dashboard_url, "out": str(out / "dashboard_study.png"), "waitFor": objective},
        {"url": trials_page, "out": str(out / "dashboard_trials.png"), "waitFor": "MLflow run", "height": 1200},
        # the trial note's link into MLflow, followed as rendered: it lands on the run's page on `eeopt ui`
        {"url": trials_page, "out": str(out / "dashboard_link_followed.png"), "waitFor": "MLflow run",
         "click": [f"Trial {best['number']}"], "follow": best["run_id"], "waitForAfter": "Objective",
         "closeAssistant": True, "height": 1200},
    ]


def best_trial(study_file: Path) -> dict:
    """The best trial's number, MLflow run id and experiment id (read from the study's stores)."""
    sys.path.insert(0, str(ROOT))
    from eeopt.study import Study
    from eeopt.study import tracking

    study = Study.from_yaml(study_file)
    trial = study.trial_store(create=False).best_trial()
    experiment = tracking.client(study.tracking_uri).get_experiment_by_name(study.experiment_name).experiment_id
    return {"number": trial.number, "run_id": trial.user_attrs["mlflow_run_id"], "experiment": experiment}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    parser.add_argument("--node-modules", type=Path, default=Path(os.environ.get("NODE_MODULES", "node_modules")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import yaml

    settings = yaml.safe_load(args.study.read_text())["study"]
    objective = next(iter(settings.get("objectives", {"val/acc_cost_auc": "maximize"})))
    ui, mlflow_url = start(["ui", str(args.study), "--port", "0"], r"http://\S+#/experiments/\S*")
    try:
        board, dashboard_url = start(["dashboard", str(args.study), "--port", "0"], r"http://\S+/dashboard\S*")
        try:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
                json.dump(shots(mlflow_url, dashboard_url, args.out.resolve(), objective, settings["name"],
                                best_trial(args.study)), fh)
            env = {**os.environ, "NODE_PATH": str(args.node_modules.resolve())}
            script = args.node_modules.resolve().parent / "eeopt-screenshot.mjs"
            script.write_text((ROOT / "scripts" / "screenshot.mjs").read_text())  # ESM resolves from its folder
            return subprocess.run(["node", str(script), fh.name], env=env, timeout=900).returncode
        finally:
            stop(board)
    finally:
        stop(ui)


if __name__ == "__main__":
    raise SystemExit(main())
