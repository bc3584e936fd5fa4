"""Real servers for the cluster and fault tests, started natively on 127.0.0.1 with free ports and stopped by the
process groups the tests started (never `ray stop`, never the PostgreSQL on 5432).

The commands are the team stack's (docker/*.sh, also what docker-compose.yml runs): PostgreSQL from `initdb` /
`pg_ctl` (the compose file uses the postgres image), the MLflow tracking server on PostgreSQL with proxied artifacts,
a Ray head and a second Ray node sharing a token, and optuna-dashboard.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, what: str, timeout: float = 120.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `check()` until it is truthy; fail with the service's log tail if it does not come up in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not come up (exit {proc.poll() if proc else None}):\n{tail}")


class Service:
    """A server process in a session of its own, its output in a log file; `stop` ends its whole process group."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.cmd, self.env, self.log_dir = name, cmd, env, log_dir
        self.log = log_dir / f"{name}.log"
        self._launch("w")

    def _launch(self, mode: str) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=open(self.log, mode), stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.log_dir)

    def restart(self, down_for: float) -> None:
        """Stop the service, leave it down for `down_for` seconds, start it again (same command, same port)."""
        self.stop()
        time.sleep(down_for)
        self._launch("a")

    def kill_for(self, down_for: float) -> None:
        """SIGKILL the service's whole process group (no clean shutdown), leave it down for `down_for` seconds,
        start it again (same command, same port)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        time.sleep(down_for)
        self._launch("a")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of the group is left
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


# ---------------------------------------------------------------------------------------------- PostgreSQL
def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return exe


class PostgresServer:
    """A PostgreSQL server of the tests' own (initdb into a temporary folder, scram-sha-256 password auth) on a
    free port. As root the server runs as the `postgres` user (PostgreSQL refuses root)."""

    user = "eeopt"

    def __init__(self):
        self.port = free_port()
        self.password = "pw" + secrets.token_hex(8)
        self.root = Path(tempfile.mkdtemp(prefix="eeopt-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres")
        self._run([_pg_bin("initdb"), "-D", str(self.data), "-U", self.user, "--pwfile", str(pwfile),
                   "--auth", "scram-sha-256", "-E", "UTF8", "--no-sync"])
        pwfile.unlink()
        self.start()

    def _run(self, cmd: list[str]) -> None:
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.root)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def url(self, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def dump(self, db: str) -> str:
        """Every table of database `db` as SQL text (`pg_dump`): what a check for leaked secrets greps."""
        cmd = [_pg_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "--data-only", db]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True,
                              env={**os.environ, "PGPASSWORD": self.password})
        return done.stdout

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- the stack
def service_env(**extra: str) -> dict[str, str]:
    """The environment of a service: this interpreter's bin first on PATH, this checkout importable."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.update(extra)
    return env


def _start_http_service(name: str, script: str, env: dict[str, str], port: int, ready_path: str,
                        log_dir: Path) -> tuple[Service, str]:
    """docker/`script` with `env`, once GET `ready_path` answers 200 on 127.0.0.1:`port`; (service, base URL)."""
    service = Service(name, ["sh", str(DOCKER / script)], env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(url + ready_path, timeout=2).status == 200, name,
                   proc=service.proc, log=service.log)
    except BaseException:
        service.stop()
        raise
    return service, url


def start_mlflow(pg: PostgresServer, artifacts: Path, log_dir: Path) -> tuple[Service, str]:
    """docker/mlflow-server.sh on a free port: PostgreSQL backend (URI in the environment, not on the command
    line), artifacts proxied into `artifacts`. Returns the service and its tracking URI."""
    port = free_port()
    env = service_env(MLFLOW_BACKEND_STORE_URI=pg.create_database("mlflow").replace(
        "postgresql://", "postgresql+psycopg://"), MLFLOW_ARTIFACTS_DESTINATION=str(artifacts),
        MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(port))
    return _start_http_service("mlflow", "mlflow-server.sh", env, port, "/health", log_dir)


