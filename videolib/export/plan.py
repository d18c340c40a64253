"""Planning an export: how many rows it selects, the id ranges its tasks read, what it
may take of the creator's quota, and what killed exports left behind."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, func, or_, select, text

from videolib.db.models import GONE_STATUSES, Video
from videolib.export.readers import sqlite_readers, where_terms
from videolib.export.spec import ExportBatch, ExportFilter
from videolib.operation import effective_batch_size, plan_batches
from videolib.selection import chunked
from videolib.storage import STAGING_SUFFIX, ObjectStore

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
        total = count_selected(conn, creator_id, flt)
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


def count_selected(conn: Connection, creator_id: str, flt: ExportFilter) -> int:
    """How many of the creator's videos the filter selects (tombstones never)."""
    return conn.execute(
        select(func.count()).select_from(Video).where(Video.creator_id == creator_id, *flt.clauses())
    ).scalar_one()


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
        deleting = select(Video.id).where(Video.creator_id == creator_id, Video.status.in_(GONE_STATUSES))
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
        where = ["v.creator_id = ?", "v.id NOT IN (SELECT id FROM videos WHERE creator_id = ? AND status IN ('deleting', 'trashed'))"]
        params: list[object] = [creator_id, creator_id]
    else:
        where, params = where_terms(ExportBatch(lo=""), flt, "?", creator_id)
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
                Video.creator_id == creator_id, Video.id.in_(part), Video.status.not_in(GONE_STATUSES))).scalars())
    return owned
