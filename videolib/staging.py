"""A manifest selection staged in the database (``staged_ids``, migration 0006).

The run streams its manifest in chunks (``videolib/manifests.py``) into ``staged_ids``,
where the primary key collapses duplicates; it then keeps the creator's own ids (the
others are ``not_found`` items) and cuts ranges of ``seq`` into batches. A batch is a
small dict, ``{"staged": operation_id, "after": seq, "through": seq, "count": n}``,
that the batch task reads back as ids (:func:`batch_ids`): no list of millions is ever
a parameter, a task input or one list in memory.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from videolib.db.models import StagedId, Video
from videolib.ids import normalize_video_id
from videolib.operation import INVALID_DETAIL, INVALID_ID, NOT_FOUND, ItemError, echo_id
from videolib.selection import VISIBLE

log = logging.getLogger(__name__)

PAGE = 10_000  # staged rows read per query
KEEP_PAGE = 50_000  # staged rows checked per statement by keep_owned


@dataclass
class Staged:
    """What staging a manifest found: distinct valid ids staged, malformed ones."""

    ids: int = 0
    invalid: list[ItemError] = field(default_factory=list)  # when no ``on_invalid`` takes them
    n_invalid: int = 0
    _bad_seen: set[bytes] = field(default_factory=set)

    @property
    def requested(self) -> int:
        return self.ids + self.n_invalid


def _insert(engine: Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(StagedId).on_conflict_do_nothing(index_elements=["operation_id", "video_id"])


# PostgreSQL: a chunk is COPYed into a temporary table of the connection (emptied at each
# commit), then moved in seq order with one INSERT ... SELECT ... ON CONFLICT DO NOTHING:
# 1M ids staged in 9.6 s against 16.6 s with multi-row INSERTs (benchmarks/README.md,
# "staging"); what is left is the server's upkeep of staged_ids' two indexes (8.9 s).
_PG_INBOX = "bulkops_staging_inbox"
_PG_INBOX_DDL = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {_PG_INBOX} (video_id varchar(36) NOT NULL, "
                 "seq bigint NOT NULL) ON COMMIT DELETE ROWS")
_PG_MOVE = (f"INSERT INTO {StagedId.__tablename__} (operation_id, video_id, seq) "
            f"SELECT %s, video_id, seq FROM {_PG_INBOX} ORDER BY seq ON CONFLICT DO NOTHING")


def _write(engine: Engine, statement, operation_id: str, rows: list[tuple[str, int]], *, pg_copy: bool) -> None:
    """Stage ``rows`` (``(video_id, seq)``) in one transaction; a duplicate of an id
    already staged (or earlier in ``rows``) is left out, the first one kept. A role that
    may not create temporary tables (``REVOKE TEMPORARY ON DATABASE``) stages with
    INSERTs, as on SQLite."""
    if pg_copy and engine.dialect.name == "postgresql" and engine.url not in _NO_TEMP:
        import psycopg.errors

        try:
            with engine.begin() as conn, conn.connection.driver_connection.cursor() as cursor:
                cursor.execute(_PG_INBOX_DDL)
                with cursor.copy(f"COPY {_PG_INBOX} (video_id, seq) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cursor.execute(_PG_MOVE, (operation_id,))
            return
        except psycopg.errors.InsufficientPrivilege as exc:
            _NO_TEMP.add(engine.url)
            log.warning("staging with INSERTs, slower than COPY: the database role may not create a "
                           "temporary table (%s); GRANT TEMPORARY ON DATABASE to it for faster planning",
                           str(exc).strip().splitlines()[0])
    with engine.begin() as conn:
        conn.execute(statement, [{"operation_id": operation_id, "video_id": vid, "seq": seq} for vid, seq in rows])


_NO_TEMP: set = set()  # the databases whose role was refused a temporary table


def stage_manifest(engine: Engine, operation_id: str, parts: Iterator[list[str]], *,
                   on_invalid: Callable[[list[ItemError]], None] | None = None, pg_copy: bool = True) -> Staged:
    """Stage the distinct valid ids of ``parts`` (chunks of raw lines) in order; the
    malformed ones, once each, as ``invalid_id`` items: given to ``on_invalid`` a chunk
    at a time (a manifest of millions of bad lines is not held here), else kept in
    ``Staged.invalid``. ``pg_copy=False`` writes with multi-row INSERTs on PostgreSQL
    too (the staging benchmark's baseline)."""
    drop_staged(engine, operation_id)  # a run started again begins from its manifest
    staged = Staged()
    seq = 0
    statement = _insert(engine)
    for part in parts:
        rows = []
        invalid: list[ItemError] = []
        for raw in part:
            vid = normalize_video_id(raw)
            if vid is None:
                seen = hashlib.blake2b(str(raw).encode(), digest_size=16).digest()  # not the (long) text itself
                if seen not in staged._bad_seen:
                    staged._bad_seen.add(seen)
                    invalid.append(ItemError(echo_id(raw), INVALID_ID, INVALID_DETAIL))
                continue
            seq += 1
            rows.append((vid, seq))
        if rows:
            _write(engine, statement, operation_id, rows, pg_copy=pg_copy)
        staged.n_invalid += len(invalid)
        if invalid:
            if on_invalid is not None:
                on_invalid(invalid)
            else:
                staged.invalid.extend(invalid)
    staged._bad_seen.clear()
    with engine.connect() as conn:
        staged.ids = conn.execute(select(func.count()).select_from(StagedId)
                                  .where(StagedId.operation_id == operation_id)).scalar() or 0
    return staged


def _pages(engine: Engine, operation_id: str, *, after: int = 0, through: int | None = None
           ) -> Iterator[list[tuple[int, str]]]:
    """``(seq, video_id)`` of the staged ids in order, a page at a time."""
    while True:
        query = select(StagedId.seq, StagedId.video_id).where(StagedId.operation_id == operation_id,
                                                              StagedId.seq > after)
        if through is not None:
            query = query.where(StagedId.seq <= through)
        with engine.connect() as conn:
            page = [(row.seq, row.video_id) for row in conn.execute(query.order_by(StagedId.seq).limit(PAGE))]
        if not page:
            return
        yield page
        after = page[-1][0]


def keep_owned(engine: Engine, operation_id: str, creator_id: str, *,
               exclude_statuses: Sequence[str] = (), on_missing: Callable[[list[ItemError]], None]) -> int:
    """Remove the staged ids that are not the creator's (or are in ``exclude_statuses``),
    giving them to ``on_missing`` as ``not_found`` items, in manifest order; how many stay.

    One ``DELETE ... WHERE NOT EXISTS (the creator's video) RETURNING`` per range of
    ``KEEP_PAGE`` staged rows: the database matches them by primary key, not a query
    and an ``IN`` list of deletes per 10,000 ids from here (1M lines, 800k of them no
    video's: 64-83 s before, on PostgreSQL)."""
    owned = select(Video.id).where(Video.id == StagedId.video_id, Video.creator_id == creator_id, VISIBLE)
    if exclude_statuses:
        owned = owned.where(Video.status.not_in(list(exclude_statuses)))
    owned = owned.correlate(StagedId)
    with engine.connect() as conn:
        last = conn.execute(select(func.max(StagedId.seq)).where(StagedId.operation_id == operation_id)).scalar()
    after = 0
    while last is not None and after < last:
        through = after + KEEP_PAGE
        with engine.begin() as conn:
            gone = conn.execute(
                delete(StagedId)
                .where(StagedId.operation_id == operation_id, StagedId.seq > after, StagedId.seq <= through,
                       ~owned.exists())
                .returning(StagedId.seq, StagedId.video_id)
            ).all()
        if gone:
            gone.sort()
            on_missing([ItemError(vid, NOT_FOUND, "no such video for this creator") for _seq, vid in gone])
        after = through
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(StagedId)
                            .where(StagedId.operation_id == operation_id)).scalar() or 0


