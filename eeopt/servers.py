"""Serving a web UI (the MLflow UI, optuna-dashboard) as a child process that behaves: the port is checked before
anything starts, the URL is printed once the server answers, and Ctrl-C or SIGTERM stops the server with every
process it started.

The server runs in a process group of its own (a session), so stopping it is one `killpg` that reaches its workers
too; on Linux the server also gets SIGTERM if this process dies without cleaning up (`PR_SET_PDEATHSIG`). Its output
goes to a log file that is shown only when it fails. Nothing here knows about studies: `eeopt.cli.servers` builds
the commands.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from eeopt.errors import ConfigError

#: Seconds a server may take to answer before it is given up (the MLflow UI migrates its store first).
READY_TIMEOUT = 240.0
_ANY_HOST = ("0.0.0.0", "::", "")


def free_port(host: str, port: int) -> int:
    """`port`, checked free on `host` by binding it (with SO_REUSEADDR, as the servers do), or a free port the
    system picks for `port` 0.

    Raises:
        ConfigError: the port is in use, or `host` is no address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family) as sock:
            return sock.getsockname()[1]
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port}: {host}:{port} is already in use; stop what listens there or choose "
                              "another port (--port 0 picks a free one)") from None
        raise ConfigError(f"--host {host}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def local_url(host: str, port: int, path: str = "") -> str:
    """The URL to reach a server bound to `host` from this machine (127.0.0.1 for a wildcard host)."""
    shown = "127.0.0.1" if host in _ANY_HOST else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}{path}"


def serve(command: Sequence[str], *, host: str, port: int, ready_path: str, name: str,
          env: Mapping[str, str] | None = None, on_ready: Callable[[], None] | None = None,
          echo: Callable[[str], None] = print, timeout: float = READY_TIMEOUT) -> int:
    """Run `command` (a server for `host`:`port`) until SIGINT or SIGTERM, or until it exits.

    `on_ready` runs once `ready_path` answers (print the URL, open a browser). Returns 0 when stopped by a signal,
    1 when the server failed to start or answer in `timeout` seconds (its log's last lines are echoed), else its
    exit status.
    """
    log = Path(tempfile.mkstemp(prefix=f"eeopt-{name.replace(' ', '-')}-", suffix=".log")[1])
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        try:
            return _supervise(proc, local_url(host, port, ready_path), name, stop, log, on_ready, echo, timeout)
        finally:
            stop_group(proc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.unlink(missing_ok=True)


def _supervise(proc: subprocess.Popen, probe: str, name: str, stop: threading.Event, log: Path,
               on_ready: Callable[[], None] | None, echo: Callable[[str], None], timeout: float) -> int:
    """Wait for the server to answer (then `on_ready`), then for a stop signal or the server's end."""
    deadline = time.monotonic() + timeout
    ready = False
    while not stop.is_set():
        code = proc.poll()
        if code is not None:
            when = "stopped" if ready else "exited before answering"
            echo(f"error: {name} {when} (status {code}): {_last_lines(log)}")
            return code or 1
        if not ready:
            if _answers(probe):
                ready = True
                if on_ready is not None:
                    on_ready()
            elif time.monotonic() > deadline:
                echo(f"error: {name} did not answer within {timeout:.0f} s: {_last_lines(log)}")
                return 1
        stop.wait(0.25 if not ready else 1.0)
    echo(f"{name} stopped")
    return 0


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the server's process group, SIGKILL to whatever is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.1)
        if not _group_alive(proc):
            break
    if proc.poll() is None:
        proc.wait(timeout=5)


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader, or it stays a zombie and the group looks alive
    try:
        os.killpg(proc.pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def _last_lines(log: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(no output)"


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when this process dies (Linux), so a killed `eeopt ui` leaves no
    server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
