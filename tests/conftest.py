"""Shared pytest fixtures."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

# `python -m pytest` puts the repo root on sys.path, a bare `pytest` does not; the
# server helpers are imported as `tests.servers` either way.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.servers import PgServer, S3Server, start_postgres, start_s3  # noqa: E402

# =============================================================================
# Real servers: PostgreSQL 15 and S3 (SeaweedFS) on loopback, free ports.
# Each starts once per session, and only when a test asks for it. The logic
# lives in tests/servers.py.
# =============================================================================


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A SeaweedFS S3 endpoint with an empty bucket; AWS_* variables point clients at its keys.

    Tests share the bucket: give each test its own prefix (see ``s3_prefix``).
    """
    server: S3Server = start_s3(tmp_path_factory.mktemp("s3"))
    env = pytest.MonkeyPatch()
    # SeaweedFS started without credentials accepts any key, but botocore refuses to
    # sign without one; a profile or config from the machine must not interfere.
    env.setenv("AWS_ACCESS_KEY_ID", server.key)
    env.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.delenv(name, raising=False)
    try:
        yield server
    finally:
        env.undo()
        server.stop()


@pytest.fixture
def s3_prefix(s3_server: S3Server) -> str:
    """A fresh ``s3://bucket/prefix`` URL for one test."""
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL 15 server (trust auth, user ``postgres``, fsync off)."""
    server: PgServer = start_postgres(tmp_path_factory.mktemp("pg"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer):
    """SQLAlchemy URL of a fresh, empty database for one test (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = pg_server.create_database(name)
    yield url
    try:
        # WITH (FORCE) closes connections a test's engine left open.
        pg_server.drop_database(name)
    except Exception:  # the server may be gone already at session end; not worth a failure
        pass


# ============================ end of real servers ============================


def pytest_collection_modifyitems(items) -> None:
    """Markers from what a test uses, so that `make test-fast` can leave out the tests
    that need a server of their own: ``postgres``, ``s3``, and ``slow`` for CLI processes
    against a real `prefect server` (`-m "not postgres and not s3 and not slow"`)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if names & {"pg_server", "pg_url", "pg_library"} or params.get("library") == "postgres":
            item.add_marker(pytest.mark.postgres)
        if names & {"s3_server", "s3_prefix", "s3_library"} or params.get("where") == "s3_library" \
                or params.get("store") == "s3":
            item.add_marker(pytest.mark.s3)
        if "prefect_server" in names:
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session) -> None:
    """With two pytest processes, the e2e tests must stay on one (tests/e2e/__init__.py):
    refuse to run if pytest-xdist's ``loadgroup`` no longer groups (it silently stopped
    with pytest 9.2, pytest-xdist#1386)."""
    config = session.config
    if not hasattr(config, "workerinput") or not config.getvalue("loadgroup"):
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist's --dist loadgroup is not grouping {lost[0]} (and {len(lost) - 1} "
                                "more): install the pytest this project pins (`make install`)")


# =============================================================================
# bulkops: a library (database + storage) per test, and Prefect's test harness.
# =============================================================================

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A Prefect home of each pytest process's own (`make test` runs two): the test harness's
# server keeps its concurrency leases there (`expirations.json`), and two servers
# rewriting one index would drop each other's leases. Nothing lands in ~/.prefect.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bulkops-test-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The harness's server takes ~10 s to start here; Prefect's default timeout is tighter.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# The suite runs hundreds of operations for a handful of creators, some killed on purpose
# (their slots hold until the lease runs out): the per-creator limit (default 2) is tested
# where it is the subject (tests/flows/test_slots.py, tests/api, tests/e2e/test_serve.py),
# with creators of their own.
os.environ.setdefault("BULKOPS_MAX_RUNNING_PER_CREATOR", "50")
# No daily cleanup fires inside a test's `bulkops serve` (the schedule is tested where it
# is the subject: tests/e2e/test_cleanup_schedule.py).
os.environ.setdefault("BULKOPS_CLEANUP_CRON", "off")
# The leases of those slots on disk, as every Prefect server bulkops starts keeps them.
from service.environment import LEASE_STORAGE  # noqa: E402 - no Prefect import

