"""The team stack's docker-compose.yml: it parses, has every service with a health check, publishes ports on
127.0.0.1 only, holds no secret (they come from a .env the user writes), and runs the same docker/*.sh scripts the
native tests run.

With Debian's `docker-compose` installed (.ci/run installs it) the file is resolved by it
(`docker-compose --env-file .env.example config`); without it, PyYAML reads the file, `${VAR}`s are filled from
.env.example the way compose does, and the same checks run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
SERVICES = {"postgres", "mlflow", "optuna-dashboard", "ray-head", "ray-worker", "driver"}


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (an unset VAR with :? is an error)."""
    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(f"{name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, text.replace("$$", "\0")).replace("\0", "$")


def _resolved(env_file: Path) -> dict:
    """The compose file as compose sees it with `env_file`: by docker-compose when installed, else PyYAML."""
    exe = shutil.which("docker-compose")
    if exe:
        env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_USER", "POSTGRES_PASSWORD", "RAY_AUTH_TOKEN")}
        done = subprocess.run([exe, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
                              capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
        if done.returncode != 0:
            raise ValueError(done.stderr.strip())
        return yaml.safe_load(done.stdout)
    env = dict(_env_example()) if env_file.name == ".env.example" else {}
    return yaml.safe_load(_interpolate(COMPOSE.read_text(), env))


def _published(port) -> tuple[str, str]:
    """(host ip, published port) of a short ('127.0.0.1:5000:5000') or long (mapping) port entry."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port.get("published", ""))
    parts = str(port).split(":")
    return (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0])


def test_the_compose_file_resolves_with_every_service_checked_and_bound_to_localhost():
    config = _resolved(REPO / ".env.example")
    services = config["services"]
    assert set(services) == SERVICES
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host, number = _published(port)
            assert host == "127.0.0.1", (name, port)
            published[name] = number
        if name != "driver":
            assert service.get("healthcheck", {}).get("test"), name
    assert set(published) == {"postgres", "mlflow", "optuna-dashboard"}
    # The Ray workers scale (no fixed name, no published port) and share the runs volume with the head.
    worker, head = services["ray-worker"], services["ray-head"]
    assert "container_name" not in worker and not worker.get("ports")
    runs = [v for v in map(str, worker["volumes"]) if "/work/runs" in v]
    assert runs and runs == [v for v in map(str, head["volumes"]) if "/work/runs" in v]


def test_each_service_runs_the_script_the_native_tests_run():
    """mlflow, optuna-dashboard and the Ray nodes run docker/*.sh (copied into the image), which tests/services.py
    runs natively; the secrets reach them in their environment, never as command-line arguments."""
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    native = (REPO / "tests" / "services.py").read_text()
    for name, script in {"mlflow": "mlflow-server.sh", "optuna-dashboard": "optuna-dashboard.sh",
                         "ray-head": "ray-head.sh", "ray-worker": "ray-worker.sh"}.items():
        assert raw[name]["command"] == ["sh", f"/opt/eeopt/docker/{script}"], name
        assert (REPO / "docker" / script).is_file() and f'"{script}"' in native, script
    assert "COPY docker ./docker" in (REPO / "docker" / "Dockerfile").read_text()
    assert "init-mlflow-db.sh" in str(raw["postgres"]["volumes"])


def test_no_secret_is_written_in_the_compose_file(tmp_path):
    """Passwords and the Ray token come from .env (ignored by git; .env.example documents it): the file has no
    literal for any of them, and without a .env compose refuses to start rather than use a default."""
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    example = _env_example()
    for key in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"):
        assert example[key] not in text
        assert re.search(r"\$\{%s:\?[^}]+\}" % key, text), key  # required, no default
    assert not re.search(r"(?im)^\s*-?\s*[\w.-]*(password|token)[\w.-]*\s*[:=]\s*(?!\$\{)\S", text)
    assert not re.search(r"://[^/\s:@]+:(?!\$\{)[^@\s/]+@", text)  # no user:password@ literal in a URL
    with pytest.raises(ValueError, match="POSTGRES_(USER|PASSWORD)|RAY_AUTH_TOKEN"):
        (tmp_path / "empty.env").write_text("")
        _resolved(tmp_path / "empty.env")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO).returncode == 0
    assert ignored and (REPO / ".env.example").is_file()
