"""`eeopt ui` and `eeopt dashboard` really serve the study's stores on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args, port, needle: bytes, timeout=90.0) -> bytes:
    proc = subprocess.Popen([sys.executable, "-m", "eeopt.cli", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    body = resp.read()
                    if resp.status == 200 and needle in body:
                        return body
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"nothing served on port {port} within {timeout} s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_dashboard_and_mlflow_ui_serve_the_study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "digits"}, "study": {"name": "served"}}))
    from eeopt.study import Study

    study = Study.from_yaml(path)
    study.optuna_study()  # both stores exist, as after a run
    study.stores.prepare_tracking()
    _serve(["dashboard", str(path)], _free_port(), b"<html")
    _serve(["ui", str(path)], _free_port(), b"<html")
    assert (tmp_path / "mlflow.db").exists()  # the UI used the study's own tracking store
