"""Links from optuna-dashboard into the MLflow UI that work wherever `eeopt ui` serves it.

A study on a local MLflow store (SQLite) has no fixed UI address: `eeopt ui` picks its port. A trial's note on
the dashboard therefore links to a path on the dashboard's own server (`tracking.dashboard_run_path`), and
`eeopt dashboard` answers that path with a redirect to the run's page on the running `eeopt ui`, which records its
address beside the store while it serves (`record_ui`, removed when it stops). Without a running `eeopt ui`, the
path answers with a page that says how to start it. A study on a tracking server links to the server directly.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from eeopt.stores.urls import sqlite_path
from eeopt.study import DASHBOARD_LINK, run_url


def ui_file(tracking_uri: str) -> Path | None:
    """Where `eeopt ui` records its address for a SQLite store (`mlflow.db.ui.json` beside it); None otherwise."""
    path = sqlite_path(tracking_uri)
    return None if path is None else path.with_name(path.name + ".ui.json")


def record_ui(path: Path | None, base: str) -> None:
    """Say that `eeopt ui` (this process) serves the store's MLflow UI at `base`."""
    if path is not None:
        path.write_text(json.dumps({"url": base, "pid": os.getpid()}))


def forget_ui(path: Path | None) -> None:
    """`eeopt ui` stopped: its address no longer holds (only this process's record is removed)."""
    if path is not None and recorded_ui(path, alive=lambda pid: pid == os.getpid()):
        path.unlink(missing_ok=True)


def recorded_ui(path: Path | None, alive=None) -> str | None:
    """The address a running `eeopt ui` recorded, or None (no record, unreadable, or its process is gone)."""
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        url, pid = str(record["url"]), int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if (alive or _alive)(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def add_mlflow_route(app, path: Path | None, study_file: str) -> None:
    """Answer `DASHBOARD_LINK/<experiment>/<run>` on optuna-dashboard's Bottle `app`: a redirect to the run's page
    on the `eeopt ui` recorded at `path`, else a short page saying how to start it."""
    from bottle import HTTPResponse, redirect

    @app.get(f"{DASHBOARD_LINK}/<experiment>/<run>")
    def to_mlflow(experiment: str, run: str):
        base = recorded_ui(path)
        if base is not None:
            redirect(run_url(base, experiment, run), 302)
        command = html.escape(f"eeopt ui {study_file}")
        body = (f"<!doctype html><title>MLflow UI not running</title><p>The MLflow UI of this study is not running."
                f"</p><p>Start it with <code>{command}</code> and reload this page: it opens MLflow run "
                f"<code>{html.escape(run)}</code>.</p>")
        return HTTPResponse(body, status=503, headers={"Content-Type": "text/html; charset=utf-8"})


def dashboard_main() -> int:
    """optuna-dashboard's own command line (`sys.argv[1:]`: --host, --port, ...) on the storage in
    `EEOPT_DASHBOARD_STORAGE` (from the environment: never on a command line `ps` shows), its app given the route
    into MLflow (`EEOPT_UI_FILE`: where `eeopt ui` records its address; `EEOPT_STUDY_FILE` for the hint)."""
    import sys

    from optuna_dashboard import _cli

    ui_path = Path(os.environ["EEOPT_UI_FILE"]) if os.environ.get("EEOPT_UI_FILE") else None
    create = _cli.create_app

    def create_app(*args, **kwargs):
        app = create(*args, **kwargs)
        add_mlflow_route(app, ui_path, os.environ.get("EEOPT_STUDY_FILE", "STUDY.yaml"))
        return app

    _cli.create_app = create_app
    sys.argv = ["optuna-dashboard", os.environ["EEOPT_DASHBOARD_STORAGE"], *sys.argv[1:]]
    return _cli.main() or 0
