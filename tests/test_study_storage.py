"""Storage behaviour on SQLite and on the real PostgreSQL server (127.0.0.1:5432, user postgres, trust auth)."""

import uuid

import optuna
import pytest

from eeopt.errors import StorageError
from eeopt.study.storage import mask_url, open_storage, resolve_sqlite

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


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'eeopt.db'}"
    return request.getfixturevalue("pg_url")


def test_mask_and_resolve(tmp_path):
    assert mask_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("postgresql://db/x") == "postgresql://db/x"
    assert resolve_sqlite("sqlite:///eeopt.db", tmp_path) == f"sqlite:///{tmp_path / 'eeopt.db'}"
    assert resolve_sqlite("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"


@pytest.mark.postgres
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
