"""`eeopt ui` and `eeopt dashboard`: the MLflow UI and optuna-dashboard for a study's stores.

Both check the port before anything starts (busy: one line, exit status 2; `--port 0` picks a free one), print the
URL once the server answers (the study's page, not the landing page), and stop the server with all its processes
on Ctrl-C or SIGTERM (`eeopt.servers`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from eeopt.cli.common import SetOpt, StudyArg

servers_app = typer.Typer()

HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")]
OpenOpt = Annotated[bool, typer.Option("--open", help="Open the page in a web browser once it answers.")]


@servers_app.command("ui")
def ui_cmd(
    study_file: StudyArg,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: a free one).")] = 5000,
    host: HostOpt = "127.0.0.1",
    workers: Annotated[int, typer.Option("--workers", min=1, help="Server worker processes.")] = 1,
    open_browser: OpenOpt = False,
    overrides: SetOpt = None,
) -> None:
    """Serve the MLflow UI for this study's tracking store, opened on the study's trials."""
    from eeopt.servers import free_port, local_url, serve
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    if study.stores.tracking_server:  # a tracking server serves its own UI
        url, _ = study.runs_page()
        _announce(f"MLflow UI (served by the study's tracking server): {url}", url, open_browser, stop=False)()
        return
    port = free_port(host, port)
    # MLflow's server would create a store that is not there (and its folder): an empty UI of nothing
    if not study.stores.tracking_exists():
        from eeopt.errors import StorageError

        raise StorageError(f"no MLflow tracking store at {study.stores.masked_tracking}: study {study.name!r} has "
                           f"not run yet (eeopt study run {study_file})")
    url, has_runs = study.runs_page(local_url(host, port))
    what = f"the trials of study {study.name}" if has_runs else f"no runs of study {study.name} yet"
    cmd = [sys.executable, "-m", "mlflow", "server", "--default-artifact-root", study.artifact_root,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    # No job runner: eeopt schedules no MLflow jobs, and it costs processes and memory. The store's URI goes in
    # the environment (mlflow reads MLFLOW_BACKEND_STORE_URI), not on the command line, where `ps` shows it.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_BACKEND_STORE_URI": study.tracking_uri}
    from eeopt.cli.links import forget_ui, record_ui, ui_file

    record, announce = ui_file(study.tracking_uri), _announce(f"MLflow UI ({what}): {url}", url, open_browser)

    def ready() -> None:  # optuna-dashboard's trial links find this UI through the record (eeopt.cli.links)
        record_ui(record, local_url(host, port))
        announce()

    try:
        code = serve(cmd, host=host, port=port, ready_path="/health", name="the MLflow UI", env=env,
                     on_ready=ready, echo=lambda line: typer.echo(line, err=True))
    finally:
        forget_ui(record)
    raise typer.Exit(code)


@servers_app.command("dashboard")
def dashboard_cmd(
    study_file: StudyArg,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: a free one).")] = 8080,
    host: HostOpt = "127.0.0.1",
    open_browser: OpenOpt = False,
    overrides: SetOpt = None,
) -> None:
    """Serve optuna-dashboard (one process) for this study's Optuna storage, opened on the study."""
    import shutil

    from eeopt.errors import EeoptError
    from eeopt.servers import free_port, local_url, serve
    from eeopt.study import Study

    study = Study.from_yaml(study_file, overrides or [])
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
    if not Path(exe).exists():
        raise EeoptError("optuna-dashboard is not installed: pip install 'eeopt[dashboard]'")
    study.stores.require_optuna()  # optuna-dashboard would create an empty storage
    port = free_port(host, port)
    study_id = study.optuna_study_id()
    url = local_url(host, port, f"/dashboard/studies/{study_id}" if study_id is not None else "/dashboard")
    # optuna-dashboard's own command line, with the storage URL put in its argv inside the process: from the
    # environment, not on the command line, where `ps` would show its password; its app also answers the trial
    # notes' links into MLflow (eeopt.cli.links).
    from eeopt.cli.links import ui_file

    code = "import sys; from eeopt.cli.links import dashboard_main; sys.exit(dashboard_main())"
    cmd = [sys.executable, "-c", code, "--host", host, "--port", str(port), "--server", "wsgiref", "--quiet"]
    record = ui_file(study.tracking_uri)
    raise typer.Exit(serve(cmd, host=host, port=port, ready_path="/api/meta", name="optuna-dashboard",
                           env={"EEOPT_DASHBOARD_STORAGE": study.stores.optuna_url,
                                "EEOPT_UI_FILE": str(record) if record else "",
                                "EEOPT_STUDY_FILE": str(study_file)},
                           on_ready=_announce(f"optuna-dashboard (study {study.name}): {url}", url, open_browser),
                           echo=lambda line: typer.echo(line, err=True)))


def _announce(line: str, url: str, open_browser: bool, stop: bool = True):
    """What to do once the server answers: print where it is (and how to stop it), open a browser if asked."""

    def ready() -> None:
        typer.echo(f"{line}   (Ctrl-C to stop)" if stop else line, err=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    return ready
