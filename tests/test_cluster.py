"""Studies on a real multi-node Ray cluster: the team stack started natively on 127.0.0.1 (tests/services.py: a
Ray head and a second Ray node as separate `ray start` processes, an MLflow server on PostgreSQL with proxied
artifacts, optuna-dashboard), and the checks that refuse stores a cluster's nodes could not reach.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from services import assert_study_consistent, mlflow_runs, tiny_study, wait_until, write_study

from eeopt.cli import main


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.postgres
def test_a_study_on_two_nodes_finishes_exactly_n_trials_through_store_restarts(cluster_run, team_stack):
    """Trials run on both nodes and write to stores every node reaches; PostgreSQL (Optuna storage and MLflow's
    backend) stopped for 15 s and then the MLflow server killed for 40 s mid-study are ridden out: exactly N
    complete trials and none failed (an outage delays a trial, never fails it), one FINISHED child run each, no
    run left RUNNING, each run names its node; the waits were said; exit outputs and checkpoints are in the shared
    storage, artifacts behind the MLflow server; no password in any table of either store."""
    run, n = cluster_run, cluster_run.trials
    text = run.outputs["run"]
    assert run.returncode == 0 and "Traceback" not in text, text[-3000:]
    trials = assert_study_consistent(run.storage_url, run.name, team_stack.tracking_uri, n)
    assert [t.state.name for t in trials] == ["COMPLETE"] * n, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert "retrying" in text, text[-3000:]  # the waits were said, not silent
    dumps = team_stack.pg.dump("optuna") + team_stack.pg.dump("mlflow")
    assert run.name in dumps  # the dumps hold the study
    assert not [s for s in run.passwords() if s in dumps]

    children = [r for r in mlflow_runs(team_stack.tracking_uri, run.name)
                if r.data.tags.get("eeopt.role") == "trial" and r.info.status == "FINISHED"]
    assert len({r.data.tags["eeopt.node_id"] for r in children}) == 2  # both nodes ran trials
    assert all(r.data.tags["eeopt.gpus"] == "none" and r.data.tags["eeopt.host"] for r in children)

    import mlflow

    client = mlflow.MlflowClient(team_stack.tracking_uri)
    for child in children:
        number = child.data.tags["optuna.trial_number"]
        assert {"val.npz", "test.npz", "metrics.json"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
        assert (team_stack.shared / run.name / f"trial-{number}" / "metrics.json").is_file()
    assert len(list(team_stack.artifacts.rglob("val.npz"))) >= n  # stored by the server, not by the workers
    assert (team_stack.shared / run.name / "ray").is_dir()  # Ray Tune's own files, in its storage_path

    def dashboard_lists_the_study():  # its first request after the restart may meet a dropped connection
        with urllib.request.urlopen(team_stack.dashboard_url + "/api/studies", timeout=10) as response:
            return run.name in [s["study_name"] for s in json.loads(response.read())["study_summaries"]]

    assert wait_until(dashboard_lists_the_study, "optuna-dashboard listing the study", timeout=30)


@pytest.mark.parametrize("change, expected", [
    ({}, "study.mlflow.tracking_uri: sqlite:///"),
    ({"mlflow": {"tracking_uri": "http://127.0.0.1:1"}}, "study.storage: sqlite:///"),
    ({"mlflow": {"tracking_uri": "http://127.0.0.1:1"}, "storage": "postgresql://u:SECRETPW@127.0.0.1:1/x"},
     "study.ray.storage_path: not set"),
    ({"mlflow": {"tracking_uri": "http://127.0.0.1:1"}, "storage": "postgresql://u:SECRETPW@127.0.0.1:1/x",
      "ray": {"address": "10.0.0.9:6379", "storage_path": "runs"}}, "study.ray.storage_path: 'runs' is a relative"),
], ids=["sqlite-mlflow", "sqlite-optuna", "no-storage-path", "relative-storage-path"])
def test_node_local_stores_with_a_cluster_address_are_refused(tmp_path, capsys, change, expected):
    """With `study.ray.address` set, a store in a file of this machine is refused in one line naming the setting
    and what to set it to; exit 2, nothing written, no Ray joined (the address is never contacted)."""
    study = {"ray": {"address": "10.0.0.9:6379"}, **change}
    path = write_study(tmp_path, tiny_study("refused", 2, **study))
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1 and "SECRETPW" not in err, err
    assert "set it to" in err or "give the absolute path" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_too_many_sqlite_writers_are_refused_with_the_postgres_alternative(tmp_path, capsys):
    path = write_study(tmp_path, tiny_study("crowded", 2, resources={"max_concurrent": 12}))
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study.resources.max_concurrent: 12 trials logging at once to the SQLite MLflow")
    assert "postgresql://" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
