"""The stores contract, run over every kind of store (the way Optuna tests its storages over `STORAGE_MODES`).

MLflow tracking stores: a ``file:`` folder, a SQLite file, PostgreSQL, and an MLflow tracking server (HTTP).
Optuna storages: a SQLite file and PostgreSQL. Each test runs the same code over each kind; a new kind of store is
one entry in `TRACKING_KINDS` or `OPTUNA_KINDS` (and one module of `eeopt.stores`). PostgreSQL is the tests' own
server (`own_postgres`); outages are made with a TCP proxy in front of the real server (`services.TcpProxy`).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from services import TcpProxy, start_mlflow_sqlite

from eeopt.errors import StorageError, StudyError
from eeopt.stores import RetryPolicy, Stores
from eeopt.stores.urls import url_scheme
from eeopt.study.tracking import StudyRuns
from eeopt.study.trials import TrialStore

TRACKING_KINDS = [
    "file", "sqlite",
    pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.slow]),
    pytest.param("http", marks=pytest.mark.slow),
]
OPTUNA_KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
#: The kinds that are servers on the network: an outage is a server that stops answering.
NETWORK_TRACKING = [pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.slow]),
                    pytest.param("http", marks=pytest.mark.slow)]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server (SQLite backend, proxied artifacts): (tracking URI, port)."""
    service, url, port = start_mlflow_sqlite(tmp_path_factory.mktemp("mlflow-server"))
    yield url, port
    service.stop()


def _tracking_uri(kind: str, tmp_path: Path, request) -> str:
    if kind == "file":  # MLflow 3 writes its retired file store only when the user opts in
        request.getfixturevalue("monkeypatch").setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        return (tmp_path / "mlruns").as_uri()
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    if kind == "postgresql":
        return request.getfixturevalue("own_postgres").create_database(f"m{uuid.uuid4().hex[:12]}")
    return request.getfixturevalue("mlflow_server")[0]


def _optuna_url(kind: str, tmp_path: Path, request) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'eeopt.db'}"
    return request.getfixturevalue("own_postgres").create_database(f"o{uuid.uuid4().hex[:12]}")


def _stores(tracking_uri: str, tmp_path: Path, retry_for: float = 30) -> Stores:
    return Stores.for_study(f"sqlite:///{tmp_path / 'eeopt.db'}", tracking_uri, tmp_path, retry_for=retry_for)


# ---------------------------------------------------------------------------------------------- tracking stores
@pytest.mark.parametrize("kind", TRACKING_KINDS)
def test_checks_and_reads_create_no_store(kind, tmp_path, request):
    """`check` and the read-only questions answer without writing: a file store that is not there stays absent,
    and `read_tracking` on it says so in one line."""
    stores = _stores(_tracking_uri(kind, tmp_path, request), tmp_path)
    before = sorted(tmp_path.iterdir())
    stores.check()
    assert sorted(tmp_path.iterdir()) == before
    if kind == "sqlite":
        assert not stores.tracking_exists()
        with pytest.raises(StorageError, match="^no MLflow tracking store at sqlite:///"):
            stores.read_tracking(lambda client: client.search_experiments())
        assert sorted(tmp_path.iterdir()) == before
    else:
        assert stores.tracking_exists()  # servers and folders are not asked (that could create their schema)
    assert stores.tracking_server == (kind == "http")
    assert (stores.artifact_root is None) == (kind == "http")  # a server keeps its artifacts, others beside the file


