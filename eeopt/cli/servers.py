"""`eeopt ui` and `eeopt dashboard`: the MLflow UI and optuna-dashboard for a study's stores."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from eeopt.cli.common import SetOpt, StudyArg

servers_app = typer.Typer()


@servers_app.command("ui")
def ui_cmd(
    study_file: StudyArg,
    port: Annotated[int, typer.Option("--port")] = 5000,
    overrides: SetOpt = None,
) -> None:
    """Start the MLflow UI on 127.0.0.1 for this study's tracking store."""
    import subprocess

    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    typer.echo(f"MLflow UI for study {study.name}: http://127.0.0.1:{port}  (Ctrl-C to stop)", err=True)
    # The store's URI goes in the environment, not on the command line, where `ps` would show its password.
    raise typer.Exit(subprocess.call(cmd, env={**os.environ, "MLFLOW_BACKEND_STORE_URI": study.tracking_uri}))


@servers_app.command("dashboard")
def dashboard_cmd(
    study_file: StudyArg,
    port: Annotated[int, typer.Option("--port")] = 8080,
    overrides: SetOpt = None,
) -> None:
    """Start optuna-dashboard on 127.0.0.1 for this study's Optuna storage."""
    import shutil
    import subprocess

    from eeopt.errors import EeoptError
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
    if not Path(exe).exists():
        raise EeoptError("optuna-dashboard is not installed: pip install 'eeopt[dashboard]'")
    from eeopt.study.storage import normalize_url, require_optuna_schema

    require_optuna_schema(study.storage_url)  # optuna-dashboard would create an empty storage
    typer.echo(f"optuna-dashboard for study {study.name}: http://127.0.0.1:{port}  (Ctrl-C to stop)", err=True)

    # The storage URL goes in the environment, not on the command line, where `ps` would show its password.
    code = ("import os, optuna_dashboard; optuna_dashboard.run_server(os.environ['EEOPT_DASHBOARD_STORAGE'], "
            f"host='127.0.0.1', port={int(port)})")
    env = {**os.environ, "EEOPT_DASHBOARD_STORAGE": normalize_url(study.storage_url)}
    raise typer.Exit(subprocess.call([sys.executable, "-c", code], env=env))


# ------------------------------------------------------------------------------------------------------ helpers
