"""The dependency rules of shared/DESIGN.md, checked statically (import-linter) and at run time."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_core_runs_without_heavy_libraries():
    """Using the core end to end (metrics, calibration, policies, sweep) loads no torch, Ray or MLflow."""
    code = (
        "import sys\n"
        "from eeopt.synthetic import synthetic_exit_outputs\n"
        "from eeopt.evaluation import evaluate_exits\n"
        "val, test = synthetic_exit_outputs(3, 300, 5, seed=1), synthetic_exit_outputs(3, 300, 5, seed=2)\n"
        "evaluate_exits(test, fit_on=val, calibrate='temperature', score='margin')\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