@pytest.mark.slow  # over 1.5 s on an idle core
@pytest.mark.parametrize("kind", TRACKING_KINDS)
def test_a_trial_run_written_through_its_handle(kind, tmp_path, request):
    """The driver's `StudyRuns` and a worker's `TrialRun` on the same run: tags, params, metrics (a batch written
    twice, as a retry after a lost answer does), artifacts, note sections, the end state."""
    stores = _stores(_tracking_uri(kind, tmp_path, request), tmp_path)
    name = f"contract-{uuid.uuid4().hex[:8]}"
    runs = StudyRuns.start(stores.tracking_uri, name, stores.artifact_root, name, {"eeopt.kind": kind},
                           objectives={"val/acc": "maximize"}, policy=stores.policy)
    assert stores.tracking_exists()
    run_id = runs.start_trial(0)
    run = stores.run(run_id)
    run.set_tags({"eeopt.node": "here"})
    run.log_params({"training.lr": "0.01"})
    run.log_params({"training.lr": "0.01"})  # the same value again: accepted
    run.log_metrics({"val/acc": 0.5, "val/nll": float("nan"), "skipped": float("inf")}, step=1)
    from mlflow.entities import Metric

    again = [Metric("val/again", 1.0, 1_000, 0)]
    for _ in range(2):
        run.call(lambda c: c.log_batch(run_id, metrics=again, synchronous=True))
    (tmp_path / "metrics.json").write_text("{}")
    run.log_artifacts([tmp_path / "metrics.json", tmp_path / "missing.json"])
    run.set_note_section("summary", "first")
    run.set_note_section("summary", "second")
    run.set_note_section("analysis", "kept beside it")
    runs.finish_trial(run_id, "COMPLETE")
    runs.finish("COMPLETE")

    client = stores.mlflow_client()
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.tags["eeopt.state"] == "COMPLETE"
    assert got.data.tags["eeopt.node"] == "here" and got.data.params["training.lr"] == "0.01"
    assert got.data.metrics["val/acc"] == 0.5 and "skipped" not in got.data.metrics
    history = client.get_metric_history(run_id, "val/again")
    # a database keeps one point per (key, step, time, value); the file store appends, so a repeated batch is two
    assert len(history) == (2 if kind == "file" else 1)
    assert [a.path for a in client.list_artifacts(run_id)] == ["metrics.json"]
    note = got.data.tags["mlflow.note.content"]
    assert note.count("second") == 1 and "first" not in note and "kept beside it" in note
    parent = client.get_run(runs.parent_run_id)
    assert parent.info.status == "FINISHED" and got.data.tags["mlflow.parentRunId"] == runs.parent_run_id


@pytest.mark.parametrize("kind", NETWORK_TRACKING)
def test_an_outage_shorter_than_the_policy_delays_a_write(kind, tmp_path, request, caplog):
    """The store stops answering (its connections dropped, new ones refused) for 10 s while a run is written
    (longer than MLflow's own HTTP retries): the write waits, says so, and lands once the store is back; nothing
    is lost."""
    uri = _tracking_uri(kind, tmp_path, request)
    port = int(uri.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port)
    try:
        stores = _stores(proxy.url(uri, port), tmp_path, retry_for=60)
        name = f"outage-{uuid.uuid4().hex[:8]}"
        runs = StudyRuns.start(stores.tracking_uri, name, stores.artifact_root, name, {},
                               objectives={"val/acc": "maximize"}, policy=stores.policy)
        run = stores.run(runs.start_trial(0))
        proxy.cut()
        threading.Timer(10.0, proxy.restore).start()
        with caplog.at_level("WARNING", logger="eeopt.stores"):
            run.log_metrics({f"m{i}": float(i) for i in range(5)}, step=2)
        assert "retrying" in caplog.text
        run.set_tags({"after": "outage"})
        got = stores.mlflow_client().get_run(run.run_id)
        assert {f"m{i}" for i in range(5)} <= set(got.data.metrics) and got.data.tags["after"] == "outage"
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", NETWORK_TRACKING)
def test_a_store_down_for_longer_than_the_policy_fails_in_one_line(kind, tmp_path, request):
    """Past `retry_for` the call gives up with one `StorageError` line naming the store, the password masked."""
    uri = _tracking_uri(kind, tmp_path, request)
    port = int(uri.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port)
    try:
        target = proxy.url(uri, port)
        secret = "pw" + uuid.uuid4().hex[:8] if kind == "http" else request.getfixturevalue("own_postgres").password
        if kind == "http":
            target = target.replace("http://", f"http://user:{secret}@")
        assert secret in target
        stores = Stores.for_study(None, target, tmp_path, retry_for=3)
        name = f"down-{uuid.uuid4().hex[:8]}"
        runs = StudyRuns.start(stores.tracking_uri, name, stores.artifact_root, name, {},
                               objectives={"val/acc": "maximize"}, policy=stores.policy)
        run = stores.run(runs.start_trial(0))  # a worker's handle, its client made while the store answered
        run.set_tags({"before": "outage"})
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            run.set_tags({"a": "b"})
        text = str(info.value)
        assert text.startswith("MLflow tracking store ") and "\n" not in text and secret not in text
        assert "***@" in text
        assert time.monotonic() - started >= 1  # it did retry (a bound on the test's wait, not a speed check)
    finally:
        proxy.close()