def _ray_ports() -> list[str]:
    """Free ports for everything a Ray node would otherwise take at a fixed default (other users' Ray nearby)."""
    return ["--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port())]


def start_ray_cluster(log_dir: Path) -> tuple[list[Service], str, dict[str, str], str]:
    """docker/ray-head.sh and docker/ray-worker.sh: a head and a second node, one CPU each, sharing a token.
    Returns the services, the address, the environment a driver needs (the token) and Ray's temporary folder."""
    port = free_port()
    token_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    temp = tempfile.mkdtemp(prefix="eeray-")  # short: Ray's socket paths must fit 107 characters
    common = {**token_env, "RAY_NODE_IP": "127.0.0.1", "RAY_NUM_CPUS": "1", "RAY_TEMP_DIR": temp}
    head = Service("ray-head", ["sh", str(DOCKER / "ray-head.sh"), *_ray_ports()],
                   service_env(**common, RAY_PORT=str(port)), log_dir)
    address = f"127.0.0.1:{port}"
    worker = Service("ray-worker", ["sh", str(DOCKER / "ray-worker.sh"), *_ray_ports()],
                     service_env(**common, RAY_HEAD_ADDRESS=address), log_dir)
    check = [sys.executable, "-c", "import ray; ray.init(address=%r, logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))" % address]
    try:
        wait_until(lambda: subprocess.run(check, env=service_env(**token_env), capture_output=True, text=True,
                                          timeout=60).stdout.strip().endswith("2"),
                   "a 2-node Ray cluster", timeout=180, proc=worker.proc, log=worker.log)
    except BaseException:
        worker.stop()
        head.stop()
        raise
    return [worker, head], address, token_env, temp


def start_dashboard(storage_url: str, log_dir: Path) -> tuple[Service, str]:
    """docker/optuna-dashboard.sh on a free port (the storage URL in the environment, not on the command line)."""
    port = free_port()
    env = service_env(OPTUNA_STORAGE=storage_url.replace("postgresql://", "postgresql+psycopg://"),
                      DASHBOARD_HOST="127.0.0.1", DASHBOARD_PORT=str(port))
    return _start_http_service("optuna-dashboard", "optuna-dashboard.sh", env, port, "/api/studies", log_dir)


class Stack:
    """The running team stack: what a study needs to use it, and `stop`."""

    def __init__(self, pg: PostgresServer, folder: Path):
        self.pg, self.folder = pg, folder
        self.services: list[Service] = []
        self.shared = folder / "shared"  # the folder every node mounts (here: the same machine)
        self.artifacts = folder / "mlartifacts"
        self.optuna_url = pg.create_database("optuna")
        self.tracking_uri = self.ray_address = self.dashboard_url = ""
        self.ray_env: dict[str, str] = {}
        self.ray_temp = ""

    def driver_env(self) -> dict[str, str]:
        """The environment of an `eeopt study run` on this stack (the cluster's token)."""
        return service_env(**self.ray_env, PYTHONUNBUFFERED="1")

    def stop(self) -> None:
        """SIGTERM to every service, up to 10 s for all of them together, then SIGKILL to what is left."""
        for service in self.services:
            service.terminate()
        deadline = time.monotonic() + 10
        for service in self.services:
            service.stop(timeout=max(0.1, deadline - time.monotonic()))
        shutil.rmtree(self.ray_temp, ignore_errors=True)


def start_stack(pg: PostgresServer, folder: Path) -> Stack:
    """MLflow server, 2-node Ray cluster and optuna-dashboard; stopped again if any does not come up."""
    from concurrent.futures import ThreadPoolExecutor

    stack = Stack(pg, folder)
    with ThreadPoolExecutor(3) as pool:  # they start side by side: most of each start is waiting
        futures = [pool.submit(start_mlflow, pg, stack.artifacts, folder), pool.submit(start_ray_cluster, folder),
                   pool.submit(start_dashboard, stack.optuna_url, folder)]
    errors = []
    for i, future in enumerate(futures):
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - stop the others, then raise the first
            errors.append(exc)
            continue
        if i == 0:
            stack.services.append(result[0])
            stack.tracking_uri = result[1]
        elif i == 1:
            stack.services += result[0]
            stack.ray_address, stack.ray_env, stack.ray_temp = result[1:]
        else:
            stack.services.append(result[0])
            stack.dashboard_url = result[1]
    if errors:
        stack.stop()
        raise errors[0]
    return stack


# ---------------------------------------------------------------------------------------------- studies
def tiny_study(name: str, trials: int, epochs: int = 1, **study) -> dict:
    """A study file's content: digits, a width-8 tinyresnet, `epochs` epochs, a small threshold search."""
    return {
        "seed": 0,
        "data": {"name": "digits", "train_subset": 400},
        "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3]},
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.003},
        "policy": {"trials": 20},
        "search_space": {"training.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
        "study": {"name": name, "trials": trials, "sampler": "tpe", "max_failures": 3, **study},
    }


def write_study(folder: Path, data: dict, name: str = "study.yaml") -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def eeopt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "eeopt.cli", *args]


