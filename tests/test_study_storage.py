"""Storage behaviour on SQLite and on the real PostgreSQL server (127.0.0.1:5432, user postgres, trust auth)."""

import uuid
from pathlib import Path

import optuna
import pytest

from eeopt.errors import StorageError
from eeopt.stores.databases import open_storage
from eeopt.stores.urls import mask_url, resolve_sqlite

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    import psycopg

    name = f"eeopt_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True)
    conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'eeopt.db'}"
    return request.getfixturevalue("pg_url")


def test_mask_and_resolve(tmp_path):
    assert mask_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("postgresql://db/x") == "postgresql://db/x"
    assert resolve_sqlite("sqlite:///eeopt.db", tmp_path) == f"sqlite:///{tmp_path / 'eeopt.db'}"
    assert resolve_sqlite("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_storage_contract(storage_url):
    """The same behaviour on every backend: create, reload by name, requeue a running trial, heartbeat expiry."""
    from optuna.trial import TrialState

    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    t = study.ask(dist)
    study.tell(t, [0.5, 1.0])
    running = study.ask(dist)
    storage.set_trial_state_values(running._trial_id, TrialState.WAITING)  # requeue
    again = optuna.load_study(study_name="s", storage=open_storage(storage_url))
    resumed = again.ask(dist)
    assert resumed.number == running.number and resumed.params == running.params
    states = [tr.state for tr in again.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING]


@pytest.mark.postgres
def test_unreachable_postgres_is_one_line_storage_error():
    with pytest.raises(StorageError) as info:
        open_storage("postgresql://postgres:pw@127.0.0.1:5432/no_such_db_eeopt")
    msg = str(info.value)
    assert "no_such_db_eeopt" in msg and "pw" not in msg.replace("postgres", "") and "\n" not in msg


# ---------------------------------------------------------------------------------------------- the trial store
DIST = {"x": optuna.distributions.FloatDistribution(0, 1)}
OBJECTIVES = {"directions": ["maximize", "minimize"], "objectives": ["val/a", "val/b"]}


def _trial(url, number):
    return optuna.load_study(study_name="s", storage=open_storage(url, heartbeat=False)).get_trials()[number]


def test_trial_store_contract(storage_url):
    """ask / complete / fail / prune / requeue / claim through tickets, the same on every backend."""
    from eeopt.study.trials import ATTR_ERROR, ATTR_MLFLOW_RUN, TrialCounts, TrialStore

    store = TrialStore(storage_url, "s", **OBJECTIVES)
    first = store.ask(DIST)
    assert first.number == 0 and not first.requeued and 0 <= first.params["x"] <= 1
    store.complete(first, [0.5, 1.0], attrs={"test/acc_at_50": 0.4, "test/exit3/accuracy": None})
    interrupted = store.ask(DIST)
    store.set_attrs(interrupted, {ATTR_MLFLOW_RUN: "run-1"})
    store.requeue(interrupted)
    assert store.counts() == TrialCounts(complete=1, waiting=1)

    rerun = TrialStore(storage_url, "s", **OBJECTIVES)  # a rerun, or another worker on the storage
    resumed = rerun.ask(DIST)
    assert (resumed.number, resumed.params, resumed.requeued) == (interrupted.number, interrupted.params, True)
    rerun.fail(resumed, "TrainingDiverged: loss is nan")
    rerun.prune(rerun.ask(DIST))
    assert rerun.counts() == TrialCounts(complete=1, failed=1, pruned=1)
    assert rerun.claim(DIST, total=2) is None  # two occupied (COMPLETE, PRUNED): no slot left
    third = rerun.claim(DIST, total=3)
    assert third is not None and third.number == 3 and rerun.counts().occupied == 3
    rerun.heartbeat([third])
    assert rerun.best_value() == 0.5 and [t.number for t in rerun.best_trials()] == [0]

    assert _trial(storage_url, 0).user_attrs == {"test/acc_at_50": 0.4, "test/exit3/accuracy": None}
    assert _trial(storage_url, 1).user_attrs[ATTR_ERROR] == "TrainingDiverged: loss is nan"


@pytest.mark.parametrize("total", [1, 2])
def test_workers_claiming_together_take_exactly_the_free_slots_and_leave_nothing_waiting(storage_url, total):
    """Six workers claim at the same instant (a barrier) on a study with `total` free slots: exactly `total` get a
    trial, and no surplus trial is left behind WAITING (before the claim lock, the losers of the race requeued
    theirs, and a finished study kept them queued)."""
    import threading

    from eeopt.study.trials import TrialCounts, TrialStore

    stores = [TrialStore(storage_url, "s", **OBJECTIVES) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    tickets, errors = [], []

    def claim(store):
        try:
            barrier.wait()
            tickets.append(store.claim(DIST, total=total))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(store,)) for store in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(tickets) == len(stores)
    taken = sorted(t.number for t in tickets if t is not None)
    assert taken == list(range(total))
    assert stores[0].counts() == TrialCounts(running=total)


def test_dead_trials_are_failed_with_their_reason(storage_url):
    """A trial whose heartbeat stopped (its process was killed) is failed with the reason, once; the old code
    wrote the reason after failing the trial, which Optuna refuses (UpdateFinishedTrialError)."""
    import sqlalchemy

    from eeopt.stores.urls import normalize_url
    from eeopt.study.trials import ATTR_ERROR, ATTR_MLFLOW_RUN, DEAD_TRIAL_REASON, DeadTrial, TrialStore

    store = TrialStore(storage_url, "s", **OBJECTIVES)
    alive, dead = store.ask(DIST), store.ask(DIST)
    store.set_attrs(dead, {ATTR_MLFLOW_RUN: "run-dead"})
    engine = sqlalchemy.create_engine(normalize_url(storage_url))
    with engine.begin() as conn:  # its last heartbeat long ago
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00' "
                                     "WHERE trial_id = :id"), {"id": dead.trial_id})
    engine.dispose()
    assert store.fail_dead_trials() == [DeadTrial(dead.number, "run-dead")]
    assert store.fail_dead_trials() == []
    assert _trial(storage_url, alive.number).state == optuna.trial.TrialState.RUNNING
    failed = _trial(storage_url, dead.number)
    assert failed.state == optuna.trial.TrialState.FAIL and failed.user_attrs[ATTR_ERROR] == DEAD_TRIAL_REASON


