"""Crash safety end to end, with real processes: `eeopt study run` drivers killed with SIGKILL, and workers starting
together on one study (a PostgreSQL restart under a running study is in test_cluster.py, on the team stack).

Each test runs tiny digits studies in `eeopt study run` subprocesses on a local Ray (one per driver, as a user
would), with a heartbeat grace of seconds instead of minutes and no plots (`study.plots: false`: the plot writer
under outages is in test_outages.py and test_cluster.py). PostgreSQL is the tests' own server (`own_postgres`,
started with initdb on a free port), never the one on 5432.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest
from optuna.trial import TrialState
from services import (
    assert_study_consistent, kill_with_descendants_watched, mlflow_runs, optuna_trials, service_env, start_driver,
    tiny_study, wait_for_line, write_study,
)

from eeopt.study.reaper import psutil_module

pytestmark = pytest.mark.slow
psutil = psutil_module()


def _finish(proc: subprocess.Popen, log, timeout: float = 420) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    return text


def _gone(processes, timeout: float = 60) -> list:
    """The processes among `processes` still alive after waiting up to `timeout` seconds (not a timing check:
    a bound on how long the test waits for the watchdog)."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [(p.pid, p.name()) for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_killed_driver_then_one_rerun(tmp_path):
    """SIGKILL of `eeopt study run` while a trial runs (SQLite storage, SQLite MLflow). The Ray processes it started
    do not outlive it. A rerun started at once says it waits for the dead trial, fails it once its heartbeat is
    `study.heartbeat_grace` old, and ends with exactly N complete trials, none RUNNING, one FINISHED child run per
    completed trial, the dead trial's run and the killed driver's parent run FAILED with their reasons."""
    n = 3
    path = write_study(tmp_path, tiny_study("killed", n, epochs=8, heartbeat_grace=30, plots=False,
                                            resources={"cpus_per_trial": 1, "max_concurrent": 1}, ray={"num_cpus": 1}))
    storage, tracking = f"sqlite:///{tmp_path / 'eeopt.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "first.log"
    proc = start_driver(path, log)
    try:
        wait_for_line(log, r"trial 0 done", proc)
        wait_for_line(log, r"trial 1 epoch 1:", proc)
    finally:
        started = kill_with_descendants_watched(proc) if proc.poll() is None else []
    assert started and _gone(started) == []  # no Ray process outlives the killed driver

    states = {t.number: t.state for t in optuna_trials(storage, "killed")}
    assert states[0] == TrialState.COMPLETE and states[1] == TrialState.RUNNING, states

    rerun_log = tmp_path / "rerun.log"
    # RAY_ADDRESS names no Ray: study.ray.address is null, so the rerun starts a Ray of its own all the same
    env = service_env(PYTHONUNBUFFERED="1", RAY_ADDRESS="127.0.0.1:1")
    text = _finish(start_driver(path, rerun_log, env), rerun_log)
    assert re.search(r"trial 1 is RUNNING elsewhere.*this run waits for it", text), text[-3000:]
    assert "trial 1: marked failed, its process stopped sending heartbeats" in text
    trials = assert_study_consistent(storage, "killed", tracking, n)
    dead = next(t for t in trials if t.number == 1)
    assert dead.state == TrialState.FAIL and "heartbeats" in dead.user_attrs["eeopt_error"]
    runs = {r.info.run_id: r for r in mlflow_runs(tracking, "killed")}
    dead_run = runs[dead.user_attrs["mlflow_run_id"]]
    assert dead_run.info.status == "FAILED" and "heartbeats" in dead_run.data.tags["eeopt.error"]
    parents = sorted((r for r in runs.values() if r.data.tags["eeopt.role"] == "study"),
                     key=lambda r: r.info.start_time)
    assert [p.info.status for p in parents] == ["FAILED", "FINISHED"]
    assert "driver stopped sending heartbeats" in parents[0].data.tags["eeopt.error"]


@pytest.mark.postgres
def test_three_workers_one_killed_finish_exactly_n_without_repeats(tmp_path, own_postgres):
    """Three `eeopt study run` processes start at the same instant on fresh PostgreSQL databases for both stores
    (Optuna, and MLflow on PostgreSQL directly): they all start cleanly (the creation lock; without it MLflow's
    schema creation races, "duplicate key value violates unique constraint"). One is SIGKILLed mid-trial (its Ray
    processes end with it); the live ones take over its share once its trial is silent for the grace, and together
    they finish exactly N, with N FINISHED child runs, no run left RUNNING, no parameters drawn twice. A rerun
    once they are done adds nothing: no trial, no child run."""
    n = 4
    optuna_db, mlflow_db = f"w{uuid.uuid4().hex[:10]}", f"m{uuid.uuid4().hex[:10]}"
    url, tracking = own_postgres.create_database(optuna_db), own_postgres.create_database(mlflow_db)
    path = write_study(tmp_path, tiny_study("shared", n, epochs=6, storage=url, heartbeat_grace=10, plots=False,
                                            mlflow={"tracking_uri": tracking},
                                            resources={"cpus_per_trial": 1, "max_concurrent": 1}, ray={"num_cpus": 1}))
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = [start_driver(path, log) for log in logs]
    try:
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline:
            victim = next((i for i, log in enumerate(logs) if re.search(r"trial \d+ epoch 1:", log.read_text())),
                          None)
            assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.2)
        assert victim is not None, [log.read_text()[-2000:] for log in logs]
        started = kill_with_descendants_watched(procs[victim])
        texts = [_finish(p, log) for i, (p, log) in enumerate(zip(procs, logs)) if i != victim]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert _gone(started) == []
    assert any("marked failed, its process stopped sending heartbeats" in t for t in texts), texts
    trials = assert_study_consistent(url, "shared", tracking, n)
    assert sum(t.state == TrialState.FAIL for t in trials) == 1
    assert all(re.search(r"trial \d+ done", t) for t in texts)  # both live workers took part

    rerun = tmp_path / "rerun.log"
    _finish(start_driver(path, rerun), rerun)
    again = assert_study_consistent(url, "shared", tracking, n)
    assert len(again) == len(trials)
    assert len([r for r in mlflow_runs(tracking, "shared") if r.data.tags.get("eeopt.role") == "trial"]) == len(trials)
    dumps = own_postgres.dump(optuna_db) + own_postgres.dump(mlflow_db)  # every table of both stores
    assert "shared" in dumps and own_postgres.password not in dumps
