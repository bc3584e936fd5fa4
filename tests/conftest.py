"""Shared fixtures: small generated data only; nothing is downloaded.

Also two suite-wide rules: every test runs inside `restoring_registries()`, so whatever a test registers (a score,
a calibrator, a dataset, a backbone) is gone for the next one; and a test that asks for one of the real servers
below carries the markers that say so (`FIXTURE_MARKERS`), so `-m "not postgres"` or `-m "not cluster"` never
starts one, whatever markers its file spells out.
"""

from __future__ import annotations

import os

# Keep numeric libraries to one thread per test process: the suite runs on 2 cores, often with xdist.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import pytest

import eeopt.core.calibration  # noqa: F401 - its registry exists before any test, so every test restores it
import eeopt.core.scores  # noqa: F401 - the same
from eeopt.registry import restoring_registries
from eeopt.core.synthetic import synthetic_exit_outputs

# The fixtures below that start real servers, and the markers a test using them (directly or through another
# fixture) gets: `own_postgres` runs PostgreSQL's initdb/pg_ctl, `team_stack` a Ray cluster, MLflow and a dashboard.
FIXTURE_MARKERS = {
    "own_postgres": ("postgres", "slow"),
    "team_stack": ("cluster", "postgres", "slow"),
}
# Session fixtures so costly that every test using them runs in one xdist process, and the files that hold those
# tests: otherwise each process builds its own team stack and its outage study (about 130 s each). xdist's own
# `--dist loadgroup` does not work with pytest 9.2 (it renames a test by setting `item._nodeid`, which pytest no longer
# reads), so `pytest_xdist_make_scheduler` below groups by file, and collection fails for a test that uses such a
# fixture from another file.
FIXTURE_GROUPS = {"team_stack": ("tests/test_cluster.py", "tests/test_secrets.py")}
# Files whose tests share a costly module-scoped fixture (a study run, a trained model): all their tests in one
# process, so the fixture is built once rather than once per process (it was three times for the policy round trip).
FILE_GROUPS = ("tests/test_policy_roundtrip.py", "tests/test_study_analysis.py", "tests/test_tables.py")


#: The repository's top level, and what running the suite may add to it (caches, install state).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE_MAY_ADD = {".pytest_cache", "__pycache__", ".import_linter_cache", ".install.lock", "eeopt.egg-info"}


def pytest_sessionstart(session):
    session.config._repo_before = set(os.listdir(REPO))


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when tests wrote into the repository (an MLflow `./mlruns` from a run without an artifact root,
    a store beside the working folder): tests write under their own temporary folders. Checked in the controlling
    process only (xdist's workers share the folder)."""
    if hasattr(session.config, "workerinput"):
        return
    added = {name for name in set(os.listdir(REPO)) - session.config._repo_before
             if name not in SUITE_MAY_ADD and not name.startswith(".venv")}
    if added:
        writer = session.config.get_terminal_writer()
        writer.line()
        writer.line(f"tests wrote into the repository: {', '.join(sorted(added))} (write under tmp_path)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Markers from fixtures (above); the slow tests first (a stable sort), so that under xdist the long ones
    start early and the quick ones fill the end, instead of one process finishing a long study alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None and not any(
        fixture in getattr(item, "fixturenames", ()) for fixture in FIXTURE_MARKERS))
    for item in items:
        for fixture, markers in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                for marker in markers:
                    item.add_marker(marker)
        for fixture, files in FIXTURE_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()) and item.nodeid.split("::")[0] not in files:
                raise pytest.UsageError(f"{item.nodeid} uses `{fixture}`: add its file to FIXTURE_GROUPS[{fixture!r}] "
                                        "in tests/conftest.py, so that xdist builds the fixture once")


def pytest_xdist_make_scheduler(config, log):
    """xdist's `load` scheduling, except that the tests of each FIXTURE_GROUPS entry's files, and of each file of
    FILE_GROUPS, go to one process (groups are handed out first, the largest first)."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    groups = {file: fixture for fixture, files in FIXTURE_GROUPS.items() for file in files}
    groups.update({file: file for file in FILE_GROUPS})

    class Grouped(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return groups.get(nodeid.split("::")[0], nodeid)

    return Grouped(config, log)


@pytest.fixture(autouse=True)
def _registries_restored():
    """Each test leaves every registry as it found it. The score and calibrator registries exist from the imports
    above; the dataset and backbone ones exist as soon as any test module imports eeopt.data / eeopt.models, which a
    test that registers one does."""
    with restoring_registries():
        yield


@pytest.fixture
def outputs_pair():
    """(val, test) synthetic exit outputs of the same 'model': 4 exits, 10 classes."""
    return (
        synthetic_exit_outputs(4, 1500, 10, seed=1, with_scores=True),
        synthetic_exit_outputs(4, 1200, 10, seed=2, with_scores=True),
    )


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# ---------------------------------------------------------------------------------------------- real servers
# Started once per session, only by the tests that ask for them (tests/services.py starts and stops them).
@pytest.fixture(scope="session")
def own_postgres():
    """A PostgreSQL server of the tests' own, on a free port with password auth (never the one on 5432)."""
    from services import PostgresServer

    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def team_stack(own_postgres, tmp_path_factory):
    """The team stack, natively: an MLflow server on `own_postgres` with proxied artifacts, a 2-node Ray cluster
    (one CPU per node) and optuna-dashboard on a fresh Optuna database."""
    from services import start_stack

    stack = start_stack(own_postgres, tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def cluster_run(team_stack, tmp_path_factory):
    """A study run on the team stack's 2-node cluster through a PostgreSQL and an MLflow server restart, then read
    back by the CLI."""
    from services import ClusterRun

    run = ClusterRun(team_stack, tmp_path_factory.mktemp("cluster-run"))
    run.run_with_outages()
    run.read_back()
    return run