def test_read_only_trial_store_creates_nothing(storage_url):
    from eeopt.errors import ConfigError, StudyError
    from eeopt.stores.databases import has_optuna_schema
    from eeopt.study.trials import TrialStore

    with pytest.raises(StudyError, match=r"no study named 's': no Optuna storage at .*run the study first"):
        TrialStore(storage_url, "s", create=False)
    assert not has_optuna_schema(storage_url)
    if storage_url.startswith("sqlite"):
        assert not Path(storage_url.removeprefix("sqlite:///")).exists()
    TrialStore(storage_url, "s", **OBJECTIVES)
    assert has_optuna_schema(storage_url)
    with pytest.raises(StudyError, match="no study named 'other'"):
        TrialStore(storage_url, "other", create=False)
    with pytest.raises(ConfigError, match="created with directions"):
        TrialStore(storage_url, "s", directions=["maximize"], objectives=["val/a"])
    with pytest.raises(ConfigError, match=r"optimises \['val/a', 'val/b'\]"):
        TrialStore(storage_url, "s", directions=["maximize", "minimize"], objectives=["val/a", "val/c"])


# ---------------------------------------------------------------------------------------------- commands
def _study_file(folder, **settings):
    import yaml

    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "digits"}, "study": {"name": "tiny", **settings}}))
    return path