def start_driver(path: Path, log: Path, env: dict[str, str] | None = None, *args: str) -> subprocess.Popen:
    """`eeopt study run PATH` in the background, its output (unbuffered) in `log`."""
    return subprocess.Popen(eeopt_cmd("study", "run", str(path), *args), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env or service_env(PYTHONUNBUFFERED="1"))


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300.0) -> str:
    """Poll `log` until a line matches the regex `pattern`; returns that line (fails if the process ends)."""
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if re.search(pattern, line):
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no line matching {pattern!r} (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def kill_with_descendants_watched(proc: subprocess.Popen):
    """SIGKILL `proc` alone (no cleanup runs); returns the processes it had started, to check what outlives it."""
    from eeopt.study.reaper import psutil_module

    children = psutil_module().Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait(timeout=30)
    return children


def mlflow_runs(tracking_uri: str, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def optuna_trials(storage_url: str, name: str) -> list:
    import optuna

    url = storage_url.replace("postgresql://", "postgresql+psycopg://")
    return optuna.load_study(study_name=name, storage=url).get_trials()


def assert_study_consistent(storage_url: str, name: str, tracking_uri: str, n: int) -> list:
    """The study holds exactly `n` COMPLETE trials and nothing RUNNING or WAITING; every completed trial has exactly
    one FINISHED MLflow child run (the one its `mlflow_run_id` names), there are no other FINISHED child runs, no
    run is RUNNING, and every FAILED run says why; no two trials have the same parameters. Returns the trials."""
    from optuna.trial import TrialState

    trials = optuna_trials(storage_url, name)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == n, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    runs = mlflow_runs(tracking_uri, name)
    by_id = {r.info.run_id: r for r in runs}
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == [], [
        (r.data.tags.get("eeopt.role"), r.data.tags.get("optuna.trial_number")) for r in runs
        if r.info.status == "RUNNING"]
    finished = [r for r in runs if r.data.tags.get("eeopt.role") == "trial" and r.info.status == "FINISHED"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == n
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in finished) == sorted(t.number for t in complete)
    for trial in complete:
        assert by_id[trial.user_attrs["mlflow_run_id"]].info.status == "FINISHED"
    for run in runs:
        if run.info.status == "FAILED":
            assert run.data.tags.get("eeopt.error"), run.data.tags
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params), params
    return trials


class ClusterRun:
    """One study run on the team stack, with everything it printed, for the cluster and secret tests."""

    name = "onstack"
    trials = 4

    def __init__(self, stack: Stack, folder: Path):
        self.stack, self.folder = stack, folder
        # Credentials in the tracking URI too (the server ignores them): they must not leak either.
        self.secret = "tk" + secrets.token_hex(8)
        self.tracking_uri = stack.tracking_uri.replace("http://", f"http://eeopt:{self.secret}@")
        self.storage_url = stack.optuna_url
        self.path = write_study(folder, tiny_study(
            self.name, self.trials, epochs=6, storage=self.storage_url, heartbeat_grace=60,
            mlflow={"tracking_uri": self.tracking_uri},
            ray={"address": stack.ray_address, "storage_path": stack.shared.as_uri()},
            resources={"cpus_per_trial": 1, "max_concurrent": 2}))
        self.log = folder / "driver.log"
        self.cmdlines: list[str] = []
        self.returncode: int | None = None
        self.outputs: dict[str, str] = {}

    def passwords(self) -> list[str]:
        return [self.stack.pg.password, self.secret]

    #: Seconds PostgreSQL is down, and the MLflow server is killed for (README's promise: outages shorter than
    #: `study.store_retry_s`, 120 s by default, delay trials and never fail them).
    PG_DOWN, MLFLOW_DOWN = 15, 40

    def run_with_outages(self) -> None:
        """`eeopt study run` on the cluster. Once a trial has trained an epoch, PostgreSQL (the Optuna storage and
        the MLflow server's backend) stops for `PG_DOWN` seconds and comes back; once a trial is done, the MLflow
        server is killed (SIGKILL, no clean shutdown) and is down for `MLFLOW_DOWN` seconds while the other trials
        log to it."""
        from eeopt.study.reaper import psutil_module

        proc = start_driver(self.path, self.log, self.stack.driver_env())
        try:
            wait_for_line(self.log, r"trial \d+ epoch 1:", proc)
            self.cmdlines = [" ".join(p.info["cmdline"] or []) for p in psutil_module().process_iter(["cmdline"])]
            self.stack.pg.stop("fast")
            time.sleep(self.PG_DOWN)  # the outage: trials go on, the stores' writes wait and are retried
            self.stack.pg.start()
            wait_for_line(self.log, r"trial \d+ done", proc)
            mlflow = next(s for s in self.stack.services if s.name == "mlflow")
            mlflow.kill_for(down_for=self.MLFLOW_DOWN)
            wait_until(lambda: urllib.request.urlopen(self.stack.tracking_uri + "/health", timeout=2).status == 200,
                       "the restarted mlflow server", proc=mlflow.proc, log=mlflow.log)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.returncode = proc.returncode
        self.outputs["run"] = self.log.read_text()

    def read_back(self) -> None:
        """`study status`, `study export` and `study list` (in this process), for their printed output."""
        import contextlib
        import io

        from eeopt.cli import main

        for key, argv in {"status": ["study", "status", str(self.path)],
                          "export": ["study", "export", str(self.path), "--format", "json"],
                          "list": ["study", "list", "--storage", self.storage_url]}.items():
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
            self.outputs[key] = f"exit {code}\n{out.getvalue()}\n{err.getvalue()}"


# ---------------------------------------------------------------------------------------------- outages
class TcpProxy:
    """A TCP forwarder on a free port of 127.0.0.1 in front of `target_port`: a store reached through it can be cut
    off (`cut`: live connections dropped, new ones refused, as when a server stops) and brought back (`restore`, on
    the same port), in a second, without stopping the real server."""

    def __init__(self, target_port: int):
        import threading

        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def url(self, url: str, port: int) -> str:
        """`url` with `:port` replaced by this proxy's port."""
        return url.replace(f":{port}", f":{self.port}", 1)

    def restore(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def start_mlflow_sqlite(folder: Path) -> tuple[Service, str, int]:
    """An MLflow tracking server (docker/mlflow-server.sh, one worker) on a SQLite backend in `folder`, artifacts
    proxied into `folder/artifacts`. Returns the service, its tracking URI and its port."""
    port = free_port()
    env = service_env(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{folder / 'server.db'}",
                      MLFLOW_ARTIFACTS_DESTINATION=str(folder / "artifacts"), MLFLOW_HOST="127.0.0.1",
                      MLFLOW_PORT=str(port))
    service, url = _start_http_service("mlflow-sqlite", "mlflow-server.sh", env, port, "/health", folder)
    return service, url, port
