"""Passwords in storage and tracking URLs never leave the study file: not in MLflow params or tags, logs, exports,
progress output, hints, error messages, command lines, or the files Ray writes for a trial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from eeopt.errors import StorageError
from eeopt.stores import mask_secrets, translate_errors


def _files_with(folder: Path, secrets_: list[str], since: float = 0.0) -> list[str]:
    """Files under `folder` (modified after `since`) whose bytes contain any of `secrets_`."""
    hits = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and path.stat().st_mtime >= since:
                data = path.read_bytes()
                hits += [str(path) for s in secrets_ if s.encode() in data]
        except OSError:
            continue
    return hits


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.postgres
def test_no_password_anywhere_a_cluster_study_writes(cluster_run, team_stack):
    """The cluster study's Optuna URL and tracking URI both carry passwords; none appears in what it printed
    (progress, hints, status, export, list), in MLflow's params and tags, in any file under Ray Tune's storage
    path (params.json, params.pkl, result.json, event files, experiment state), in Ray's session logs, in the
    artifacts, or on any process's command line while the study ran."""
    secrets_ = cluster_run.passwords()
    for name, text in cluster_run.outputs.items():
        assert not any(s in text for s in secrets_), name
    assert "***@" in cluster_run.outputs["run"]  # the hints are there, masked

    import mlflow

    client = mlflow.MlflowClient(team_stack.tracking_uri)
    exp = client.get_experiment_by_name(cluster_run.name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert runs
    for run in runs:
        text = repr(sorted(run.data.params.items())) + repr(sorted(run.data.tags.items()))
        assert not any(s in text for s in secrets_), run.info.run_id
    params = next(r for r in runs if r.data.tags["eeopt.role"] == "study").data.params
    assert "***@" in params["study.storage"] and "***@" in params["study.mlflow.tracking_uri"]

    # Nor in the Optuna storage: the trials' user attributes (the MLflow run link) and the study's (the dashboard
    # notes), which optuna-dashboard shows to whoever opens it.
    study = optuna.load_study(study_name=cluster_run.name,
                              storage=cluster_run.storage_url.replace("postgresql://", "postgresql+psycopg://"))
    texts = [repr(sorted(t.user_attrs.items())) + repr(sorted(getattr(t, "system_attrs", {}).items()))
             for t in study.get_trials()]
    texts.append(repr(sorted(study.user_attrs.items())))
    assert any("mlflow_run_url" in t for t in texts)  # the links are there, without credentials
    assert not [t for t in texts if any(s in t for s in secrets_)]

    tune_files = list((team_stack.shared / cluster_run.name / "ray").rglob("params.json"))
    assert tune_files  # Ray wrote its trial files where we look
    assert _files_with(team_stack.shared, secrets_) == []
    assert _files_with(Path(team_stack.ray_temp), secrets_) == []
    assert _files_with(team_stack.artifacts, secrets_) == []
    ray_results = Path.home() / "ray_results"
    if ray_results.is_dir():
        assert _files_with(ray_results, secrets_, since=cluster_run.path.stat().st_mtime) == []
    assert cluster_run.cmdlines and not [c for c in cluster_run.cmdlines if any(s in c for s in secrets_)]


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.postgres
def test_dashboard_keeps_the_password_off_the_command_line(cluster_run, tmp_path):
    """`eeopt dashboard` hands optuna-dashboard the storage URL in its environment (`ps` shows arguments)."""
    from services import free_port, service_env, wait_until

    from eeopt.study.reaper import psutil_module

    psutil = psutil_module()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "eeopt.cli", "dashboard", str(cluster_run.path), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=service_env())
    try:
        import urllib.request

        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).status == 200,
                   "eeopt dashboard", proc=proc)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        lines = [" ".join(p.cmdline()) for p in tree]
        assert len(lines) >= 2 and not any(s in line for s in cluster_run.passwords() for line in lines), lines
    finally:
        for p in reversed(psutil.Process(proc.pid).children(recursive=True)):
            p.kill()
        proc.kill()
        proc.wait(timeout=30)


def test_ui_links_carry_no_credentials():
    from eeopt.study.tracking import DEFAULT_UI, ui_base

    assert ui_base("http://alice:S3CRET@mlflow.example:5000/") == "http://mlflow.example:5000"
    assert ui_base("https://bob:pw@[::1]:8443/mlflow") == "https://[::1]:8443/mlflow"
    assert ui_base("http://127.0.0.1:5001") == "http://127.0.0.1:5001"
    assert ui_base("sqlite:///x/mlflow.db") == DEFAULT_UI


def test_mask_secrets_in_urls_and_settings():
    text = ("could not reach postgresql+psycopg://bob:s3cr%40t@db:5432/optuna and http://u:pw@mlflow:5000/x; "
            "dsn host=db password=hunter2 user=bob; password='two words'")
    masked = mask_secrets(text)
    for secret in ("s3cr%40t", "pw@", "hunter2", "two words"):
        assert secret not in masked, masked
    assert "bob:***@db:5432/optuna" in masked and "http://u:***@mlflow" in masked
    assert mask_secrets("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_errors_quoting_a_url_are_masked():
    with pytest.raises(StorageError) as info:
        with translate_errors("postgresql://bob:SECRETPW@db/optuna", what="Optuna storage"):
            raise OSError("cannot open postgresql://bob:SECRETPW@db/optuna (timeout)")
    assert "SECRETPW" not in str(info.value) and "bob:***@db/optuna" in str(info.value)


def test_a_trial_error_quoting_a_password_is_stored_masked(tmp_path):
    from eeopt.study.trials import ATTR_ERROR, TrialStore

    store = TrialStore(f"sqlite:///{tmp_path / 'eeopt.db'}", "s", directions=["maximize"], objectives=["val/a"])
    ticket = store.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    store.fail(ticket, "MlflowException: API request to http://u:SECRETPW@mlflow:5000 failed")
    (trial,) = store.trials()
    assert trial.user_attrs[ATTR_ERROR] == "MlflowException: API request to http://u:***@mlflow:5000 failed"
