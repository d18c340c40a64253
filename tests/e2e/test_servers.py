"""The real test servers start, serve and give each test what it needs."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa


@pytest.mark.postgres
def test_pg_url_connects(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar() == 1
            # A fresh database: no tables of any earlier test.
            tables = conn.execute(
                sa.text("select count(*) from information_schema.tables where table_schema = 'public'")
            ).scalar()
            assert tables == 0
            conn.execute(sa.text("create table t (x int)"))
            conn.commit()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_pg_databases_are_per_test(pg_server, pg_url: str) -> None:
    other = pg_server.create_database()
    assert other != pg_url
    engine = sa.create_engine(other)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select current_database()")).scalar() == other.rsplit("/", 1)[1]
    finally:
        engine.dispose()
        pg_server.drop_database(other.rsplit("/", 1)[1])


@pytest.mark.s3
def test_s3_roundtrip(s3_server) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options())
    path = f"{s3_server.bucket}/servers/{uuid.uuid4().hex}.bin"
    fs.pipe_file(path, b"hello s3")
    assert fs.cat_file(path) == b"hello s3"
    assert fs.info(path)["size"] == 8
    fs.rm_file(path)
    assert not fs.exists(path)


@pytest.mark.s3
def test_s3_env_credentials(s3_server, s3_prefix: str) -> None:
    # The fixture's AWS_* variables are enough for a client built the usual way.
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs={"endpoint_url": s3_server.endpoint_url})
    path = f"{s3_prefix.removeprefix('s3://')}/x"
    fs.pipe_file(path, b"1")
    assert fs.cat_file(path) == b"1"
