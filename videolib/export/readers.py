"""Reading an export's rows as Arrow record batches, straight from the database: ADBC's
PostgreSQL driver (COPY in Arrow's binary format) or its SQLite driver in helper
processes (``sqlite_arrow.py`` says why not in ours); then cast to the export's schema,
whatever form older or foreign writers left the values in."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from videolib.db.models import Video
from videolib.db.types import parse_timestamp as parse_stored_timestamp
from videolib.db.types import sqlite_text, to_utc
from videolib.export.spec import _POSTGRES_COLUMNS, EXPORT_COLUMNS, TS, ExportBatch, ExportFilter, schema_for
from videolib.export.sqlite_arrow import ReaderPool, held_pool, null_safe_select, pool_for, restore_nulls
from videolib.ids import RequestError
from videolib.operation import BAD_VALUE, ItemError

log = logging.getLogger(__name__)


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


def where_terms(batch: ExportBatch, flt: ExportFilter, placeholder: str, creator_id: str) -> tuple[list[str], list]:
    """The WHERE terms (over ``v``, the videos) and their parameters of one batch."""
    params: list[object] = [creator_id]

    def p(value: object) -> str:
        params.append(value)
        return "?" if placeholder == "?" else f"${len(params)}"

    where = ["v.creator_id = " + ("?" if placeholder == "?" else "$1"), "v.status NOT IN ('deleting', 'trashed')"]
    if flt.status:
        where.append(f"v.status = {p(flt.status)}")
    for value, op in ((flt.created_after, ">="), (flt.created_before, "<")):
        if value is not None:
            where.append(f"v.created_at {op} {p(_db_timestamp(value, placeholder))}")
    if batch.ids is not None and placeholder != "?":
        # PostgreSQL: the ids as one text[] parameter (see read_batch).
        where.append(f"v.id = ANY({p(sorted(batch.ids))})")
    elif batch.ids is not None:
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
    where, params = where_terms(batch, flt, placeholder, creator_id)
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
        # A batch of listed ids (a manifest's, up to 20,000) binds them as one text[]
        # (`v.id = ANY($2)`): 0.19 s for 20,000 ids of a 200,000-video library, where
        # `v.id IN ($2, ..., $20001)` took 0.84 s (ADBC binds and PostgreSQL plans each
        # parameter) and read the whole table at 1M (1,038,448 rows fetched per batch).
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