def staged_batches(engine: Engine, operation_id: str, size: int) -> list[dict[str, Any]]:
    """The staged ids cut into ranges of ``size``: what each batch task receives."""
    batches: list[dict[str, Any]] = []
    start, count, last = 0, 0, 0
    for page in _pages(engine, operation_id):
        for seq, _vid in page:
            count += 1
            last = seq
            if count == size:
                batches.append({"staged": operation_id, "after": start, "through": last, "count": count})
                start, count = last, 0
    if count:
        batches.append({"staged": operation_id, "after": start, "through": last, "count": count})
    return batches


def is_staged(batch: object) -> bool:
    return isinstance(batch, dict) and "staged" in batch


def batch_len(batch: Sequence[str] | dict[str, Any]) -> int:
    """How many ids a batch holds, without reading a staged one."""
    return int(batch["count"]) if is_staged(batch) else len(batch)  # type: ignore[index,arg-type]


def batch_ids(engine: Engine, batch: Sequence[str] | dict[str, Any]) -> list[str]:
    """A batch's ids: the list itself, or a staged range read back."""
    if not is_staged(batch):
        return list(batch)  # type: ignore[arg-type]
    ids: list[str] = []
    for page in _pages(engine, batch["staged"], after=int(batch["after"]), through=int(batch["through"])):
        ids.extend(vid for _seq, vid in page)
    return ids


def drop_staged(engine: Engine, operation_id: str) -> None:
    """Forget one operation's staged ids (it ended)."""
    with engine.begin() as conn:
        conn.execute(delete(StagedId).where(StagedId.operation_id == operation_id))


def staged_operations(engine: Engine) -> list[str]:
    """The operations with ids staged (cleanup drops those whose run has ended)."""
    with engine.connect() as conn:
        return list(conn.execute(select(StagedId.operation_id).distinct()).scalars())
