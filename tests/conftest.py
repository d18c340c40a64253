"""Shared pytest fixtures."""

from __future__ import annotations

import uuid

import pytest

from tests.servers import PgServer, S3Server, start_postgres, start_s3

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
