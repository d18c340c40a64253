"""The ADBC SQLite reader processes (videolib/export/sqlite_arrow.py) on real SQLite files."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading

import pyarrow as pa
import pytest

from videolib.export.sqlite_arrow import (
    HELPER_RSS_KB,
    SqliteArrowReader,
    SqliteReaderError,
    held_pool,
    null_safe_select,
    pool_for,
    restore_nulls,
)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, n INTEGER, at TEXT)")
    # 20k rows whose nullable columns are NULL for the first 10k: the driver would
    # infer int64 from an all-NULL first batch and fail at the first string.
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
        [(i, None if i < 10_000 else f"name, \"{i}\"\n", None if i < 10_000 else i / 4,
          None if i < 10_000 else i, None if i % 3 else "2026-01-02 03:04:05.000006") for i in range(20_000)],
    )
    conn.commit()
    yield path, conn
    conn.close()


COLUMNS = [
    ("id", "id", pa.int64(), False),
    ("name", "name", pa.string(), True),
    ("score", "score", pa.float64(), True),
    ("n", "n", pa.int64(), True),
    ("at", "at", pa.string(), True),
]


def read_all(reader_or_pool, sql, params=()):
    return pa.Table.from_batches([restore_nulls(b) for b in reader_or_pool.query(sql, params)])


def test_null_first_columns_keep_their_types_and_values(db):
    path, conn = db
    with SqliteArrowReader(path) as reader:
        table = read_all(reader, f"SELECT {null_safe_select(COLUMNS)} FROM t WHERE id >= ? ORDER BY id", [0])
    assert table.schema.names == ["id", "name", "score", "n", "at"]
    assert table.schema.field("name").type == pa.string()
    assert table.schema.field("score").type == pa.float64()
    expected = conn.execute("SELECT id, name, score, n, at FROM t ORDER BY id").fetchall()
    assert list(zip(*table.to_pydict().values(), strict=True)) == expected


def test_without_the_guard_the_driver_fails_and_the_reader_lives_on(db):
    path, _ = db
    with SqliteArrowReader(path) as reader:
        with pytest.raises(SqliteReaderError, match="Type mismatch"):
            list(reader.query("SELECT name FROM t ORDER BY id"))
        assert not reader.broken
        with pytest.raises(SqliteReaderError, match="no such table"):
            list(reader.query("SELECT * FROM nope"))
        assert read_all(reader, "SELECT count(*) AS c FROM t").column("c").to_pylist() == [20_000]


def test_the_reader_opens_the_file_read_only(db):
    path, conn = db
    with SqliteArrowReader(path) as reader:
        with pytest.raises(SqliteReaderError, match="readonly"):
            list(reader.query("DELETE FROM t"))
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (20_000,)


def test_parameters_bind_as_values_not_sql(db):
    path, _ = db
    with SqliteArrowReader(path) as reader:
        table = read_all(reader, "SELECT count(*) AS c FROM t WHERE name = ?", ["x' OR '1'='1"])
    assert table.column("c").to_pylist() == [0]


def test_a_killed_reader_is_a_clear_error_and_the_pool_replaces_it(db):
    path, _ = db
    with held_pool(path, 1) as pool:
        with pool.reader() as reader:
            os.kill(reader.pid, signal.SIGKILL)
            with pytest.raises(SqliteReaderError, match="exited unexpectedly"):
                list(reader.query("SELECT id FROM t"))
            assert reader.broken
        # the broken one is gone; the next query gets a new process
        assert read_all(pool, "SELECT count(*) AS c FROM t").column("c").to_pylist() == [20_000]


def test_an_abandoned_result_does_not_poison_the_next_query(db):
    path, _ = db
    with held_pool(path, 1) as pool:
        batches = pool.query("SELECT id FROM t ORDER BY id")
        first = next(batches)
        assert first.num_rows > 0
        batches.close()  # the rest of the reply is still in that helper's pipe
        assert read_all(pool, "SELECT count(*) AS c FROM t").column("c").to_pylist() == [20_000]


def test_reads_while_this_process_writes_the_wal_database(db):
    """The reason for the helper processes: ADBC's SQLite copy in this process, reading the
    database our sqlite3 writes, corrupts it. Across processes, reads and writes coexist."""
    path, conn = db
    stop = threading.Event()
    written = [0]

    def write() -> None:
        writer = sqlite3.connect(path, timeout=30)
        try:
            i = 1_000_000
            while not stop.is_set():
                writer.execute("INSERT INTO t (id, name) VALUES (?, ?)", (i, "w"))
                writer.commit()
                i += 1
                written[0] += 1
        finally:
            writer.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        with held_pool(path, 2) as pool:
            for _ in range(10):
                table = read_all(pool, f"SELECT {null_safe_select(COLUMNS)} FROM t WHERE id < ? ORDER BY id", [20_000])
                assert table.num_rows == 20_000
    finally:
        stop.set()
        thread.join()
    assert written[0] > 0
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (20_000 + written[0],)


def test_the_last_holder_stops_the_helpers_and_records_their_memory(db):
    path, _ = db
    with held_pool(path, 2) as pool:
        with held_pool(path, 2) as same:
            assert same is pool
        pids = [r.pid for r in pool._all]
        assert len(pids) == 2
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
    for pid in pids:
        after_imports, peak = HELPER_RSS_KB[pid]
        assert 0 < after_imports <= peak
        assert not os.path.exists(f"/proc/{pid}")  # stopped and reaped
    assert pool_for(path, 2) is not pool  # a later export starts afresh


def test_a_database_path_with_uri_characters_is_opened_as_is(tmp_path):
    """The helper opens ``file:<path>?mode=ro``: spaces, ?, # and % in the path are quoted,
    not read as URI syntax (no other file, no other mode)."""
    folder = tmp_path / "a dir ?x=1 #frag %41"
    folder.mkdir()
    path = folder / "lib ?.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.commit()
    conn.close()
    with SqliteArrowReader(path) as reader:
        assert read_all(reader, "SELECT id FROM t").column("id").to_pylist() == [42]
        with pytest.raises(SqliteReaderError, match="readonly"):
            list(reader.query("INSERT INTO t VALUES (1)"))
    assert sorted(p.name for p in folder.iterdir()) == ["lib ?.db"]
