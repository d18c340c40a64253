"""Export a creator's video metadata to one Parquet or CSV file in storage, streaming.

Rows leave the database as Arrow record batches (ADBC drivers for SQLite and
PostgreSQL), one batch range per task, and each task writes its rows as a part file.
One writer then streams the parts, in order, into the single file the user downloads.
Memory holds one part's record batch and one row group at a time, whatever the
library's size.

- Parquet: the parts are Arrow IPC (cheap: no compression, no encoding) and the writer
  encodes them once, into a pyarrow ``ParquetWriter`` (zstd, row groups of ~64k rows).
  Encoding every part as Parquet and merging would encode twice: Parquet row groups
  cannot be appended as bytes.
- CSV: each task encodes its own part as CSV (formula guard applied, no header), so
  the encoding runs in parallel with the reads; the writer writes the header and
  appends the parts' bytes. CSV concatenates.

Why parts + one writer: the database reads run in parallel, the file's order does not
depend on which task finished first, and the user downloads one file.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, event, func, or_, select, text
from sqlalchemy.engine import make_url

from videolib.db.models import VIDEO_STATUSES, Video
from videolib.db.types import parse_timestamp as parse_stored_timestamp
from videolib.db.types import sqlite_text, to_utc
from videolib.ids import RequestError
from videolib.operation import BAD_VALUE, ItemError, effective_batch_size, plan_batches
from videolib.report import FORMULA_PREFIXES
from videolib.selection import chunked
from videolib.sqlite_arrow import (
    ReaderPool,
    held_pool,
    null_safe_select,
    pool_for,
    restore_nulls,
)
from videolib.storage import STAGING_SUFFIX, ObjectStore

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
TS = pa.timestamp("us", tz="UTC")

# name -> (SQL expression over ``v`` (videos), Arrow type). Only these names ever
# reach SQL: user input selects from this table, it is never interpolated.
EXPORT_COLUMNS: dict[str, tuple[str, pa.DataType]] = {
    "id": ("v.id", pa.string()),
    "title": ("v.title", pa.string()),
    "description": ("v.description", pa.string()),
    "status": ("v.status", pa.string()),
    "duration_s": ("v.duration_s", pa.float64()),
    "size_bytes": ("v.size_bytes", pa.int64()),
    "created_at": ("v.created_at", TS),
    "updated_at": ("v.updated_at", TS),
    "storage_key": ("v.storage_key", pa.string()),
    "thumbnail_key": ("v.thumbnail_key", pa.string()),
    "has_transcript": (
        "CASE WHEN v.transcript IS NOT NULL AND v.transcript <> '' THEN 1 ELSE 0 END",
        pa.bool_(),
    ),
    "chunk_count": ("(SELECT count(*) FROM video_chunks c WHERE c.video_id = v.id)", pa.int64()),
    "embedded_at": ("v.embedded_at", TS),
}
# PostgreSQL compresses and moves long transcripts out of the row (TOAST): comparing one
# with '' decompresses it, octet_length reads its stored size. 200k rows: see
# benchmarks/README.md (export).
_POSTGRES_COLUMNS = {"has_transcript": "CASE WHEN octet_length(v.transcript) > 0 THEN 1 ELSE 0 END"}
DEFAULT_COLUMNS = tuple(EXPORT_COLUMNS)
# What `status` may filter on: any status but the tombstones', which no export reads.
FILTER_STATUSES = tuple(s for s in VIDEO_STATUSES if s != "deleting")
ROW_GROUP_ROWS = 64 * 1024


def export_key(creator_id: str, operation_id: str, fmt: str) -> str:
    return f"exports/{creator_id}/{operation_id}.{fmt}"


def parts_prefix(creator_id: str, operation_id: str) -> str:
    return f"exports/{creator_id}/{operation_id}.parts"


def part_key(creator_id: str, operation_id: str, index: int, fmt: str = "parquet") -> str:
    """Batch ``index``'s part file: Arrow IPC for a Parquet export, CSV text for CSV."""
    return f"{parts_prefix(creator_id, operation_id)}/part-{index:05d}.{'csv' if fmt == 'csv' else 'arrow'}"


def check_format(fmt: object) -> str:
    if fmt not in FORMATS:
        raise RequestError("unknown_format", f"`format` must be 'parquet' or 'csv', got {str(fmt)[:40]!r}")
    return fmt  # type: ignore[return-value]