def test_the_file_store_without_the_opt_in_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """Found by the contract suite: a ``file:`` tracking URI passed the checks and then failed at MLflow's first
    use (after Ray had started); it is now one line naming the opt-in and the alternative."""
    from eeopt.errors import ConfigError

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match=r"^study\.mlflow\.tracking_uri: .* MLFLOW_ALLOW_FILE_STORE=true"):
        Stores.for_study(None, (tmp_path / "mlruns").as_uri(), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- Optuna storages
@pytest.mark.parametrize("kind", OPTUNA_KINDS)
def test_optuna_storage_contract(kind, tmp_path, request):
    """Read-only opening of a study that is not there creates nothing and says so; a created study takes a
    trial, its intermediate value and its end; a second process-like opener sees the same study."""
    url = _optuna_url(kind, tmp_path, request)
    with pytest.raises(StudyError, match="no study named 'c'"):
        TrialStore(url, "c", create=False)
    assert not (tmp_path / "eeopt.db").exists()
    store = TrialStore(url, "c", directions=["maximize"], objectives=["val/acc"], retry_for=5)
    ticket = store.ask({})
    store.report(ticket, 1, 0.25)
    store.complete(ticket, [0.5], {"test/acc": 0.4})
    again = TrialStore(url, "c", create=False)
    (trial,) = again.trials()
    assert trial.state.name == "COMPLETE" and trial.values == [0.5] and trial.intermediate_values == {1: 0.25}
    assert url_scheme(url) == kind


# ---------------------------------------------------------------------------------------------- SQLite schema copy
def _sqlite_schema(path: Path) -> tuple[dict, list]:
    """({table or index: its definition's lines, sorted}, the schema version). Sorted: MLflow's own migrations
    write a table's constraints in an order that varies from one new database to the next."""
    import sqlite3

    con = sqlite3.connect(path)
    try:
        objects = {name: (kind, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
                   for kind, name, sql in con.execute("SELECT type, name, sql FROM sqlite_master")}
        return objects, con.execute("SELECT version_num FROM alembic_version").fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_a_new_sqlite_store_is_a_copy_with_mlflows_own_schema(tmp_path, monkeypatch):
    """A new SQLite tracking store is copied from an empty migrated one (made once, in the cache folder): the same
    tables, indexes and schema version as the store MLflow creates by itself, MLflow's default experiment added on
    first use, and runs written to it. Without a usable cache folder, MLflow creates the store as before."""
    import mlflow

    from eeopt.stores import tracking_store

    monkeypatch.setattr(tracking_store, "SCHEMA_CACHE", tmp_path / "cache")
    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'by-mlflow.db'}").search_experiments()
    expected = _sqlite_schema(tmp_path / "by-mlflow.db")
    assert expected[1] and len(expected[0]) > 50  # MLflow's tables and their indexes, at a migration
    for name in ("first.db", "second.db"):  # the first makes the template, the second copies it
        uri = f"sqlite:///{tmp_path / name}"
        tracking_store.prepare(uri)
        assert _sqlite_schema(tmp_path / name) == expected, name
        client = mlflow.MlflowClient(uri)
        assert [e.name for e in client.search_experiments()] == ["Default"]
        run = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "art")))
        client.log_metric(run.info.run_id, "m", 1.0)
        assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"mlflow-{mlflow.__version__}-schema.db"]

    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setattr(tracking_store, "SCHEMA_CACHE", tmp_path / "not-a-folder")
    assert not tracking_store.copy_schema(tmp_path / "third.db") and not (tmp_path / "third.db").exists()
    tracking_store.prepare(f"sqlite:///{tmp_path / 'third.db'}")
    assert _sqlite_schema(tmp_path / "third.db") == expected
