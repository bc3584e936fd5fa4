"""`eeopt ui` and `eeopt dashboard` behave: a busy port is one line and exit 2 before anything starts; the URL is
printed once the server answers; SIGTERM or SIGINT stops the server and every process it started. Real MLflow and
optuna-dashboard servers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from eeopt.cli import main


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "digits"}, "study": {"name": "served"}}))
    return path


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", ["ui", "dashboard"])
def test_busy_port_is_one_line_and_exit_2_before_anything_starts(study_file, busy_port, capsys, command):
    if command == "dashboard":
        from eeopt.study import Study

        Study.from_yaml(study_file).optuna_study()  # its storage exists: only the port is wrong
    before = sorted(p.name for p in study_file.parent.iterdir())
    assert main([command, str(study_file), "--port", str(busy_port)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"error: --port {busy_port}: 127.0.0.1:{busy_port} is already in use; stop what listens "
                            "there or choose another port (--port 0 picks a free one)\n")
    assert captured.out == ""
    assert sorted(p.name for p in study_file.parent.iterdir()) == before  # no mlflow.db, nothing written


def test_ui_on_a_study_that_never_ran_is_one_line_and_creates_nothing(study_file, capsys):
    """MLflow's server would create the SQLite store (and a missing folder on the way) and serve an empty UI."""
    before = sorted(p.name for p in study_file.parent.iterdir())
    assert main(["ui", str(study_file), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no MLflow tracking store at sqlite:///") and err.count("\n") == 1
    assert "has not run yet (eeopt study run" in err
    assert sorted(p.name for p in study_file.parent.iterdir()) == before


def test_a_host_that_is_not_here_is_one_line_and_exit_2(study_file, capsys):
    assert main(["ui", str(study_file), "--host", "192.0.2.1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 192.0.2.1: cannot listen on") and err.count("\n") == 1


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("command, sig", [("ui", signal.SIGTERM), ("dashboard", signal.SIGINT)])
def test_a_signal_stops_the_server_and_all_its_processes(study_file, command, sig):
    from eeopt.study import Study

    study = Study.from_yaml(study_file)
    study.optuna_study()
    study.stores.prepare_tracking()  # both stores exist, as after a study run
    proc = subprocess.Popen([sys.executable, "-m", "eeopt.cli", command, str(study_file), "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        line = proc.stderr.readline()  # printed once the server answers
        url = re.search(r"http://127\.0\.0\.1:(\d+)\S*", line)
        assert url, line + proc.stderr.read()[-2000:]
        port = int(url.group(1))
        with urllib.request.urlopen(url.group(0).split("#")[0], timeout=30) as resp:
            assert resp.status == 200
        children = _children(proc.pid)
        assert children  # the server runs in child processes
        if command == "ui":
            assert len(children) <= 3  # the server and one worker, no job runner (was ~16 processes)
        proc.send_signal(sig)  # to eeopt only, as a service manager or a shell would
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read().strip().endswith("stopped")
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c for c in children if _alive(c)]
        assert not _listening(port)
    finally:
        if proc.poll() is None:
            proc.kill()