def resolve_columns(columns: Sequence[str] | None) -> list[str]:
    """The requested columns in the order given (default: all), or ``unknown_column``."""
    if not columns:
        return list(DEFAULT_COLUMNS)
    chosen: list[str] = []
    for name in columns:
        name = name.strip() if isinstance(name, str) else name
        if name not in EXPORT_COLUMNS:
            raise RequestError(
                "unknown_column",
                f"unknown column {str(name)[:40]!r}; choose from {', '.join(DEFAULT_COLUMNS)}",
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def schema_for(columns: Sequence[str]) -> pa.Schema:
    return pa.schema([(name, EXPORT_COLUMNS[name][1]) for name in columns])


@dataclass(frozen=True)
class ExportFilter:
    """Which of the creator's videos: optionally one status and a created_at window."""

    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in FILTER_STATUSES:
            raise RequestError(
                "bad_filter", f"`status` must be one of {', '.join(FILTER_STATUSES)}; got {str(self.status)[:40]!r}"
            )
        for name in ("created_after", "created_before"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        if self.created_after and self.created_before and self.created_after >= self.created_before:
            raise RequestError("bad_filter", "`created_after` must be earlier than `created_before`")

    def clauses(self):
        out = [Video.status != "deleting"]
        if self.status:
            out.append(Video.status == self.status)
        if self.created_after:
            out.append(Video.created_at >= self.created_after)
        if self.created_before:
            out.append(Video.created_at < self.created_before)
        return out


def parse_timestamp(value: str, *, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise RequestError("bad_filter", f"`{name}` must be an ISO 8601 date or time, got {str(value)[:40]!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class ExportBatch:
    """One task's share: explicit ids, or an inclusive id range under the filter
    (``hi`` None: no upper bound)."""

    ids: list[str] | None = None
    lo: str | None = None
    hi: str | None = None
    rows: int = 0
    # The creator holds most of the table's videos (so most ids in any range): a range
    # batch then counts chunks in one walk of the chunk index over its id range, where a
    # probe per video costs more (see ``DENSE_SHARE``).
    dense: bool = False


def plan_export_batches(
    engine: Engine, creator_id: str, flt: ExportFilter, *, batch_rows: int, max_batches: int,
    ids: Sequence[str] | None = None, workers: int = 1,
) -> list[ExportBatch]:
    """Cut the selection into batches; filter selections become id ranges (keyset),
    whose edges come from a window query (PostgreSQL) or an id walk in a reader process
    (SQLite). The last range is open-ended."""
    if ids is not None:
        return [ExportBatch(ids=list(b), rows=len(b))
                for b in plan_batches(ids, batch_size=batch_rows, max_batches=max_batches, workers=workers)]
    with small_cache_connection(engine) as conn:
        total = conn.execute(
            select(func.count()).select_from(Video).where(Video.creator_id == creator_id, *flt.clauses())
        ).scalar_one()
        table_rows = _table_rows(conn) if total else None
    if total == 0:
        return []
    size = effective_batch_size(total, batch_rows, max_batches, workers=workers)
    if engine.dialect.name == "sqlite":
        batches = _sqlite_ranges(engine, creator_id, flt, size, total)
    else:
        batches = _window_ranges(engine, creator_id, flt, size, total)
    if batches and batches[-1].hi is not None:
        batches[-1].hi = None  # open-ended: rows added since the count are not left out
    dense = table_rows is not None and total >= DENSE_SHARE * table_rows
    for batch in batches:
        batch.dense = dense
    return batches


# Chunk counts of a range batch. Probing the chunk index once per video costs ~4.3 us a
# video on PostgreSQL here; walking the index over the batch's id range (and merging the
# grouped counts with the rows) ~2 us per video *in the range*, the creator's or not
# (200k videos, one creator: 181 ms against 124 ms a 25k batch, 74 ms without counts).
# UUIDs spread every creator over the whole id space, so the walk pays off when the
# selection is about half the table or more: the one-creator library, a platform's
# biggest creator. A creator with a few videos in a big library gets the probes.
DENSE_SHARE = 0.5


def _table_rows(conn: Connection) -> float | None:
    """A cheap estimate of the videos table's row count (None: unknown)."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'videos'::regclass")).scalar()
    else:  # rowids only grow: an upper bound, one b-tree descent
        rows = conn.execute(text("SELECT max(rowid) FROM videos")).scalar()
    return float(rows) if rows is not None and rows > 0 else None


def _window_ranges(engine: Engine, creator_id: str, flt: ExportFilter, size: int, total: int) -> list[ExportBatch]:
    """Range edges from a window query: the database numbers the selected ids in order and
    returns only each range's first and last id, instead of every id travelling to
    Python to be counted off (0.5 of 3 s for 200k rows on PostgreSQL)."""
    if flt == ExportFilter():
        # All of the creator's videos but tombstones. Said as `id NOT IN (the creator's
        # 'deleting' ids)` rather than `status <> 'deleting'`, the walk reads the
        # (creator_id, id) index alone; the status test visited every row of the table in
        # id order (random pages: 9.9 of a 1M-row export's 31 s on SQLite).
        deleting = select(Video.id).where(Video.creator_id == creator_id, Video.status == "deleting")
        where = [Video.creator_id == creator_id, Video.id.not_in(deleting)]
    else:
        where = [Video.creator_id == creator_id, *flt.clauses()]
    numbered = select(Video.id.label("id"), (func.row_number().over(order_by=Video.id) - 1).label("rn")).where(
        *where).subquery()
    edges = (
        select(numbered.c.id, numbered.c.rn)
        .where(or_(numbered.c.rn % size == 0, numbered.c.rn % size == size - 1))
        .order_by(numbered.c.rn)
    )
    with small_cache_connection(engine) as conn:
        return _ranges_from_edges(((rn, vid) for vid, rn in conn.execute(edges)), size, total)


def _ranges_from_edges(edges: Iterable[tuple[int, str]], size: int, total: int) -> list[ExportBatch]:
    """Ranges from ``(position, id)`` pairs, in order, of every range's first and last id."""
    batches: list[ExportBatch] = []
    for rn, vid in edges:
        if rn % size == 0:
            batches.append(ExportBatch(lo=vid, hi=None, rows=max(min(size, total - rn), 1)))
        if rn % size == size - 1 and batches:
            batches[-1].hi = vid
    return batches


def _sqlite_ranges(engine: Engine, creator_id: str, flt: ExportFilter, size: int, total: int) -> list[ExportBatch]:
    """Range edges on SQLite: a reader process walks the selected ids (Arrow, outside
    our GIL) and we keep each range's first and last. 1M ids: 0.27 s, where SQLite's
    window query took 0.9 s."""
    if flt == ExportFilter():  # the (creator_id, id) index alone; see _window_ranges
        where = ["v.creator_id = ?", "v.id NOT IN (SELECT id FROM videos WHERE creator_id = ? AND status = 'deleting')"]
        params: list[object] = [creator_id, creator_id]
    else:
        where, params = _where(ExportBatch(lo=""), flt, "?", creator_id)
    sql = f"SELECT v.id AS id FROM videos v WHERE {' AND '.join(where)} ORDER BY v.id"

    def edges() -> Iterator[tuple[int, str]]:
        position = 0  # of the record batch's first id in the whole selection
        for record_batch in sqlite_readers(engine).query(sql, params):
            ids = record_batch.column(0)
            starts = range((-position) % size, len(ids), size)
            ends = range((size - 1 - position) % size, len(ids), size)
            for i in sorted({*starts, *ends}):
                yield position + i, ids[i].as_py()
            position += len(ids)

    return _ranges_from_edges(edges(), size, total)


# Exports read every row once, in id order: a big page cache buys nothing, and SQLite
# keeps a pooled connection's cache. With the engine's 64 MiB per connection, 8 reader
# threads (and the planning scan) held ~500 MB of a 1M-row export's ~690 MB peak.
EXPORT_SQLITE_CACHE_KIB = 2048


@contextmanager
def small_cache_connection(engine: Engine) -> Iterator[Connection]:
    """``engine.connect()`` with a small SQLite page cache while it is used (restored after)."""
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            yield conn
            return
        previous = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        conn.exec_driver_sql(f"PRAGMA cache_size=-{EXPORT_SQLITE_CACHE_KIB}")
        try:
            yield conn
        finally:
            conn.exec_driver_sql(f"PRAGMA cache_size={int(previous)}")


def _adbc_postgres(database_url: str):
    import adbc_driver_postgresql.dbapi as adbc

    url = make_url(database_url).set(drivername="postgresql")
    # Autocommit: each read is one statement; a reused connection must not sit idle
    # in a transaction between reads (holding its locks and its snapshot).
    return adbc.connect(url.render_as_string(hide_password=False), autocommit=True)


# Idle ADBC PostgreSQL connections, by database URL, reused by the next read. A new
# one costs ~40 ms here (the driver loads the server's type catalog on connect), and
# every read task opened its own: 11 % of a 200k-row CSV export's samples.
PG_IDLE_MAX = 8
# Reads from PostgreSQL at once in this process; the other read tasks wait for a slot.
# The client decodes every row (and a new connection costs ~33 ms of client CPU), so
# more streams than cores only compete: a 200k-row export, fresh connections, 2 cores:
# CSV 1.86-1.93 s with 8 streams, 1.72-1.82 with 4, 1.65-1.79 with 3, 1.65-1.77 with 2.
PG_READERS = max(2, os.cpu_count() or 2)
_pg_slots = threading.BoundedSemaphore(PG_READERS)
_pg_idle: dict[str, list] = {}
_pg_idle_lock = threading.Lock()
_pg_watched: weakref.WeakSet[Engine] = weakref.WeakSet()


def _idle_pg_connection(url: str):
    """An idle connection to ``url`` that still answers, or None."""
    while True:
        with _pg_idle_lock:
            if not _pg_idle.get(url):
                return None
            conn = _pg_idle[url].pop()
        try:  # the server may have closed it (restart, idle timeout, dropped database)
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchall()
            return conn
        except Exception:  # noqa: BLE001 - any failure: drop it, try the next
            with contextlib.suppress(Exception):
                conn.close()


def close_idle_pg_connections(database_url: str | None = None) -> None:
    """Close the idle ADBC connections (of one database, or all)."""
    with _pg_idle_lock:
        keys = [database_url] if database_url is not None else list(_pg_idle)
        idle = [conn for key in keys for conn in _pg_idle.pop(key, [])]
    for conn in idle:
        try:
            conn.close()
        except Exception:  # a connection the server dropped: nothing to close
            log.debug("closing an idle ADBC connection failed", exc_info=True)


atexit.register(close_idle_pg_connections)  # a clean goodbye to the server, not a dropped socket


@contextmanager
def pg_connection(engine: Engine):
    """An ADBC connection to the engine's PostgreSQL database, in one of ``PG_READERS``
    slots (waits for a free one): an idle connection that still answers, or a new one.
    Returned to the idle list when the block ends normally; closed when it raised (or
    the reader was abandoned mid-result). The idle ones close with the engine
    (``Engine.dispose``)."""
    with _pg_slots, _pg_connection(engine) as conn:
        yield conn


@contextmanager
def _pg_connection(engine: Engine):
    url = engine.url.render_as_string(hide_password=False)
    if engine not in _pg_watched:
        _pg_watched.add(engine)
        event.listen(engine, "engine_disposed", lambda _engine: close_idle_pg_connections(url))
    conn = _idle_pg_connection(url) or _adbc_postgres(url)
    returned = False
    try:
        yield conn
        with _pg_idle_lock:
            idle = _pg_idle.setdefault(url, [])
            if len(idle) < PG_IDLE_MAX:
                idle.append(conn)
                returned = True
    finally:
        if not returned:
            conn.close()


def _nullable(name: str) -> bool:
    column = Video.__table__.c.get(name)
    return column is not None and column.nullable and EXPORT_COLUMNS[name][0] == f"v.{name}"


def _where(batch: ExportBatch, flt: ExportFilter, placeholder: str, creator_id: str) -> tuple[list[str], list]:
    """The WHERE terms (over ``v``, the videos) and their parameters of one batch."""
    params: list[object] = [creator_id]

    def p(value: object) -> str:
        params.append(value)
        return "?" if placeholder == "?" else f"${len(params)}"

    where = ["v.creator_id = " + ("?" if placeholder == "?" else "$1"), "v.status <> 'deleting'"]
    if flt.status:
        where.append(f"v.status = {p(flt.status)}")
    for value, op in ((flt.created_after, ">="), (flt.created_before, "<")):
        if value is not None:
            where.append(f"v.created_at {op} {p(_db_timestamp(value, placeholder))}")
    if batch.ids is not None:
        where.append(f"v.id IN ({', '.join(p(i) for i in batch.ids)})")
    else:
        where.append(f"v.id >= {p(batch.lo)}")
        if batch.hi is not None:  # the last range is open-ended
            where.append(f"v.id <= {p(batch.hi)}")
    return where, params


def _sqlite_expression(name: str) -> str:
    expression, arrow_type = EXPORT_COLUMNS[name]
    # A timestamp is read as text whatever a writer stored there (a foreign writer's
    # number would otherwise change the column's type under the driver); conform parses it.
    return f"CAST({expression} AS TEXT)" if pa.types.is_timestamp(arrow_type) else expression


def select_list(columns: Sequence[str], dialect: str, overrides: dict[str, str] | None = None) -> str:
    """The SELECT list of ``columns`` over ``videos v``, as the export reads them
    (PostgreSQL: ``overrides`` replace column expressions)."""
    if dialect == "sqlite":  # through ADBC: no NULLs for its type inference (sqlite_arrow.py)
        return null_safe_select([(c, _sqlite_expression(c), EXPORT_COLUMNS[c][1], _nullable(c)) for c in columns])
    expressions = {**_POSTGRES_COLUMNS, **(overrides or {})}
    return ", ".join(f"{expressions.get(c, EXPORT_COLUMNS[c][0])} AS {c}" for c in columns)


def _sql(columns: Sequence[str], batch: ExportBatch, flt: ExportFilter, placeholder: str, creator_id: str):
    dialect = "sqlite" if placeholder == "?" else "postgresql"
    where, params = _where(batch, flt, placeholder, creator_id)
    source, overrides = "videos v", None
    if dialect == "postgresql" and "chunk_count" in columns and batch.dense and batch.ids is None:
        # Dense range: the counts of every video in the range, grouped in one index walk,
        # merge-joined to the rows (see DENSE_SHARE); other creators' counts join nothing.
        params.append(batch.lo)
        bounds = f"c.video_id >= ${len(params)}"
        if batch.hi is not None:
            params.append(batch.hi)
            bounds += f" AND c.video_id <= ${len(params)}"
        source += (f" LEFT JOIN (SELECT c.video_id, count(*) AS n FROM video_chunks c WHERE {bounds} "
                   "GROUP BY c.video_id) cc ON cc.video_id = v.id")
        overrides = {"chunk_count": "coalesce(cc.n, 0)"}
    sql = f"SELECT {select_list(columns, dialect, overrides)} FROM {source} WHERE {' AND '.join(where)} ORDER BY v.id"
    return sql, params


def _db_timestamp(value: datetime, placeholder: str):
    # SQLite keeps timestamps as canonical UTC text (videolib/db/types.py): compare in that form.
    return sqlite_text(value) if placeholder == "?" else to_utc(value)


def read_batch(engine: Engine, creator_id: str, columns: Sequence[str], batch: ExportBatch,
               flt: ExportFilter, *, errors: list[ItemError] | None = None) -> Iterator[pa.RecordBatch]:
    """The batch's rows as Arrow record batches with the export schema.

    PostgreSQL: the ADBC driver (COPY in Arrow's binary format, no Python objects).
    SQLite: the ADBC driver in helper processes (``videolib/sqlite_arrow.py`` says why
    not in this one). A row with a value that cannot be exported is left out and
    reported in ``errors`` (:func:`conform`).
    """
    schema = schema_for(columns)
    # The id is read even when not exported: it names the rows :func:`conform` leaves out.
    read_columns = list(columns) if "id" in columns else ["id", *columns]
    if engine.dialect.name == "postgresql":
        sql, params = _sql(read_columns, batch, flt, "$", creator_id)
        with pg_connection(engine) as conn:
            cursor = conn.cursor()
            try:
                cursor.execute(sql, params)
                for record_batch in cursor.fetch_record_batch():
                    yield conform(record_batch, schema, errors)
            finally:
                cursor.close()
        return
    # chunk_count: SQLite counts 5.6M chunks of 1M videos in 0.7 s walking the chunk
    # index once per batch range, against 1.9 s for a correlated subquery per row; the
    # counts join the rows here, by id. Both queries run in one read transaction.
    counted = "chunk_count" in columns
    read_columns = [c for c in read_columns if c != "chunk_count"]
    sql, params = _sql(read_columns, batch, flt, "?", creator_id)
    queries = [(sql, params)]
    if counted:
        queries.insert(0, _chunk_count_sql(batch, creator_id))
    counts: list[pa.RecordBatch] = []
    video_ids = counts_n = None
    for index, record_batch in sqlite_readers(engine).results(queries):
        if counted and index == 0:
            counts.append(record_batch)
            continue
        record_batch = restore_nulls(record_batch)
        if counted:
            if video_ids is None:
                video_ids = pa.chunked_array([b.column(0) for b in counts], pa.string())
                counts_n = pa.chunked_array([b.column(1) for b in counts], pa.int64())
            where = pc.index_in(record_batch.column("id"), value_set=video_ids)  # null: no chunks
            n = pc.fill_null(pc.take(counts_n, where), 0).combine_chunks()
            record_batch = record_batch.append_column("chunk_count", n)
        yield conform(record_batch, schema, errors)


def _chunk_count_sql(batch: ExportBatch, creator_id: str) -> tuple[str, list[object]]:
    """Chunk counts of the batch's videos that have chunks.

    A range batch counts only the creator's videos in the range: walking the chunk index
    over the id range instead (0.08 s against 0.11 s for 62k videos of a one-creator
    library) would count every other creator's chunks in between, the whole table's
    for a creator who owns a few videos of a large library."""
    if batch.ids is not None:
        return (f"SELECT video_id, count(*) AS n FROM video_chunks WHERE video_id IN "
                f"({', '.join('?' for _ in batch.ids)}) GROUP BY video_id ORDER BY video_id"), list(batch.ids)
    if batch.dense:  # most ids in the range are the creator's: one walk of the chunk index
        where, params = "video_id >= ?", [batch.lo]
        if batch.hi is not None:
            where += " AND video_id <= ?"
            params.append(batch.hi)
        return f"SELECT video_id, count(*) AS n FROM video_chunks WHERE {where} GROUP BY video_id ORDER BY video_id", params
    where, params = "v.creator_id = ? AND v.id >= ?", [creator_id, batch.lo]
    if batch.hi is not None:
        where += " AND v.id <= ?"
        params.append(batch.hi)
    return (f"SELECT v.id AS video_id, count(*) AS n FROM videos v JOIN video_chunks c ON c.video_id = v.id "
            f"WHERE {where} GROUP BY v.id ORDER BY v.id"), params


# SQLite reader processes per exporting process: one per core. Each reads one batch
# range at a time outside our GIL; the export's writer (Parquet/CSV encoding) needs CPU
# too, and more readers than cores only contend.
SQLITE_READERS = max(1, min(2, os.cpu_count() or 1))


def sqlite_db_path(engine: Engine) -> str:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise RequestError("unsupported_database", "exports from SQLite need a database file (not :memory:)")
    return database


def sqlite_readers(engine: Engine) -> ReaderPool:
    """This process's ADBC reader processes for the engine's SQLite file."""
    return pool_for(sqlite_db_path(engine), SQLITE_READERS)


def held_readers(engine: Engine) -> AbstractContextManager:
    """Keep (and start now) the engine's SQLite reader processes while the block runs;
    nothing to hold for PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    return held_pool(sqlite_db_path(engine), SQLITE_READERS)


class BadValueError(ValueError):
    """A value the export cannot write (raised by :func:`conform` when given no error list)."""


# Timestamps the export writes: years 1-9999 (ISO 8601's four digits, and Python's
# datetime). PostgreSQL also stores 'infinity' and years up to 294276, which its ADBC
# driver hands over as wrapped-around numbers: they fall outside this range too.
TS_MIN_US = int((datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000
TS_MAX_US = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000 + 999_999


def conform(batch: pa.RecordBatch, schema: pa.Schema, errors: list[ItemError] | None = None) -> pa.RecordBatch:
    """Cast a driver's batch to the export schema (SQLite gives timestamps as text).

    Timestamps are read whatever form older or foreign writers stored (with or without
    an offset or a fraction; videolib/db/types.py). A row holding a value that still
    cannot be converted is left out and reported in ``errors`` as ``bad_value`` with
    detail ``column=<name>`` (the batch must carry its ``id`` column); with no
    ``errors`` list such a value raises :class:`BadValueError`.
    """
    arrays = []
    bad: dict[str, pa.Array] = {}  # column -> rows whose value could not be converted
    for target in schema:
        column = batch.column(target.name)
        if pa.types.is_timestamp(target.type):
            column, mask = _utc_timestamps(column)
            if mask is not None and pc.any(mask).as_py():
                bad[target.name] = mask
            arrays.append(column)
        elif column.type == target.type:
            arrays.append(column)
        elif pa.types.is_boolean(target.type):
            arrays.append(pc.not_equal(column, 0) if not pa.types.is_boolean(column.type) else column)
        else:
            arrays.append(column.cast(target.type))
    out = pa.RecordBatch.from_arrays(arrays, schema=schema)
    if not bad:
        return out
    any_bad = None
    for mask in bad.values():
        any_bad = mask if any_bad is None else pc.or_(any_bad, mask)
    bad_rows = pc.indices_nonzero(any_bad).to_pylist()
    ids = batch.column("id")
    found = []
    for row in bad_rows:
        names = ",".join(name for name, mask in bad.items() if mask[row].as_py())
        found.append(ItemError(str(ids[row].as_py()), BAD_VALUE, f"column={names}"))
    if errors is None:
        raise BadValueError(f"{len(found)} rows hold values that cannot be exported, first: "
                            f"{found[0].video_id} {found[0].detail}")
    errors.extend(found)
    log.warning("export: %s rows left out for values that cannot be exported (first: %s %s)",
                len(found), found[0].video_id, found[0].detail)
    return out.filter(pc.invert(any_bad))


def _utc_timestamps(column: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """``(timestamp[us, UTC] column, mask of the values that could not be converted or None)``."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:  # the canonical form (every writer's since migration 0004): one vectorised cast
            column = pc.assume_timezone(column.cast(pa.timestamp("us")), "UTC")
        except pa.ArrowInvalid:  # older or foreign forms: parse each value
            return _parse_timestamps(column)
    elif column.type != TS:
        column = column.cast(TS)
    low, high = pc.min_max(column.cast(pa.int64())).values()
    if low.as_py() is None or (low.as_py() >= TS_MIN_US and high.as_py() <= TS_MAX_US):
        return column, None
    raw = column.cast(pa.int64())
    outside = pc.fill_null(pc.or_(pc.less(raw, TS_MIN_US), pc.greater(raw, TS_MAX_US)), False)
    return pc.if_else(outside, pa.scalar(None, TS), column), outside


def _parse_timestamps(column: pa.Array) -> tuple[pa.Array, pa.Array]:
    values: list[datetime | None] = []
    bad: list[bool] = []
    for stored in column.to_pylist():
        if stored is None:
            values.append(None)
            bad.append(False)
            continue
        try:
            values.append(parse_stored_timestamp(stored))
            bad.append(False)
        except ValueError:
            values.append(None)
            bad.append(True)
    return pa.array(values, TS), pa.array(bad, pa.bool_())


def write_part(store: ObjectStore, key: str, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> int:
    """Write record batches as one Arrow IPC part file; returns its row count."""
    rows = 0
    with store.open(key, "wb") as raw, ipc.new_stream(raw, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def read_part(store: ObjectStore, key: str) -> Iterator[pa.RecordBatch]:
    with store.open(key, "rb") as raw, ipc.open_stream(raw) as reader:
        yield from reader


# Rows encoded at a time. A driver's record batch can be 16 MB (ADBC PostgreSQL), and
# encoding one whole held Polars' copy of it, the CSV buffer and its bytes at once, in
# every task running: a 200k-row PostgreSQL export peaked at +382 MB over its imports.
CSV_ENCODE_ROWS = 8192


def write_csv_part(store: ObjectStore, key: str, batches: Iterator[pa.RecordBatch], *, formula_guard: bool) -> int:
    """Write record batches as CSV rows (no header; the writer adds it); returns the row count."""
    rows = 0
    with store.open(key, "wb") as raw:
        for batch in batches:
            for piece in encode_csv_pieces(batch, formula_guard=formula_guard):
                raw.write(piece)
            rows += batch.num_rows
    return rows


def encode_csv_pieces(batch: pa.RecordBatch, *, formula_guard: bool) -> Iterator[bytes]:
    """``encode_csv`` of the batch, ``CSV_ENCODE_ROWS`` rows at a time."""
    for offset in range(0, batch.num_rows, CSV_ENCODE_ROWS):
        yield encode_csv(batch.slice(offset, CSV_ENCODE_ROWS), formula_guard=formula_guard)


CSV_COPY_BYTES = 1 << 20


def copy_csv_part(store: ObjectStore, key: str) -> Iterator[bytes]:
    """A CSV part's bytes, a MiB at a time."""
    with store.open(key, "rb") as raw:
        while chunk := raw.read(CSV_COPY_BYTES):
            yield chunk


def csv_header(names: Sequence[str]) -> bytes:
    return (",".join(names) + "\r\n").encode("utf-8")


def encode_csv(batch: pa.RecordBatch, *, formula_guard: bool) -> bytes:
    """RFC 4180 CSV rows (no header: ``csv_header``) of a record batch: UTF-8, CRLF, quotes only where needed, NULL an
    empty field and an empty string ``""``, timestamps ISO 8601 UTC."""
    import polars as pl

    if formula_guard:
        batch = guard_formulas(batch)
    buffer = io.BytesIO()
    pl.from_arrow(batch).write_csv(
        buffer, include_header=False, quote_style="necessary",
        line_terminator="\r\n", null_value="", datetime_format="%Y-%m-%dT%H:%M:%S%.6fZ",
    )
    return buffer.getvalue()


def guard_formulas(batch: pa.RecordBatch) -> pa.RecordBatch:
    """OWASP CSV injection guard: prefix ``'`` to string cells a spreadsheet would run."""
    pattern = "^[" + "".join("\\" + c if c in "-+" else c for c in FORMULA_PREFIXES) + "]"
    arrays = []
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            risky = pc.match_substring_regex(column, pattern)
            if pc.any(risky).as_py():  # most batches have none: no copy of the column
                column = pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


@dataclass
class ExportWriter:
    """The single writer of an export: takes record batches in order, writes one file."""

    store: ObjectStore
    key: str
    fmt: str
    schema: pa.Schema
    formula_guard: bool = True
    rows: int = 0
    _raw: object = None
    _staging: str = ""
    _parquet: pq.ParquetWriter | None = None
    _pending: list[pa.RecordBatch] = field(default_factory=list)
    _pending_rows: int = 0
    _header_written: bool = False

    def open(self) -> ExportWriter:
        check_format(self.fmt)
        # Written under a staging name and published whole by close(): a reader never
        # finds half an export under its name, even after a SIGKILL.
        self._staging = self.store.staging_key(self.key)
        self._raw = self.store.open(self._staging, "wb")
        if self.fmt == "parquet":
            self._parquet = pq.ParquetWriter(self._raw, self.schema, compression="zstd")
        return self

    __enter__ = open

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        if self._parquet is not None:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            if self._pending_rows >= ROW_GROUP_ROWS:
                self._flush_row_group()
        else:
            self._write_csv(batch)

    def _flush_row_group(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, schema=self.schema)
            self._parquet.write_table(table, row_group_size=max(table.num_rows, 1))
            self._pending, self._pending_rows = [], 0

    def _write_csv(self, batch: pa.RecordBatch) -> None:
        self._write_csv_header()
        for piece in encode_csv_pieces(batch, formula_guard=self.formula_guard):
            self._raw.write(piece)

    def write_csv_rows(self, chunks: Iterable[bytes], rows: int) -> None:
        """Append ``rows`` rows already encoded as CSV by ``encode_csv`` (a CSV part)."""
        if self.fmt != "csv":
            raise ValueError("encoded CSV rows go into a CSV export only")
        self._write_csv_header()
        for chunk in chunks:
            self._raw.write(chunk)
        self.rows += rows

    def _write_csv_header(self) -> None:
        if not self._header_written:
            self._raw.write(csv_header(self.schema.names))
            self._header_written = True

    def close(self) -> None:
        """Finish the file (Parquet footer, or a CSV header for an empty export) and
        publish it under its name; on any failure nothing appears there."""
        try:
            if self._parquet is not None:
                self._flush_row_group()
                self._parquet.close()
                self._parquet = None
            else:
                self._write_csv_header()  # an empty export is a header
            self._raw.close()
            self.store.publish(self._staging, self.key)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the incomplete file: nobody may download half an export."""
        if self._parquet is not None:
            try:  # or its finaliser writes to the closed stream later
                self._parquet.close()
            except Exception:
                log.debug("closing an aborted Parquet writer failed", exc_info=True)
            self._parquet = None
        self.store.abandon(self._raw, self._staging)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


ESTIMATE_SAMPLE_ROWS = 2000


def estimate_bytes(engine: Engine, creator_id: str, rows: int, columns: Sequence[str]) -> int:
    """A rough size of the export (uncompressed text), from the average text of a sample.

    The sample is the creator's first rows by id (random UUIDs, so an arbitrary sample):
    averaging over every row read the whole table (5.9 s of a 1M-row SQLite export).
    """
    if rows == 0:
        return 0
    text_columns = [c for c in ("title", "description", "storage_key", "thumbnail_key", "id", "status") if c in columns]
    averages: Sequence[object] = []
    if text_columns:
        sample = (
            select(*(getattr(Video, c) for c in text_columns)).where(Video.creator_id == creator_id)
            .order_by(Video.id).limit(ESTIMATE_SAMPLE_ROWS).subquery()
        )
        parts = [func.coalesce(func.avg(func.length(sample.c[c])), 0) for c in text_columns]
        with small_cache_connection(engine) as conn:
            averages = conn.execute(select(*parts)).one()
    per_row = sum(float(a or 0) for a in averages) + 16 * (len(columns) - len(text_columns)) + len(columns)
    return int(rows * per_row)


def used_export_bytes(store: ObjectStore, creator_id: str, keys: Iterable[str] | None = None) -> int:
    """Bytes of the creator's finished exports already in storage (``keys``: the listing
    of ``exports/{creator_id}`` when the caller has it)."""
    if keys is None:
        keys = store.list_keys(f"exports/{creator_id}")
    finished = [k for k in keys if leftover_operation(k) is None]
    sizes = store.sizes(finished) if finished else {}
    return sum(size for size in sizes.values() if size)


_PART_OR_STAGING = re.compile(
    r"^exports/[^/]+/(?:(?P<parts>[0-9a-f-]{36})\.parts/.+|\.(?P<staging>[0-9a-f-]{36})\.(?:parquet|csv)"
    + re.escape(STAGING_SUFFIX) + r")$"
)


def leftover_operation(key: str) -> str | None:
    """The operation a part file or a file being written belongs to (None: a finished export)."""
    match = _PART_OR_STAGING.match(key)
    return None if match is None else (match.group("parts") or match.group("staging"))


def export_leftovers(listing: dict[str, float]) -> dict[str, tuple[list[str], float]]:
    """``{operation id: (its part and staging keys, newest modification time)}`` from a
    listing of ``exports/{creator_id}`` (:meth:`ObjectStore.list_modified`)."""
    found: dict[str, tuple[list[str], float]] = {}
    for key, mtime in listing.items():
        operation = leftover_operation(key)
        if operation is not None:
            keys, newest = found.get(operation, ([], 0.0))
            keys.append(key)
            found[operation] = (keys, max(newest, mtime))
    return found


def ids_in_range(engine: Engine, creator_id: str, flt: ExportFilter, lo: str, hi: str | None) -> list[str]:
    """The selected ids from ``lo`` to ``hi`` (inclusive; ``None``: no upper bound)."""
    upper = [Video.id <= hi] if hi is not None else []
    with engine.connect() as conn:
        return list(conn.execute(select(Video.id).where(
            Video.creator_id == creator_id, Video.id >= lo, *upper, *flt.clauses()).order_by(Video.id)).scalars())


def resolve_export_ids(engine: Engine, creator_id: str, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` the creator owns (not being deleted)."""
    owned: set[str] = set()
    with engine.connect() as conn:
        for part in chunked(list(ids)):
            owned.update(conn.execute(select(Video.id).where(
                Video.creator_id == creator_id, Video.id.in_(part), Video.status != "deleting")).scalars())
    return owned
