"""bulk-export: round trips against the database, CSV rules and the formula guard,
selections and filters, quota, cleanup of parts, S3 presigned download, flat memory."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from videolib.db.models import Video
from videolib.export import DEFAULT_COLUMNS

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _export(**params):
    from flows.bulk_export import bulk_export

    state = bulk_export(**params, return_state=True)
    from service.status import read_status

    return state, read_status(str(state.state_details.flow_run_id))["result"]


def _db_rows(lib, creator_id):
    with Session(lib.engine) as session:
        videos = session.scalars(select(Video).where(Video.creator_id == creator_id).order_by(Video.id)).all()
        from sqlalchemy import func

        from videolib.db.models import VideoChunk

        counts = dict(session.execute(select(VideoChunk.video_id, func.count()).group_by(VideoChunk.video_id)).all())
    return videos, counts


def _utc(value):
    return None if value is None else (value if value.tzinfo else value.replace(tzinfo=UTC))


def _awkward(lib, creator_id):
    """Make sure the awkward cases are present: empty string, NULL, quotes, newlines, formulas."""
    vid = lib.ids(creator_id)[:4]
    with lib.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id == vid[0]).values(description="", title='He said "hi", then\nleft'))
        conn.execute(update(Video).where(Video.id == vid[1]).values(description=None, title="=HYPERLINK(\"x\")"))
        conn.execute(update(Video).where(Video.id == vid[2]).values(title="+1 @home -minus \ttab", transcript=""))
        conn.execute(update(Video).where(Video.id == vid[3]).values(title="日本語 ünïcödé ✓ 🚀", transcript=None))
        # A long transcript: PostgreSQL compresses it out of the row (has_transcript reads its size only)
        long_text = " ".join(f"word{i * 7919 % 100_003}" for i in range(20_000))
        conn.execute(update(Video).where(Video.id == vid[0]).values(transcript=long_text))
    return vid


def test_parquet_round_trip_matches_the_database(library):
    library.seed(120, creators=2)
    _awkward(library, "creator-001")
    state, doc = _export(creator_id="creator-001", format="parquet", batch_size=100)
    assert state.is_completed() and doc["status"] == "completed"
    videos, counts = _db_rows(library, "creator-001")
    out = doc["output"]
    assert out["format"] == "parquet" and out["rows"] == len(videos) == doc["succeeded"] == doc["requested"]
    assert out["path"] == f"exports/creator-001/{doc['operation_id']}.parquet"
    data = library.store.get(out["path"])
    assert out["bytes"] == len(data) and out["url"] and out["expires_at"]
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == list(DEFAULT_COLUMNS)
    assert str(table.schema.field("created_at").type) == "timestamp[us, tz=UTC]"
    assert str(table.schema.field("duration_s").type) == "double"
    assert str(table.schema.field("size_bytes").type) == "int64"
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [v.id for v in videos]
    for row, video in zip(rows, videos, strict=True):
        assert row["title"] == video.title and row["description"] == video.description
        assert row["status"] == video.status and row["duration_s"] == video.duration_s
        assert row["size_bytes"] == video.size_bytes and row["storage_key"] == video.storage_key
        assert row["created_at"] == _utc(video.created_at) and row["updated_at"] == _utc(video.updated_at)
        assert row["embedded_at"] == _utc(video.embedded_at)
        assert row["has_transcript"] == bool(video.transcript)
        assert row["chunk_count"] == counts.get(video.id, 0)
    # The parts are gone, the other creator never appears.
    assert library.store.list_keys(f"exports/creator-001/{doc['operation_id']}.parts") == []
    assert not set(r["id"] for r in rows) & set(library.ids("creator-002"))


@pytest.mark.parametrize("encode_rows", [None, 7], ids=["default-slices", "7-row-slices"])
def test_csv_round_trip_without_guard(sqlite_library, monkeypatch, encode_rows):
    if encode_rows:  # every record batch encoded in several pieces: rows are neither lost nor doubled
        monkeypatch.setattr("videolib.export.writers.CSV_ENCODE_ROWS", encode_rows)
    lib = sqlite_library
    lib.seed(60, creators=1)
    awkward = _awkward(lib, "creator-001")
    _, doc = _export(creator_id="creator-001", format="csv", formula_guard=False)
    raw = lib.store.get(doc["output"]["path"])
    text = raw.decode("utf-8")
    assert text.startswith(",".join(DEFAULT_COLUMNS) + "\r\n")
    # NULL is an empty unquoted field, an empty string is "".
    line0 = next(line for line in text.split("\r\n") if line.startswith(awkward[1]))
    assert ",," in line0
    assert f'{awkward[0]},"He said ""hi"", then\nleft",""' in text
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    videos, _ = _db_rows(lib, "creator-001")
    assert len(rows) == len(videos)
    by_id = {r["id"]: r for r in rows}
    for video in videos:
        row = by_id[video.id]
        assert row["title"] == video.title
        assert row["description"] == (video.description or "")
        assert float(row["duration_s"]) == video.duration_s
        assert datetime.fromisoformat(row["created_at"].replace("Z", "+00:00")) == _utc(video.created_at)
    assert by_id[awkward[1]]["title"] == '=HYPERLINK("x")'
    # Polars reads it back with NULLs and empty strings kept apart.
    frame = pl.read_csv(io.BytesIO(raw), infer_schema=False)
    described = dict(zip(frame["id"].to_list(), frame["description"].to_list(), strict=True))
    assert described[awkward[0]] == "" and described[awkward[1]] is None


def test_csv_formula_guard_on_by_default(sqlite_library):
    lib = sqlite_library
    lib.seed(30, creators=1)
    awkward = _awkward(lib, "creator-001")
    _, doc = _export(creator_id="creator-001", format="csv")
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(lib.store.get(doc["output"]["path"]).decode(), newline=""))}
    assert rows[awkward[1]]["title"] == "'=HYPERLINK(\"x\")"
    assert rows[awkward[2]]["title"] == "'+1 @home -minus \ttab"
    for row in rows.values():
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value


def test_column_subset_and_order(sqlite_library):
    lib = sqlite_library
    lib.seed(20, creators=1)
    _, doc = _export(creator_id="creator-001", format="parquet", columns=["title", "id", "chunk_count"])
    table = pq.read_table(io.BytesIO(lib.store.get(doc["output"]["path"])))
    assert table.column_names == ["title", "id", "chunk_count"]
    _, doc = _export(creator_id="creator-001", format="csv", columns=["id", "has_transcript"])
    first = lib.store.get(doc["output"]["path"]).decode().split("\r\n")[0]
    assert first == "id,has_transcript"
    # chunk_count without id: the counts still land on the right rows
    _, doc = _export(creator_id="creator-001", format="parquet", columns=["chunk_count", "created_at"])
    subset = pq.read_table(io.BytesIO(lib.store.get(doc["output"]["path"])))
    assert subset.column_names == ["chunk_count", "created_at"]
    with lib.engine.connect() as conn:
        expected = [n for _id, n in conn.execute(text(
            "SELECT v.id, (SELECT count(*) FROM video_chunks c WHERE c.video_id = v.id) FROM videos v "
            "WHERE v.creator_id = 'creator-001' ORDER BY v.id"))]
    assert subset.column("chunk_count").to_pylist() == expected and any(expected)


def test_sqlite_id_walk_plans_the_same_ranges_as_the_window_query(sqlite_library):
    from videolib.export import ExportFilter
    from videolib.export.plan import _sqlite_ranges, _window_ranges

    lib = sqlite_library
    lib.seed(57, creators=2)
    some = lib.ids("creator-001")[:5]
    with lib.engine.begin() as conn:  # tombstones are left out of both
        conn.execute(update(Video).where(Video.id.in_(some[:2])).values(status="deleting"))
        conn.execute(update(Video).where(Video.id.in_(some[2:])).values(status="failed"))
    for flt in (ExportFilter(), ExportFilter(status="failed")):
        with lib.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(Video).where(
                Video.creator_id == "creator-001", *flt.clauses())).scalar_one()
        for size in (1, 2, 7, 10, total, 100):
            walked = _sqlite_ranges(lib.engine, "creator-001", flt, size, total)
            windowed = _window_ranges(lib.engine, "creator-001", flt, size, total)
            assert walked == windowed and len(walked) == -(-total // size), (flt, size)


def test_ids_foreign_and_unknown_are_per_item(sqlite_library):
    lib = sqlite_library
    lib.seed(30, creators=2)
    mine = lib.ids("creator-001")[:5]
    theirs = lib.ids("creator-002")[:2]
    state, doc = _export(creator_id="creator-001", format="parquet",
                         video_ids=mine + theirs + ["nope", str(uuid.uuid4()), mine[0]])
    assert state.name == "Partial" and doc["status"] == "partial"
    assert (doc["requested"], doc["succeeded"], doc["failed"]) == (9, 5, 4)
    assert {e["error"] for e in doc["errors"]} == {"not_found", "invalid_id"}
    table = pq.read_table(io.BytesIO(lib.store.get(doc["output"]["path"])))
    assert sorted(table.column("id").to_pylist()) == sorted(mine)


def test_filters(sqlite_library):
    lib = sqlite_library
    lib.seed(200, creators=1)
    videos, _ = _db_rows(lib, "creator-001")
    cut = sorted(v.created_at for v in videos)[100]
    _, doc = _export(creator_id="creator-001", format="parquet", status="ready", created_after=cut)
    table = pq.read_table(io.BytesIO(lib.store.get(doc["output"]["path"])))
    expected = sorted(v.id for v in videos if v.status == "ready" and _utc(v.created_at) >= _utc(cut))
    assert sorted(table.column("id").to_pylist()) == expected and expected


@pytest.mark.parametrize(
    "params, words",
    [({"format": "xlsx"}, "'parquet' or 'csv'"), ({"created_after": "yesterday"}, "created_after"),
     ({"columns": ["id", "password"]}, "columns"),
     ({"status": "deleted"}, "status"), ({"creator_id": "../x"}, "creator_id"),
     ({"video_ids": ["0f8fad5b-d9cb-469f-a165-70867728950e"], "all_videos": True}, "not both")],
)
def test_bad_requests_refused_touching_nothing(sqlite_library, params, words):
    lib = sqlite_library
    lib.seed(10, creators=1)
    state, doc = _export(**{"creator_id": "creator-001", "format": "parquet", **params})
    assert state.is_failed()
    # Refused by the flow or, before it ran, by Prefect's check of the parameters (the
    # UI shows the choices): either way a result document says why.
    assert doc["status"] == "failed" and words in doc["message"], doc
    assert (doc["requested"], doc["succeeded"], doc["failed"], doc["skipped"], doc["output"]) == (0, 0, 0, 0, None)
    assert lib.store.list_keys("exports") == []


@pytest.mark.parametrize("selection", [{}, {"all_videos": True}, {"video_ids": []}])
def test_no_selection_all_videos_and_an_empty_list_all_export_every_video(sqlite_library, selection):
    """CONTRACT.md: no selection means all of the creator's videos. The UI's list field
    sends [] when left empty, and `all_videos` is there as in the other flows."""
    lib = sqlite_library
    lib.seed(12, creators=2)
    state, doc = _export(creator_id="creator-001", format="parquet", **selection)
    assert state.is_completed(), doc
    table = pq.read_table(io.BytesIO(lib.store.get(doc["output"]["path"])))
    assert sorted(table.column("id").to_pylist()) == sorted(lib.ids("creator-001"))
    assert doc["requested"] == doc["succeeded"] == len(lib.ids("creator-001"))


def test_quota_refuses_and_writes_nothing(sqlite_library, monkeypatch):
    from config import get_settings

    lib = sqlite_library
    lib.seed(50, creators=1)
    monkeypatch.setenv("BULKOPS_EXPORT_QUOTA_BYTES", "1000")
    get_settings.cache_clear()
    state, doc = _export(creator_id="creator-001", format="csv")
    assert state.is_failed() and "quota" in doc["message"] and doc["output"] is None
    assert lib.store.list_keys("exports") == []
    # Nothing was started: the selection counts as skipped, and the counts still add up.
    assert (doc["status"], doc["requested"], doc["succeeded"], doc["failed"], doc["skipped"]) == (
        "failed", 50, 0, 0, 50)


def test_postgres_and_s3_presigned_download(pg_url, s3_server, s3_prefix, monkeypatch, tmp_path):
    from tests.conftest import _make_library

    lib = _make_library(monkeypatch, tmp_path, pg_url, s3_prefix, s3_server.endpoint_url)
    lib.seed(80, creators=2)
    _awkward(lib, "creator-001")
    _, doc = _export(creator_id="creator-001", format="parquet", batch_size=100)
    out = doc["output"]
    with urllib.request.urlopen(out["url"], timeout=30) as response:
        body = response.read()
    assert body == lib.store.get(out["path"]) and len(body) == out["bytes"]
    videos, counts = _db_rows(lib, "creator-001")
    rows = pq.read_table(io.BytesIO(body)).to_pylist()
    assert [r["id"] for r in rows] == [v.id for v in videos]
    for row, video in zip(rows, videos, strict=True):
        assert row["title"] == video.title and row["created_at"] == video.created_at
        assert row["chunk_count"] == counts.get(video.id, 0)
    _, doc = _export(creator_id="creator-001", format="csv", formula_guard=False)
    text = lib.store.get(doc["output"]["path"]).decode()
    assert len(list(csv.DictReader(io.StringIO(text, newline="")))) == len(videos)
    assert lib.store.list_keys(f"exports/creator-001/{doc['operation_id']}.parts") == []


MEMORY_SCRIPT = r"""
import json, os, resource, sys
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
from flows.bulk_export import bulk_export
import pyarrow, polars, pyarrow.parquet  # noqa: F401  (imports before the baseline)
from prefect.testing.utilities import prefect_test_harness
from videolib.export.sqlite_arrow import HELPER_RSS_KB
with prefect_test_harness(server_startup_timeout=120):
    bulk_export(creator_id="creator-001", format=sys.argv[1], columns=["id"], batch_size=1000)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    HELPER_RSS_KB.clear()
    state = bulk_export(creator_id="creator-001", format=sys.argv[1], return_state=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# the SQLite reader processes' memory is the export's too: each one's growth over its imports
helpers = sum(p - a for a, p in HELPER_RSS_KB.values())
print(json.dumps({"base_kb": base, "peak_kb": peak + helpers, "helpers": len(HELPER_RSS_KB), "ok": state.is_completed()}))
"""


@pytest.mark.slow  # 200k rows seeded and exported in a child process: ~40 s
def test_memory_of_a_200k_row_export_stays_bounded(sqlite_library):
    """Peak RSS growth of a 200k-row export, measured in its own process (a memory bound, not time)."""
    from videolib.seed import seed_library

    lib = sqlite_library
    seed_library(lib.engine, None, None, videos=200_000, creators=1, seed=9, chunks_per_video=1, transcript_ratio=0.2)
    env = dict(os.environ, **lib.env(), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "parquet"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["helpers"] >= 1  # the reader processes were measured
    growth_mb = (result["peak_kb"] - result["base_kb"]) / 1024
    print(f"200k-row export: base {result['base_kb'] // 1024} MB, peak RSS growth {growth_mb:.0f} MB")
    assert growth_mb <= 350, f"peak RSS grew by {growth_mb:.0f} MB"


def test_export_then_delete_in_one_process_keeps_sqlite_intact(sqlite_library):
    """Regression: a second copy of SQLite in the process (ADBC's bundled one) that opens
    and closes the same WAL database deletes the WAL under the other connections and
    corrupts the file (sqlite.org/howtocorrupt.html, section 2.2.1)."""
    from sqlalchemy import text

    from flows.bulk_delete import bulk_delete

    lib = sqlite_library
    lib.seed(300, creators=1)
    ids = lib.ids("creator-001")
    for fmt in ("parquet", "csv"):
        state, _ = _export(creator_id="creator-001", format=fmt, batch_size=100)
        assert state.is_completed()
    state = bulk_delete(creator_id="creator-001", video_ids=ids, batch_size=50, return_state=True)
    assert state.is_completed(), state.message
    with lib.engine.connect() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
    assert lib.ids("creator-001") == []


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_broken_writer_fails_the_run_and_leaves_no_file_or_parts(sqlite_library, monkeypatch, fmt):
    import flows.bulk_export as module

    lib = sqlite_library
    lib.seed(400, creators=1, files=False)
    name = "read_part" if fmt == "parquet" else "copy_csv_part"  # how the writer reads a part back
    real = getattr(module, name)
    calls = []

    def failing(store, key):
        calls.append(key)
        if len(calls) == 2:
            raise OSError("injected: storage went away while merging")
        return real(store, key)

    monkeypatch.setattr(module, name, failing)
    state, doc = _export(creator_id="creator-001", format=fmt, batch_size=100)
    assert state.is_failed()
    assert len(calls) == 2
    assert "injected" in doc["message"] and doc["output"] is None
    assert lib.store.list_keys("exports") == [], "no half export, no leftover parts"
    assert doc["status"] == "failed" and doc["requested"] == 400
    assert doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"]


@pytest.mark.parametrize("workers", [1, 8])
def test_planned_ranges_cover_the_selection_once_without_tombstones(library, workers):
    """Keyset planning (a window query; the last range open-ended): every selected id is read
    by exactly one batch, in order; tombstones ('deleting') and filtered-out rows by none."""
    from videolib.export import ExportFilter, plan_export_batches, read_batch

    library.seed(130, creators=2, files=False)
    with Session(library.engine) as session:
        ids = list(session.scalars(select(Video.id).where(Video.creator_id == "creator-001").order_by(Video.id)))
    with library.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id.in_([ids[0], ids[7], ids[-1]])).values(status="deleting"))
    wanted = [v for v in ids if v not in {ids[0], ids[7], ids[-1]}]
    for flt, expected in ((ExportFilter(), wanted), (ExportFilter(status="ready"), None)):
        if expected is None:
            with Session(library.engine) as session:
                expected = list(session.scalars(select(Video.id).where(
                    Video.creator_id == "creator-001", Video.status == "ready").order_by(Video.id)))
        batches = plan_export_batches(library.engine, "creator-001", flt, batch_rows=10, max_batches=300,
                                      workers=workers)
        assert batches[-1].hi is None and all(b.hi is not None for b in batches[:-1])
        assert sum(b.rows for b in batches) == len(expected)
        read = [v for b in batches for rb in read_batch(library.engine, "creator-001", ["id"], b, flt)
                for v in rb.column("id").to_pylist()]
        assert read == expected


def test_chunk_counts_of_dense_and_sparse_ranges_are_the_creators(library):
    """A range batch counts chunks either by one walk over the range's chunks ('dense': the
    creator owns most of the table) or per video; both give exactly the creator's counts,
    even when the range holds other creators' videos. Planning picks the walk only when
    the selection is at least half of the table."""
    from dataclasses import replace

    from videolib.export import ExportFilter, plan_export_batches, read_batch

    def analyze() -> None:
        if library.engine.dialect.name == "postgresql":
            with library.engine.begin() as conn:
                conn.execute(text("ANALYZE videos"))  # the planner's row estimate (pg_class.reltuples)

    def expected(creator: str) -> dict[str, int]:
        with library.engine.connect() as conn:
            return dict(conn.execute(text(
                "SELECT v.id, count(c.id) FROM videos v LEFT JOIN video_chunks c ON c.video_id = v.id "
                "WHERE v.creator_id = :c GROUP BY v.id"), {"c": creator}).all())

    def plan(creator: str):
        return plan_export_batches(library.engine, creator, ExportFilter(), batch_rows=100, max_batches=300, workers=2)

    def counted(creator: str, batches) -> dict[str, int]:
        return {v: n for b in batches for rb in read_batch(library.engine, creator, ["id", "chunk_count"], b,
                                                           ExportFilter())
                for v, n in zip(rb.column("id").to_pylist(), rb.column("chunk_count").to_pylist(), strict=True)}

    library.seed(30, creators=1, seed=1, chunks_per_video=3, transcript_ratio=0.7, files=False)
    analyze()
    batches = plan("creator-001")
    assert batches and all(b.dense for b in batches), "the creator's videos are the whole table"
    assert counted("creator-001", batches) == expected("creator-001")

    library.seed(60, creators=3, seed=2, chunks_per_video=3, transcript_ratio=0.7, files=False)
    analyze()
    batches = plan("creator-002")  # 20 of 90 videos
    assert batches and not any(b.dense for b in batches), "a small share of the table: one probe per video"
    want = expected("creator-002")
    assert any(want.values()) and not all(want.values())  # some videos have no chunks
    for dense in (False, True):  # the walk also meets other creators' videos in the range
        assert counted("creator-002", [replace(b, dense=dense) for b in batches]) == want, f"dense={dense}"


def test_sqlite_chunk_counts_of_a_range_read_only_the_creators_videos(sqlite_library):
    """A range of one creator's ids spans other creators' videos: the counts start from
    the creator's own videos (its index), never from a walk over every chunk in the range."""
    from videolib.export import ExportBatch
    from videolib.export.readers import _chunk_count_sql

    lib = sqlite_library
    lib.seed(60, creators=3, chunks_per_video=3, transcript_ratio=1.0)
    mine = sorted(lib.ids("creator-002"))
    sql, params = _chunk_count_sql(ExportBatch(lo=mine[0], hi=mine[-1], rows=len(mine)), "creator-002")
    with lib.engine.connect() as conn:
        plan = " | ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, tuple(params)))
        counted = dict(conn.exec_driver_sql(sql, tuple(params)).all())
        expected = dict(conn.execute(text(
            "SELECT c.video_id, count(*) FROM video_chunks c JOIN videos v ON v.id = c.video_id "
            "WHERE v.creator_id = 'creator-002' GROUP BY c.video_id")).all())
    assert plan.startswith("SEARCH v USING COVERING INDEX ix_videos_creator_id (creator_id=?"), plan
    assert counted == expected and set(counted) <= set(mine) and expected


def test_postgres_reads_reuse_idle_connections_and_replace_dropped_ones(pg_library, monkeypatch):
    """ADBC connections to PostgreSQL are kept idle for the next read (a new one loads the
    server's type catalog), never idle inside a transaction; one the server dropped is
    replaced, not used; disposing of the engine closes them."""
    import videolib.export.readers as export
    from videolib.export import ExportBatch, ExportFilter, read_batch

    lib = pg_library
    lib.seed(30, creators=1, files=False)
    ids = lib.ids("creator-001")
    engine = lib.engine
    monkeypatch.setattr(export, "_pg_slots", threading.BoundedSemaphore(1))  # one read at a time
    opened: list[str] = []
    original = export._adbc_postgres
    monkeypatch.setattr(export, "_adbc_postgres", lambda url: opened.append(url) or original(url))

    def read(part):
        batch = ExportBatch(ids=part, rows=len(part))
        return sorted(v for b in read_batch(engine, "creator-001", ["id"], batch, ExportFilter())
                      for v in b.column("id").to_pylist())

    def bulkops_backends(state=None):
        with engine.connect() as conn:
            query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND pid <> pg_backend_pid()" + (" AND state = :state" if state else ""))
            return conn.execute(text(query), {"state": state} if state else {}).scalar_one()

    engine.dispose()  # only the reader's connections remain to be seen
    assert read(ids[:10]) == sorted(ids[:10])
    assert read(ids[10:]) == sorted(ids[10:])
    assert len(opened) == 1  # the second read reused the first one's connection
    assert bulkops_backends("idle in transaction") == 0
    # The server drops it (a restart, an idle timeout): the next read opens a new one.
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    assert read(ids) == sorted(ids)
    assert len(opened) == 2
    # An abandoned read closes its connection instead of keeping it.
    batches = read_batch(engine, "creator-001", ["id"], ExportBatch(ids=ids, rows=len(ids)), ExportFilter())
    next(batches)
    assert not export._pg_slots.acquire(blocking=False)  # the read holds the one slot
    batches.close()
    assert export._pg_slots.acquire(blocking=False)  # and gave it back
    export._pg_slots.release()
    assert len(export._pg_idle.get(engine.url.render_as_string(hide_password=False), [])) == 0
    assert read(ids[:5]) == sorted(ids[:5]) and len(opened) == 3
    engine.dispose()
    assert bulkops_backends() == 0


@pytest.mark.parametrize("where", ["sqlite_library", "s3_library"])
def test_an_export_file_appears_under_its_name_only_complete(request, where):
    """Written under a staging name, published by close(); abort leaves nothing at all."""
    import pyarrow as pa

    from videolib.export import ExportWriter, schema_for

    store = request.getfixturevalue(where).store
    schema = schema_for(["id", "title"])
    batch = pa.RecordBatch.from_pylist([{"id": f"v{i}", "title": "t"} for i in range(10)], schema=schema)
    for fmt in ("parquet", "csv"):
        key = f"exports/creator-001/{uuid.uuid4()}.{fmt}"
        writer = ExportWriter(store, key, fmt, schema).open()
        writer.write(batch)
        assert not store.exists(key), "half an export must not be visible under its name"
        writer.close()
        assert store.exists(key) and store.list_keys("exports/creator-001") == [key]
        store.delete(key)
        broken = ExportWriter(store, key, fmt, schema).open()
        broken.write(batch)
        broken.abort()
        assert store.list_keys("exports") == []


def test_an_export_clears_what_killed_exports_left_and_nothing_live(library):
    """Part files and unfinished files of runs that are over (their run final, or nothing of
    them changed for LEFTOVER_IDLE_S) are removed by the next export of the creator; a run
    still writing is left alone, and none of it counts against the quota."""
    import time as clock

    from flows.bulk_export import LEFTOVER_IDLE_S

    lib = library
    lib.seed(20, creators=1)
    store = lib.store
    _, first = _export(creator_id="creator-001", format="csv")  # a finished run: its id is final in Prefect
    idle, live = str(uuid.uuid4()), str(uuid.uuid4())
    leftovers = {
        first["operation_id"]: [f"exports/creator-001/{first['operation_id']}.parts/part-00003.arrow"],
        idle: [f"exports/creator-001/{idle}.parts/part-00000.arrow", f"exports/creator-001/.{idle}.parquet.partial"],
        live: [f"exports/creator-001/{live}.parts/part-00001.csv", f"exports/creator-001/.{live}.csv.partial"],
    }
    for keys in leftovers.values():
        for key in keys:
            store.put(key, b"x" * 1000)
    old = clock.time() - LEFTOVER_IDLE_S - 60
    for key in leftovers[idle]:
        os.utime(store.path(key), (old, old))
    _, second = _export(creator_id="creator-001", format="parquet")
    assert second["status"] == "completed"
    remaining = set(store.list_keys("exports/creator-001"))
    assert remaining == {first["output"]["path"], second["output"]["path"], *leftovers[live]}
    from videolib.export import used_export_bytes

    assert used_export_bytes(store, "creator-001") == first["output"]["bytes"] + second["output"]["bytes"]


def test_postgres_reads_a_batch_of_listed_ids_as_one_array_parameter_in_id_order(pg_library, monkeypatch):
    """A manifest's batch lists up to 20,000 ids: PostgreSQL gets them as one text[]
    parameter (one IN list of 20,000 parameters is slow to bind and plan, and was a scan
    of the whole table at 1M): the batch's rows in id order, chunk counts and filters
    applied, foreign and unknown ids matching nothing."""
    import random

    import videolib.export.readers as export
    from videolib.export import ExportBatch, ExportFilter, read_batch

    lib = pg_library
    lib.seed(40, creators=2, transcript_ratio=1.0, files=False)
    ids = lib.ids("creator-001")
    listed = random.Random(7).sample(ids, len(ids))  # manifest order, not id order
    columns = ["id", "title", "chunk_count"]
    queries: list[list] = []
    original = export._sql

    def spy(*args, **kwargs):
        sql, params = original(*args, **kwargs)
        queries.append(params)
        return sql, params

    monkeypatch.setattr(export, "_sql", spy)

    def read(batch_ids, flt=ExportFilter()):
        rows = []
        for record_batch in read_batch(lib.engine, "creator-001", columns,
                                       ExportBatch(ids=batch_ids, rows=len(batch_ids)), flt):
            rows.extend(record_batch.to_pylist())
        return rows

    rows = read(listed)
    assert [r["id"] for r in rows] == sorted(ids)
    assert len(queries) == 1 and queries[0] == ["creator-001", sorted(ids)]  # the creator, then one array
    with lib.engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT video_id, count(*) FROM video_chunks GROUP BY video_id")).all())
        titles = dict(conn.execute(select(Video.id, Video.title)).all())
        ready = set(conn.execute(select(Video.id).where(Video.creator_id == "creator-001",
                                                        Video.status == "ready")).scalars())
    assert [r["chunk_count"] for r in rows] == [counts.get(r["id"], 0) for r in rows]
    assert any(r["chunk_count"] for r in rows)
    assert all(r["title"] == titles[r["id"]] for r in rows)
    # Another creator's ids and unknown ones match nothing; a filter holds.
    theirs = lib.ids("creator-002")[:5]
    assert [r["id"] for r in read(theirs + ["0b0b0b0b-0000-4000-8000-000000000000", listed[0]])] == [listed[0]]
    assert 0 < len(ready) < len(ids)
    assert [r["id"] for r in read(listed, ExportFilter(status="ready"))] == sorted(ready)
