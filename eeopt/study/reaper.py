"""Ray processes a driver started do not outlive it, even when it is killed with SIGKILL (which runs no cleanup).

Measured here (Ray 2.60, a local `ray.init()`): after SIGKILL of the driver, gcs_server, raylet and the workers end
by themselves, but Ray's DashboardAgent and RuntimeEnvAgent keep running, forever. So right after starting Ray the
driver starts this file as a watchdog process in a session of its own, holding the read end of a pipe whose write
end only the driver has. When the driver ends, however it ends, the pipe closes; the watchdog then ends what is
left of the processes Ray started for it (SIGTERM, then SIGKILL after `GRACE` seconds), identified by pid and start
time so that a reused pid is never hit.

This file runs as a script (`python reaper.py PID:START ...`): it imports nothing but the standard library and
psutil, so the watchdog costs a few MB and starts at once.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

GRACE = 5.0  # seconds between SIGTERM and SIGKILL


def psutil_module():
    """psutil: installed, or the copy Ray ships in `ray/thirdparty_files` (found without importing Ray)."""
    try:
        import psutil
    except ImportError:
        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            raise
        sys.path.append(os.path.join(list(spec.submodule_search_locations)[0], "thirdparty_files"))
        import psutil
    return psutil


class Reaper:
    """The driver's side: the watchdog process and the pipe that keeps it waiting."""

    def __init__(self, pids: list[int]):
        psutil = psutil_module()
        roots = []
        for pid in pids:
            try:
                roots.append(f"{pid}:{psutil.Process(pid).create_time()!r}")
            except psutil.Error:
                continue
        read_end, self._write_end = os.pipe()  # not inheritable: Ray's later children do not hold it open
        try:
            self.process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), *roots], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
            )
        finally:
            os.close(read_end)

    @classmethod
    def for_new_children(cls, before: set[int]) -> Reaper:
        """A watchdog for the processes this one started since `before` (its children's pids, from `children()`,
        taken just before `ray.init()`): Ray's, not whatever else this process runs."""
        return cls([p.pid for p in psutil_module().Process().children(recursive=True) if p.pid not in before])

    def release(self) -> None:
        """After a clean `ray.shutdown()`: close the pipe; the watchdog ends whatever Ray left and exits."""
        if self._write_end is not None:
            os.close(self._write_end)
            self._write_end = None
            try:
                self.process.wait(timeout=2 * GRACE + 5)
            except subprocess.TimeoutExpired:
                pass


def children() -> set[int]:
    """The pids of this process's children and their descendants."""
    return {p.pid for p in psutil_module().Process().children(recursive=True)}


def _reap(roots: list[str]) -> None:
    psutil = psutil_module()
    victims: dict[int, psutil.Process] = {}
    for root in roots:
        pid, _, started = root.partition(":")
        try:
            proc = psutil.Process(int(pid))
            if repr(proc.create_time()) != started:
                continue  # the pid was reused: not ours
            for p in [proc, *proc.children(recursive=True)]:
                victims[p.pid] = p
        except psutil.Error:
            continue
    for proc in victims.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(victims.values()), timeout=GRACE)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def main(argv: list[str]) -> None:
    """Wait until the driver closes the pipe on stdin (or dies), then end the processes named in `argv`."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    _reap(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
