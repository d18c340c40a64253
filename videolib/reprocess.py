"""Bulk reprocess: re-chunk transcripts and recompute embeddings, one batch at a time.

For one batch of a creator's videos:

1. **claim** (one short transaction): compare-and-set the videos to ``processing``,
   owned by this operation (``videos.processing_by``). A video that is ``deleting``
   or gone is ``not_found``; one without a transcript is ``no_transcript`` and left
   untouched; one another operation is processing is ``busy`` and not taken. A claim
   of this same operation (a retried batch) is taken back, and a claim left by a
   crashed run is taken over once older than the lease.
2. **chunk** every transcript (``videolib.chunking``) and **embed** all the batch's
   chunks in one vectorised call, outside any transaction;
3. **write** (one transaction per batch, a savepoint per video): compare-and-set the
   video from ``processing`` (still ours) to ``ready`` with ``embedded_at`` and
   ``embedding_model``, delete its old chunks, insert the new ones. A video whose
   write fails is rolled back to its savepoint, so it keeps all of its old chunks,
   and is set ``failed`` with the error in the report. One commit per batch, not per
   video: SQLite pays per commit.

A concurrent delete always wins: it tombstones a video whatever its status, and the
compare-and-set in step 3 then finds no ``processing`` row of ours, so nothing is
written for it (reported ``not_found``). A crash leaves every video with its old
chunks or all of its new ones, never half: at worst ``processing`` with its old
chunks, which a rerun takes over after the lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    Text,
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from videolib.chunking import ChunkingConfig
from videolib.compute_pool import Prepared, Work, chunk_and_embed_where_best
from videolib.db.engine import begin_write, set_lock_timeout
from videolib.db.models import GONE_STATUSES, Video
from videolib.db.types import bind_timestamp
from videolib.embedders import Embedder
from videolib.gc_tuning import bulk_gc
from videolib.operation import NO_TRANSCRIPT, NOT_FOUND, BatchOutcome, ItemError, Ticker
from videolib.selection import chunked
from videolib.takeover import Holders, Takeover, decide_takeover, released_status

log = logging.getLogger(__name__)

BUSY = "busy"
REPROCESS_ERROR = "reprocess_error"
CLAIMABLE = ("uploaded", "ready", "failed")

# Fault injection for tests: called as hook(stage, video_id) inside a video's
# savepoint, at "after_delete" (old chunks gone) and "after_insert" (new ones in).
WriteHook = Callable[[str, str], None]


class _strip_whitespace(FunctionElement):
    """The text without leading and trailing spaces, tabs and line breaks (SQL's plain
    ``trim`` strips spaces only, so a transcript of blank lines looked transcribed)."""

    type = Text()
    inherit_cache = True


@compiles(_strip_whitespace)
def _strip_whitespace_sqlite(element, compiler, **kw):
    return f"trim({compiler.process(element.clauses, **kw)}, ' ' || char(9, 10, 13))"


@compiles(_strip_whitespace, "postgresql")
def _strip_whitespace_postgresql(element, compiler, **kw):
    return f"btrim({compiler.process(element.clauses, **kw)}, E' \\t\\n\\r')"


def _has_transcript():
    return and_(Video.transcript.is_not(None), _strip_whitespace(Video.transcript) != "")


def claim_batch(
    engine: Engine,
    *,
    creator_id: str,
    video_ids: Sequence[str],
    operation_id: str,
    lease_s: int,
    lock_timeout_ms: int = 5000,
    holders: Holders | None = None,
) -> tuple[dict[str, tuple[str, str]], list[ItemError]]:
    """Set the batch's eligible videos ``processing`` for ``operation_id``.

    Returns ``{video_id: (previous_status, transcript)}`` for the videos claimed, and
    per-item errors for the others (which are left unchanged).
    """
    ids = list(dict.fromkeys(video_ids))
    now = datetime.now(UTC)
    errors: list[ItemError] = []
    claimed: dict[str, tuple[str, str]] = {}
    with engine.begin() as conn:
        set_lock_timeout(conn, lock_timeout_ms)
        rule = decide_takeover(conn, creator_id=creator_id, operation_id=operation_id, lease_s=lease_s,
                               holders=holders, now=now)
        rows = {}
        for part in chunked(ids):
            query = select(
                Video.id, Video.status, Video.processing_by, Video.updated_at, _has_transcript().label("has_t")
            ).where(Video.creator_id == creator_id, Video.id.in_(part))
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            rows.update({row.id: row for row in conn.execute(query)})
        takeable: list[str] = []
        for vid in ids:
            row = rows.get(vid)
            if row is None or row.status in GONE_STATUSES:
                errors.append(ItemError(vid, NOT_FOUND, "no such video for this creator"))
            elif not row.has_t:
                errors.append(ItemError(vid, NO_TRANSCRIPT, "the video has no transcript; left unchanged"))
            elif row.status == "processing" and not rule.may_take(row.processing_by, row.updated_at):
                errors.append(ItemError(vid, BUSY, _busy_detail(row)))
            else:
                takeable.append(vid)
        taken: set[str] = set()
        for part in chunked(takeable):
            result = conn.execute(
                update(Video)
                .where(Video.creator_id == creator_id, Video.id.in_(part), _claimable(rule))
                .values(status="processing", processing_by=operation_id, updated_at=now)
                .returning(Video.id)
            )
            taken.update(result.scalars())
        for vid in takeable:
            if vid not in taken:  # changed between our read and our update
                errors.append(ItemError(vid, BUSY, "its status changed while being claimed; left unchanged"))
        for part in chunked([vid for vid in takeable if vid in taken]):
            for row in conn.execute(select(Video.id, Video.transcript).where(Video.id.in_(part))):
                previous = rows[row.id].status
                claimed[row.id] = ("failed" if previous == "processing" else previous, row.transcript)
    return claimed, errors


def _claimable(rule: Takeover):
    """The videos a claim may take (SQL): any status but ``processing`` and
    ``deleting``, or a ``processing`` claim the takeover rule gives it
    (``videolib.takeover``: its own, a run's that ended, or one past the lease)."""
    return or_(Video.status.in_(CLAIMABLE), and_(Video.status == "processing", rule.sql()))


@dataclass
class Selection:
    """What ``--all`` selects for a reprocess: the videos it can act on, in id order, and
    how many of the others it leaves out on purpose, by reason (not errors)."""

    ids: list[str]
    not_selected: dict[str, int]


def select_reprocessable(
    engine: Engine, creator_id: str, *, operation_id: str, lease_s: int, page: int = 10_000,
    holders: Holders | None = None,
) -> Selection:
    """Every video of the creator that a reprocess can act on now: it has a transcript
    and nobody else holds it (the claim's own rules, :func:`claim_batch`). Videos with no
    transcript count as ``no_transcript``, those another operation or pipeline is
    processing as ``busy``; tombstones (``deleting``) are no longer the creator's
    library and are not counted. Streamed by keyset pages over (creator_id, id)."""
    selection = Selection(ids=[], not_selected={NO_TRANSCRIPT: 0, BUSY: 0})
    for ids in reprocessable_pages(engine, creator_id, operation_id=operation_id, lease_s=lease_s, page=page,
                                   holders=holders, not_selected=selection.not_selected):
        selection.ids.extend(ids)
    return selection


def reprocessable_pages(
    engine: Engine, creator_id: str, *, operation_id: str, lease_s: int, not_selected: dict[str, int],
    page: int = 10_000, holders: Holders | None = None,
) -> Iterator[list[str]]:
    """:func:`select_reprocessable` a keyset page at a time (a library of millions is
    staged, never listed): the ids of each page; those left out counted in
    ``not_selected`` as the pages go."""
    with engine.connect() as conn:
        rule = decide_takeover(conn, creator_id=creator_id, operation_id=operation_id, lease_s=lease_s,
                               holders=holders)
    has_t = _has_transcript().label("has_t")
    claimable = _claimable(rule).label("claimable")
    for reason in (NO_TRANSCRIPT, BUSY):
        not_selected.setdefault(reason, 0)
    last = ""
    while True:
        query = (
            select(Video.id, has_t, claimable)
            .where(Video.creator_id == creator_id, Video.id > last, Video.status.not_in(GONE_STATUSES))
            .order_by(Video.id)
            .limit(page)
        )
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        ids = []
        for vid, transcript, free in rows:
            if not transcript:
                not_selected[NO_TRANSCRIPT] += 1
            elif not free:
                not_selected[BUSY] += 1
            else:
                ids.append(vid)
        last = rows[-1][0]
        yield ids


def any_reprocessable(engine: Engine, creator_id: str, *, lease_s: int, holders: Holders | None = None) -> bool:
    """Whether :func:`select_reprocessable` would select anything (stops at the first)."""
    with engine.connect() as conn:
        rule = decide_takeover(conn, creator_id=creator_id, operation_id="", lease_s=lease_s, holders=holders)
        query = select(Video.id).where(Video.creator_id == creator_id, Video.status.not_in(GONE_STATUSES),
                                       _has_transcript(), _claimable(rule)).limit(1)
        return conn.execute(query).first() is not None


def _busy_detail(row) -> str:
    if row.processing_by:
        return f"being reprocessed by operation {row.processing_by}; left unchanged"
    return "the video is being processed elsewhere (status 'processing'); left unchanged"


def release_claims(engine: Engine, operation_id: str, previous: dict[str, str]) -> None:
    """Give claims back with their previous status (when a batch fails as a whole)."""
    with engine.begin() as conn:
        _end_claims(conn, previous, operation_id, datetime.now(UTC))


def release_left_claims(engine: Engine, creator_id: str, operation_id: str) -> int:
    """Give back every claim this operation still holds (compare-and-set on the claim),
    with the status a claim ends with when its batch has no say (``released_status``):
    how many. For a run that ends while batches are still working (a cancel whose
    drain ran out of time): their items are counted skipped, and a write they attempt
    later finds its claim gone and writes nothing."""
    with engine.begin() as conn:
        return conn.execute(
            update(Video)
            .where(Video.creator_id == creator_id, Video.status == "processing",
                   Video.processing_by == operation_id)
            .values(status=released_status(), processing_by=None, updated_at=datetime.now(UTC))
        ).rowcount or 0


def reprocess_batch(
    engine: Engine,
    embedder: Embedder,
    *,
    creator_id: str,
    video_ids: Sequence[str],
    operation_id: str,
    chunking: ChunkingConfig | None = None,
    lease_s: int = 3600,
    lock_timeout_ms: int = 5000,
    hook: WriteHook | None = None,
    holders: Holders | None = None,
    ticker: Ticker | None = None,
) -> BatchOutcome:
    """Re-chunk and re-embed one batch of the creator's videos (see the module's doc).

    With a ``ticker``, the chunks are embedded in slices of about a second each: the
    ticker hears how many videos are done after each, and when it says stop, the batch
    gives its claims back and reports its claimed videos ``skipped`` (nothing written).
    ``holders`` tells the claim which holding runs have ended (``videolib.takeover``).

    Never raises for a single video; raises when the batch cannot proceed (the
    database is unreachable, the embedder fails), after giving its claims back, so
    that the batch can be retried whole.
    """
    chunking = chunking or ChunkingConfig()
    claimed, errors = claim_batch(
        engine, creator_id=creator_id, video_ids=video_ids, operation_id=operation_id,
        lease_s=lease_s, lock_timeout_ms=lock_timeout_ms, holders=holders,
    )
    if ticker is not None:
        ticker.done(len(errors))
    if not claimed:
        return BatchOutcome(errors=errors)
    previous = {vid: prev for vid, (prev, _t) in claimed.items()}
    try:
        with bulk_gc():  # ~10 containers per chunk, no cycles: see videolib/gc_tuning.py
            return _process_claimed(
                engine, embedder, claimed, errors, operation_id=operation_id, chunking=chunking,
                lock_timeout_ms=lock_timeout_ms, hook=hook, ticker=ticker,
            )
    except Exception:
        try:
            release_claims(engine, operation_id, previous)
        except Exception:
            log.exception("could not release the claims of a failed reprocess batch")
        raise


def _process_claimed(engine, embedder, claimed, errors, *, operation_id, chunking, lock_timeout_ms, hook, ticker):
    failed: dict[str, str] = {}  # video -> detail; set `failed` after the write
    untouched: dict[str, str] = {}  # claimed but nothing to write: back to the previous status
    items = [(vid, transcript) for vid, (_prev, transcript) in claimed.items()]
    if ticker is None:
        prepared = chunk_and_embed_where_best(items, chunking, embedder)
    else:
        prepared = _prepare_in_slices(items, chunking, embedder, ticker, done_before=len(errors))
        if prepared is None:  # stopped: nothing written, every claim back as it was
            release_claims(engine, operation_id, {vid: prev for vid, (prev, _t) in claimed.items()})
            return BatchOutcome(errors=errors, skipped=len(claimed))
    failed.update(prepared.failed)
    for vid in prepared.empty:
        errors.append(ItemError(vid, NO_TRANSCRIPT, "the transcript has no words; left unchanged"))
        untouched[vid] = claimed[vid][0]
    work, vectors = prepared.work, prepared.vectors
    texts = sum(len(item.chunks) for item in work)
    if vectors.shape != (texts, embedder.dim):
        raise RuntimeError(f"embedder {embedder.name} returned shape {vectors.shape} for {texts} texts")
    finite = np.isfinite(vectors).all(axis=1)

    now = datetime.now(UTC)
    written: list[str] = []
    chunk_count = 0
    with engine.begin() as conn:
        set_lock_timeout(conn, lock_timeout_ms)
        # Open the transaction before the first SAVEPOINT so that the savepoints nest in
        # it. (No need to refresh the claims' lease here: every claim of the batch ends
        # in this transaction, and nobody sees the rows in between.)
        begin_write(conn)
        writer = _VideoWriter(conn, embedder.name, operation_id, now, hook)
        for item in work:
            rows_ok = finite[item.first : item.first + len(item.chunks)]
            if not rows_ok.all():
                failed[item.video_id] = f"embedder {embedder.name} returned non-finite values"
                continue
            outcome = writer.write(item, vectors)
            if outcome is None:
                written.append(item.video_id)
                chunk_count += len(item.chunks)
            elif outcome == NOT_FOUND:
                errors.append(ItemError(item.video_id, NOT_FOUND, "deleted while being reprocessed; nothing written"))
            else:
                failed[item.video_id] = outcome
        for vid, detail in failed.items():
            errors.append(ItemError(vid, REPROCESS_ERROR, f"set to 'failed', old chunks kept: {detail}"))
        _end_claims(conn, {**{vid: "failed" for vid in failed}, **untouched}, operation_id, now)
    return BatchOutcome(succeeded=written, errors=errors, extra={"chunks": chunk_count})


SLICE_TARGET_S = 1.0  # seconds of chunking and embedding between two ticks
FIRST_SLICE = 4  # videos in the first slice (a slow embedder shows progress early)


def _prepare_in_slices(items, chunking, embedder, ticker: Ticker, *, done_before: int) -> Prepared | None:
    """Chunk and embed ``items`` in slices sized to take about ``SLICE_TARGET_S`` each
    (growing from ``FIRST_SLICE`` videos, at most 4x per step), ticking after each; None
    as soon as the ticker says stop. The same result as one call over all items."""
    parts: list[Prepared] = []
    start, size = 0, FIRST_SLICE
    while start < len(items):
        if ticker.stopping():
            return None
        piece = items[start : start + size]
        began = time.monotonic()
        parts.append(chunk_and_embed_where_best(piece, chunking, embedder))
        took = max(time.monotonic() - began, 1e-3)
        start += len(piece)
        ticker.done(done_before + start)
        size = max(1, min(size * 4, int(size * SLICE_TARGET_S / took)))
    if ticker.stopping():
        return None
    return merge_prepared(parts, embedder.dim)


def merge_prepared(parts: list[Prepared], dim: int) -> Prepared:
    """One ``Prepared`` from several, as if their items had been embedded in one call."""
    if len(parts) == 1:
        return parts[0]
    work: list[Work] = []
    failed: dict[str, str] = {}
    empty: list[str] = []
    offset = 0
    for part in parts:
        work.extend(Work(item.video_id, item.chunks, first=item.first + offset) for item in part.work)
        offset += part.vectors.shape[0]
        failed.update(part.failed)
        empty.extend(part.empty)
    vectors = np.concatenate([p.vectors for p in parts]) if parts else np.zeros((0, dim), dtype=np.float32)
    return Prepared(work, vectors, failed, empty)


def _update_claims(conn: Connection, ids: list[str], operation_id: str, **values) -> None:
    """Update those of ``ids`` that are still ``processing`` under this operation's claim."""
    for part in chunked(ids):
        conn.execute(
            update(Video)
            .where(Video.id.in_(part), Video.status == "processing", Video.processing_by == operation_id)
            .values(**values)
        )


def _end_claims(conn: Connection, statuses: dict[str, str], operation_id: str, now: datetime) -> None:
    """End this operation's claims: each video to its status in ``statuses``."""
    by_status: dict[str, list[str]] = {}
    for vid, status in statuses.items():
        by_status.setdefault(status, []).append(vid)
    for status, ids in by_status.items():
        _update_claims(conn, ids, operation_id, status=status, processing_by=None, updated_at=now)


class _VideoWriter:
    """Replaces one video's chunks at a time, in a savepoint, on the batch's transaction.

    It talks to the DBAPI cursor of the SQLAlchemy connection (same connection, same
    transaction): these five statements run for every video, and building and
    compiling them through SQLAlchemy cost several times more than executing them.
    """

    def __init__(self, conn: Connection, model: str, operation_id: str, now: datetime, hook: WriteHook | None):
        self.cursor = conn.connection.cursor()
        p = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        # Raw DBAPI statements skip SQLAlchemy's column types: bind the timestamp as
        # UTCDateTime would (an aware datetime went to SQLite as '...+00:00', text that
        # sorted apart from every other timestamp and that exports could not read).
        stamp = bind_timestamp(conn.dialect, now)
        self.model, self.operation_id, self.hook = model, operation_id, hook
        self.ready_params = (stamp, model, stamp)
        self.mark_ready = (
            f"UPDATE videos SET status = 'ready', processing_by = NULL, embedded_at = {p}, embedding_model = {p}, "
            f"updated_at = {p} WHERE id = {p} AND status = 'processing' AND processing_by = {p}"
        )
        self.delete_chunks = f"DELETE FROM video_chunks WHERE video_id = {p}"
        self.insert_chunks = (
            "INSERT INTO video_chunks (video_id, chunk_index, content, start_s, end_s, embedding, model) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})"
        )

    def write(self, item: Work, vectors: np.ndarray) -> str | None:
        """None when the video got its new chunks; else why not (its old ones are kept)."""
        cur, vid = self.cursor, item.video_id
        cur.execute("SAVEPOINT bulkops_video")
        try:
            cur.execute(self.mark_ready, (*self.ready_params, vid, self.operation_id))
            if cur.rowcount != 1:  # a delete took it (or a takeover): write nothing
                self._undo()
                return NOT_FOUND
            cur.execute(self.delete_chunks, (vid,))
            if self.hook is not None:
                self.hook("after_delete", vid)
            block = vectors[item.first : item.first + len(item.chunks)].astype("<f4", copy=False)
            cur.executemany(
                self.insert_chunks,
                [
                    (vid, chunk.index, chunk.content, chunk.start_s, chunk.end_s, block[i].tobytes(), self.model)
                    for i, chunk in enumerate(item.chunks)
                ],
            )
            if self.hook is not None:
                self.hook("after_insert", vid)
            cur.execute("RELEASE SAVEPOINT bulkops_video")
            return None
        except Exception as exc:
            self._undo()
            log.warning("reprocess of %s rolled back: %s", vid, exc)
            return f"{type(exc).__name__}: {exc}"[:500]

    def _undo(self) -> None:
        self.cursor.execute("ROLLBACK TO SAVEPOINT bulkops_video")
        self.cursor.execute("RELEASE SAVEPOINT bulkops_video")