def test_list_of_a_missing_sqlite_storage_creates_nothing(tmp_path, capsys):
    from eeopt.cli import main

    target = tmp_path / "new.db"
    assert main(["study", "list", "--storage", f"sqlite:///{target}"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: no Optuna storage at sqlite:///{target}\n"
    assert not target.exists()


@pytest.mark.postgres
def test_status_and_list_on_an_empty_postgres_database_create_no_tables(tmp_path, pg_url, capsys):
    import sqlalchemy

    from eeopt.cli import main
    from eeopt.stores.urls import normalize_url

    path = _study_file(tmp_path, storage=pg_url)
    assert main(["study", "status", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no study named 'tiny': no Optuna storage at postgresql://") and err.count("\n") == 1
    assert main(["study", "export", str(path)]) == 2 and main(["study", "list", "--storage", pg_url]) == 2
    assert main(["dashboard", str(path)]) == 2
    assert capsys.readouterr().err.count("no Optuna storage at") == 3
    engine = sqlalchemy.create_engine(normalize_url(pg_url))
    assert sqlalchemy.inspect(engine).get_table_names() == []
    engine.dispose()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.postgres
def test_passwords_are_masked_in_list_output_and_errors(pg_url, capsys):
    """The study list's title and its errors show `postgres:***@`, never the password (trust auth ignores it)."""
    from eeopt.cli import main

    with_password = pg_url.replace("postgres@", "postgres:SECRETPW@")
    assert main(["study", "list", "--storage", with_password]) == 2  # no storage there yet
    err = capsys.readouterr().err
    assert "SECRETPW" not in err and "postgres:***@" in err
    optuna.create_study(study_name="s", storage=open_storage(pg_url))
    assert main(["study", "list", "--storage", with_password]) == 0
    out = capsys.readouterr().out
    assert "SECRETPW" not in "".join(out.split()) and "postgres:***@" in out and "s" in out


def test_where_to_look_masks_passwords(tmp_path):
    from eeopt.study import Study

    path = _study_file(tmp_path, storage="postgresql://bob:SECRETPW@db/optuna",
                       mlflow={"tracking_uri": "postgresql://bob:SECRETPW@db/mlflow"})
    study = Study.from_yaml(path)
    assert "SECRETPW" not in " ".join(study.where_to_look()) and "bob:***@db/mlflow" in study.where_to_look()[0]


@pytest.mark.parametrize("tracking_uri, expected", [
    ("bogus://x", "study.mlflow.tracking_uri: 'bogus://x' is not an MLflow tracking URI"),
    ("postgresql://postgres:SECRETPW@127.0.0.1:1/x",
     "MLflow tracking store postgresql://postgres:***@127.0.0.1:1/x: connection failed"),
    ("http://127.0.0.1:1", "MLflow tracking store http://127.0.0.1:1: "),
], ids=["bogus-scheme", "postgres-refused", "http-refused"])
def test_unusable_tracking_store_fails_before_anything_is_written(tmp_path, capsys, tracking_uri, expected):
    """One line, exit 2, within seconds, and no Optuna storage, MLflow store, runs folder or Ray started."""
    import time

    from eeopt.cli import main

    path = _study_file(tmp_path, mlflow={"tracking_uri": tracking_uri})
    start = time.monotonic()
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1 and "SECRETPW" not in err, err
    assert time.monotonic() - start < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_unreachable_optuna_storage_fails_before_anything_is_written(tmp_path, capsys):
    from eeopt.cli import main

    path = _study_file(tmp_path, storage="postgresql://postgres:SECRETPW@127.0.0.1:1/x")
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Optuna storage postgresql://postgres:***@127.0.0.1:1/x: connection failed")
    assert err.count("\n") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_store_checks_write_nothing(tmp_path, monkeypatch):
    from eeopt.errors import ConfigError
    from eeopt.stores.databases import check_store_answers, check_tracking_uri, has_optuna_schema
    from eeopt.stores.urls import url_scheme

    assert [url_scheme(u) for u in ("postgresql+psycopg://h/db", "sqlite:///x.db", "/a/path", "HTTP://h")] == [
        "postgresql", "sqlite", "", "http"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's file store, opted into
    for uri in ("sqlite:///mlflow.db", "file:///tmp/mlruns", "https://mlflow.example.org", "databricks",
                "postgresql+psycopg://u@h/db", "mysql://h/db", "mssql+pyodbc://h/db"):
        check_tracking_uri(uri)
    for uri in ("bogus://x", "mlruns", "s3://bucket/x"):
        with pytest.raises(ConfigError, match="is not an MLflow tracking URI"):
            check_tracking_uri(uri)
    check_store_answers(f"sqlite:///{tmp_path / 'a' / 'b.db'}", "Optuna storage")
    check_store_answers((tmp_path / "mlruns").as_uri(), "MLflow tracking store")
    assert not has_optuna_schema(f"sqlite:///{tmp_path / 'c.db'}")
    (tmp_path / "text.db").write_text("not a database")
    with pytest.raises(StorageError, match="text.db: file is not a database"):
        check_store_answers(f"sqlite:///{tmp_path / 'text.db'}", "Optuna storage")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.db"]


def test_a_trial_failed_as_dead_by_another_worker_is_reported_not_raised(storage_url):
    """Worker A's trial goes silent; worker B fails it as dead (never its own trials, whatever their heartbeat);
    A's late attributes and end are refused with False, and B no longer waits on it."""
    import sqlalchemy

    from eeopt.stores.urls import normalize_url
    from eeopt.study.trials import TrialStore

    a, b = TrialStore(storage_url, "s", **OBJECTIVES), TrialStore(storage_url, "s", **OBJECTIVES)
    silent, own = a.ask(DIST), b.ask(DIST)
    assert b.waiting_on(own=[own.number]) == [silent.number]
    engine = sqlalchemy.create_engine(normalize_url(storage_url))
    with engine.begin() as conn:  # both heartbeats long ago
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00'"))
    engine.dispose()
    assert [d.number for d in b.fail_dead_trials(exclude=[own.trial_id])] == [silent.number]
    assert a.set_attrs(silent, {"x": 1}) is False and a.complete(silent, [0.5, 1.0]) is False
    assert b.complete(own, [0.1, 0.2]) is True
    assert b.waiting_on(own=[]) == [] and b.counts().failed == 1