os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASE_STORAGE)


@dataclass
class Library:
    """One test's video library: a database, a storage root, and the env pointing at them."""

    database_url: str
    storage_url: str
    endpoint_url: str | None
    data_dir: Path

    @property
    def engine(self):
        from videolib.db.engine import get_engine

        return get_engine(self.database_url)

    @property
    def store(self):
        from videolib.storage import ObjectStore

        return ObjectStore.from_url(self.storage_url, endpoint_url=self.endpoint_url)

    def env(self) -> dict[str, str]:
        env = {
            "BULKOPS_DATABASE_URL": self.database_url,
            "BULKOPS_STORAGE_URL": self.storage_url,
            "BULKOPS_DATA_DIR": str(self.data_dir),
        }
        if self.endpoint_url:
            env["BULKOPS_S3_ENDPOINT_URL"] = self.endpoint_url
        return env

    def seed(self, videos: int = 20, *, creators: int = 2, seed: int = 7, files: bool = True, **kwargs):
        from videolib.embedders import get_embedder
        from videolib.seed import seed_library

        return seed_library(
            self.engine, self.store if files else None, get_embedder("hashing"),
            videos=videos, creators=creators, seed=seed, **kwargs,
        )

    def ids(self, creator_id: str) -> list[str]:
        from videolib.selection import iter_creator_video_ids

        return list(iter_creator_video_ids(self.engine, creator_id))


def reset_bulkops_caches() -> None:
    from config import get_settings
    from videolib.db.engine import dispose_engines

    get_settings.cache_clear()
    dispose_engines()
    try:
        from tasks.resources import _store

        _store.cache_clear()
    except ImportError:
        pass


def _make_library(monkeypatch, tmp_path: Path, database_url: str, storage_url: str, endpoint: str | None) -> Library:
    from videolib.db.engine import get_engine
    from videolib.db.migrate import upgrade

    lib = Library(database_url, storage_url, endpoint, tmp_path / "data")
    for name in ("BULKOPS_S3_ENDPOINT_URL", "BULKOPS_MAX_IDS", "BULKOPS_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in lib.env().items():
        monkeypatch.setenv(name, value)
    reset_bulkops_caches()
    upgrade(get_engine(database_url))
    return lib


@pytest.fixture
def sqlite_library(monkeypatch, tmp_path) -> Library:
    """SQLite file + local directory, the embedded default."""
    lib = _make_library(
        monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'bulkops.db'}", str(tmp_path / "storage"), None
    )
    yield lib
    reset_bulkops_caches()


@pytest.fixture
def pg_library(monkeypatch, tmp_path, pg_url) -> Library:
    """A fresh PostgreSQL database + local directory."""
    lib = _make_library(monkeypatch, tmp_path, pg_url, str(tmp_path / "storage"), None)
    yield lib
    reset_bulkops_caches()


@pytest.fixture
def s3_library(monkeypatch, tmp_path, s3_server, s3_prefix) -> Library:
    """SQLite file + a fresh prefix on the loopback S3 endpoint."""
    lib = _make_library(
        monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'bulkops.db'}", s3_prefix, s3_server.endpoint_url
    )
    yield lib
    reset_bulkops_caches()


@pytest.fixture(params=["sqlite", "postgres"])
def library(request) -> Library:
    """The same test on SQLite and on a real PostgreSQL server."""
    return request.getfixturevalue("sqlite_library" if request.param == "sqlite" else "pg_library")


@pytest.fixture
def seeded(sqlite_library):
    """A small SQLite library of two creators, with files."""
    sqlite_library.seed(30, creators=2)
    return sqlite_library


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (its start costs ~10 s here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server` for CLI processes: concurrent CLI calls share it instead of
    each starting an ephemeral server on the same database."""
    from tests.servers import start_prefect_server, stop_prefect_server

    server = start_prefect_server(tmp_path_factory.mktemp("prefect-home"))
    yield server
    stop_prefect_server(server)
