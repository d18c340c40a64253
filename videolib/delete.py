"""Bulk delete of videos, tombstone first.

For one batch of a creator's videos:

1. mark the rows ``deleting`` in one transaction (only rows of this creator, only
   rows whose storage keys lie under ``videos/{creator_id}/{video_id}/``);
2. delete their files and thumbnails (a missing object counts as deleted) and write
   the audit manifest part that records them;
3. delete the rows; ``video_chunks`` go with them by ``ON DELETE CASCADE``.

Then the delete proves it (``verify``, on by default): each video's objects are read
back from storage (:meth:`ObjectStore.present`, never what the delete call answered)
before its row goes, and its row and chunks are read back from the database after. A
video with an object still there keeps its tombstone (cleanup or a rerun finishes it)
and is the per-item error ``not_verified``; the audit manifest records, per video, what
was confirmed absent, and the batch counts it (``extra["verified"]``).

After a crash every video is gone with its objects, ``deleting``, or untouched: never
a live row pointing at a missing file. Running a batch again (or any later delete of
the same ids) takes the tombstones over and converges. A row is counted as deleted
only by the operation whose ``DELETE`` removed it, so concurrent operations on the
same videos count each video once. A retry of the same batch (Prefect retries a task
whole, also after an attempt that died past its row delete) counts what the earlier
attempt deleted as its own: the batch's audit part (:class:`AuditPart`) records it, and
writes to the part merge, never drop an earlier attempt's records.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, delete, select, update

from videolib.db.engine import set_lock_timeout
from videolib.db.models import Video, VideoChunk
from videolib.operation import (
    NOT_FOUND,
    NOT_VERIFIED,
    STORAGE_ERROR,
    UNSAFE_KEY,
    BatchOutcome,
    ItemError,
    Ticker,
)
from videolib.selection import chunked
from videolib.storage import ObjectStore, UnsafeKeyError, validate_key

log = logging.getLogger(__name__)


def video_prefix(creator_id: str, video_id: str) -> str:
    return f"videos/{creator_id}/{video_id}/"


def manifest_part_key(operation_id: str, batch_index: int) -> str:
    return f"audit/delete/{operation_id}/batch-{batch_index:05d}.jsonl"


def manifest_key(operation_id: str) -> str:
    return f"audit/delete/{operation_id}/manifest.json"


@dataclass(frozen=True)
class _Row:
    id: str
    keys: tuple[str, ...]


def check_video_keys(creator_id: str, video_id: str, *keys: str | None) -> tuple[str, ...]:
    """The video's object keys, or ``UnsafeKeyError`` if one lies outside its own prefix."""
    prefix = video_prefix(creator_id, video_id)
    out = []
    for key in keys:
        if key is None or key == "":
            continue
        validate_key(key)
        if not key.startswith(prefix) or len(key) == len(prefix):
            raise UnsafeKeyError(f"{key!r} is not under {prefix!r}")
        out.append(key)
    return tuple(out)


def _which(purge_before: datetime | None) -> list:
    """The rows a delete may take: every status but ``trashed`` (a trashed video is gone
    for later operations); a purge (cleanup, after the undo window) only trashed rows
    trashed before ``purge_before``."""
    if purge_before is None:
        return [Video.status != "trashed"]
    # `status || ''`: planned on (creator_id, id), not on every trashed row of the creator.
    return [Video.status.concat("") == "trashed", Video.trashed_at < purge_before]


def _load_rows(conn: Connection, creator_id: str, ids: Sequence[str], *, for_update: bool,
               purge_before: datetime | None = None):
    rows = []
    for part in chunked(ids):
        query = select(Video.id, Video.storage_key, Video.thumbnail_key).where(
            Video.creator_id == creator_id, Video.id.in_(part), *_which(purge_before)
        )
        if for_update and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        rows.extend(conn.execute(query))
    return rows


def _classify(creator_id: str, ids: Sequence[str], rows) -> tuple[list[_Row], list[ItemError]]:
    by_id = {row.id: row for row in rows}
    eligible: list[_Row] = []
    errors: list[ItemError] = []
    for vid in ids:
        row = by_id.get(vid)
        if row is None:
            errors.append(ItemError(vid, NOT_FOUND, "no such video for this creator"))
            continue
        try:
            keys = check_video_keys(creator_id, vid, row.storage_key, row.thumbnail_key)
        except UnsafeKeyError as exc:
            errors.append(ItemError(vid, UNSAFE_KEY, f"stored object key refused, video left unchanged: {exc}"))
            continue
        eligible.append(_Row(vid, keys))
    return eligible, errors


def plan_delete_batch(
    engine: Engine, store: ObjectStore, *, creator_id: str, video_ids: Sequence[str],
    purge_before: datetime | None = None,
) -> BatchOutcome:
    """A dry run of one batch: what would be deleted (videos, objects, bytes); changes nothing."""
    with engine.connect() as conn:
        rows = _load_rows(conn, creator_id, video_ids, for_update=False, purge_before=purge_before)
    eligible, errors = _classify(creator_id, video_ids, rows)
    sizes = store.sizes([key for row in eligible for key in row.keys])
    present = [size for size in sizes.values() if size is not None]
    return BatchOutcome(
        succeeded=[row.id for row in eligible], errors=errors, objects=len(present), bytes=sum(present)
    )


def delete_batch(
    engine: Engine,
    store: ObjectStore,
    *,
    creator_id: str,
    video_ids: Sequence[str],
    operation_id: str,
    batch_index: int,
    lock_timeout_ms: int = 5000,
    ticker: Ticker | None = None,
    verify: bool = True,
    purge_before: datetime | None = None,
) -> BatchOutcome:
    """Delete one batch of the creator's videos, tombstone first. Idempotent.

    Returns the ids this call deleted and per-item errors; never raises for a single
    item. Database errors raise (the batch is retried whole: every step is idempotent).
    With a ``ticker``, the objects go in slices (:func:`_delete_objects`) and the ticker
    hears how many videos are through after each. A delete batch does not stop half-way
    (its tombstones are down): a cancel waits for it. ``verify=False`` leaves out the
    proof (the benchmark's baseline for its cost). With ``purge_before`` it purges
    trashed videos whose undo window has closed (cleanup), and only those.
    """
    ids = list(dict.fromkeys(video_ids))
    now = datetime.now(UTC)
    part = AuditPart(store, operation_id, batch_index)

    # 1. Tombstones, in one transaction, only for this creator's safely-keyed rows.
    with engine.begin() as conn:
        set_lock_timeout(conn, lock_timeout_ms)
        rows = _load_rows(conn, creator_id, ids, for_update=True, purge_before=purge_before)
        eligible, errors = _classify(creator_id, ids, rows)
        marked: set[str] = set()
        for part_ids in chunked([row.id for row in eligible]):
            # The same condition as the read, as a compare-and-set (a restore racing a purge).
            marked.update(conn.execute(
                update(Video)
                .where(Video.creator_id == creator_id, Video.id.in_(part_ids), *_which(purge_before))
                .values(status="deleting", updated_at=now)
                .returning(Video.id)
            ).scalars())
        if len(marked) < len(eligible):
            errors += [ItemError(row.id, NOT_FOUND, "no such video for this creator")
                       for row in eligible if row.id not in marked]
            eligible = [row for row in eligible if row.id in marked]
    # A retry of this batch (the task's retries, after an attempt that died past its row
    # delete): what the earlier attempt deleted is in the batch's audit part. Those are
    # this batch's deletions, not "not found"; their proof is completed if it is missing.
    earlier, errors = _deleted_earlier(engine, store, part, creator_id, errors, verify=verify)
    if not eligible:
        return _outcome([], 0, errors, {}, set(), earlier, verify)

    # 2. Objects. A video whose objects could not all be removed keeps its tombstone.
    failures = _delete_objects(store, eligible, ticker, done_before=len(errors))
    removed: list[_Row] = []
    for row in eligible:
        failed_keys = [key for key in row.keys if key in failures]
        if failed_keys:
            detail = "; ".join(f"{key}: {failures[key]}" for key in failed_keys)
            errors.append(ItemError(row.id, STORAGE_ERROR, f"left as 'deleting' for a retry: {detail}"))
        else:
            removed.append(row)
    # The proof, part one: storage is asked again what is left of each video.
    proof: dict[str, dict] = {}
    if verify and removed:
        left = store.present([key for row in removed for key in row.keys])
        confirmed: list[_Row] = []
        for row in removed:
            still = [key for key in row.keys if key in left]
            if still:
                errors.append(ItemError(row.id, NOT_VERIFIED, "still in storage after its delete, left as 'deleting' "
                                                              f"for cleanup or a rerun: {', '.join(still)}"))
            else:
                confirmed.append(row)
                proof[row.id] = {"objects_absent": len(row.keys)}
        removed = confirmed
    if not removed:
        return _outcome([], 0, errors, proof, set(), earlier, verify)

    # The evidence is written before the rows go: if this write fails the batch fails,
    # the tombstones stay, and a retry writes it again.
    deleted_at = datetime.now(UTC).isoformat()
    part.write(_records(operation_id, creator_id, removed, deleted_at, proof))

    # 3. Rows (chunks cascade). Only rows still tombstoned by a delete are removed; a
    # row that another operation removed meanwhile is not counted here.
    deleted: set[str] = set()
    with engine.begin() as conn:
        set_lock_timeout(conn, lock_timeout_ms)
        for part_ids in chunked([row.id for row in removed]):
            result = conn.execute(
                delete(Video)
                .where(
                    Video.creator_id == creator_id,
                    Video.id.in_(part_ids),
                    # `status || ''` keeps the planner off the (creator_id, status) index:
                    # it would scan every tombstone of the creator for each batch.
                    Video.status.concat("") == "deleting",
                )
                .returning(Video.id)
            )
            deleted.update(result.scalars())
    gone_elsewhere = [row for row in removed if row.id not in deleted]
    for row in gone_elsewhere:
        errors.append(ItemError(row.id, NOT_FOUND, "already deleted by another operation"))
    mine = [row for row in removed if row.id in deleted]
    rows_absent: set[str] = set()
    if verify and mine:
        # The proof, part two: the database is asked again for the rows and their chunks.
        rows_absent = _rows_absent(engine, [row.id for row in mine])
        for row in mine:
            proof[row.id].update(row_absent=row.id in rows_absent, chunks_absent=row.id in rows_absent)
            if row.id not in rows_absent:
                errors.append(ItemError(row.id, NOT_VERIFIED, "its row or transcript chunks are still in the "
                                                              "database after its delete"))
    if gone_elsewhere or verify:
        part.write(_records(operation_id, creator_id, mine, deleted_at, proof), drop=[row.id for row in gone_elsewhere])
    done = [row for row in mine if not verify or row.id in rows_absent]
    objects = sum(len(row.keys) for row in mine)
    return _outcome(done, objects, errors, {vid: proof[vid] for vid in deleted if vid in proof}, rows_absent, earlier,
                    verify)


def _outcome(done: list[_Row], objects: int, errors: list[ItemError], proof: dict[str, dict], rows_absent: set[str],
             earlier: list[dict], verify: bool) -> BatchOutcome:
    """The batch's outcome: what this attempt deleted and what an earlier attempt of it did."""
    proof = {**proof, **{rec["video_id"]: rec["verified"] for rec in earlier if "verified" in rec}}
    rows_absent = rows_absent | {rec["video_id"] for rec in earlier}
    return BatchOutcome(
        succeeded=[row.id for row in done] + [rec["video_id"] for rec in earlier],
        errors=errors,
        objects=objects + sum(len(rec["objects"]) for rec in earlier),
        extra=_verified_counts(proof, rows_absent) if verify else {},
    )


def _deleted_earlier(engine: Engine, store: ObjectStore, part: AuditPart, creator_id: str, errors: list[ItemError],
                     *, verify: bool) -> tuple[list[dict], list[ItemError]]:
    """Among the ids found missing, those an earlier attempt of this batch deleted (its
    audit part has them, and their rows are gone): their records, proof completed, and
    the errors without them. Only read when an id is missing (one GET of the part)."""
    missing = [e.video_id for e in errors if e.error == NOT_FOUND]
    if not missing:
        return [], errors
    ours = {vid: part.records[vid] for vid in missing
            if vid in part.records and part.records[vid].get("creator_id") == creator_id}
    if not ours:
        return [], errors
    gone = _rows_absent(engine, list(ours))  # the row of one deleted earlier cannot come back
    ours = {vid: record for vid, record in ours.items() if vid in gone}
    if not ours:
        return [], errors
    errors = [e for e in errors if not (e.error == NOT_FOUND and e.video_id in ours)]
    unproven = {vid: record for vid, record in ours.items() if not record.get("verified", {}).get("row_absent")}
    if verify and unproven:  # the attempt died between its row delete and its proof
        left = store.present([key for record in unproven.values() for key in record["objects"]])
        for vid, record in unproven.items():
            still = [key for key in record["objects"] if key in left]
            if still:  # not ours to count: an object came back since
                errors.append(ItemError(vid, NOT_VERIFIED, f"deleted, yet in storage again: {', '.join(still)}"))
                del ours[vid]
            else:
                record["verified"] = {"objects_absent": len(record["objects"]), "row_absent": True,
                                      "chunks_absent": True}
        part.write([record for vid, record in ours.items() if vid in unproven])
    log.info("batch %s: %s videos were deleted by an earlier attempt of it", part.key, len(ours))
    return list(ours.values()), errors


def _rows_absent(engine: Engine, ids: list[str]) -> set[str]:
    """Which of ``ids`` have neither a row nor a transcript chunk left, anywhere."""
    present: set[str] = set()
    with engine.connect() as conn:
        for part in chunked(ids):
            present.update(conn.execute(select(Video.id).where(Video.id.in_(part))).scalars())
            present.update(conn.execute(select(VideoChunk.video_id).distinct()
                                        .where(VideoChunk.video_id.in_(part))).scalars())
    return set(ids) - present


def _verified_counts(proof: dict[str, dict], rows_absent: set[str]) -> dict[str, dict[str, int]]:
    """The batch's ``verified`` counts: videos proven gone (objects and row), objects and
    rows positively confirmed absent."""
    return {"verified": {
        "videos": sum(1 for vid in proof if vid in rows_absent),
        "objects_absent": sum(entry.get("objects_absent", 0) for entry in proof.values()),
        "rows_absent": len(rows_absent),
    }}


FIRST_SLICE = 100  # videos whose objects go first (progress shows early)
SLICE_TARGET_S = 1.0  # then slices of about this long...
MIN_SLICE_KEYS = 10_000  # ...and at least this many keys (S3: 10 DeleteObjects of 1000 in flight)


def _delete_objects(store: ObjectStore, rows: list[_Row], ticker: Ticker | None, *, done_before: int) -> dict[str, str]:
    """``store.delete_many`` over the rows' keys: ``{key: error}`` for those not deleted.

    Without a ticker, one call. With one, a first slice of ``FIRST_SLICE`` videos, then
    slices sized to take about ``SLICE_TARGET_S`` but never under ``MIN_SLICE_KEYS`` keys
    (so S3 keeps its requests in flight), ticking after each."""
    if ticker is None:
        return store.delete_many([key for row in rows for key in row.keys])
    keys_per_video = max(1.0, sum(len(row.keys) for row in rows) / max(len(rows), 1))
    floor = math.ceil(MIN_SLICE_KEYS / keys_per_video)
    failures: dict[str, str] = {}
    start, size = 0, FIRST_SLICE
    while start < len(rows):
        piece = rows[start : start + size]
        began = time.monotonic()
        failures.update(store.delete_many([key for row in piece for key in row.keys]))
        took = max(time.monotonic() - began, 1e-3)
        start += len(piece)
        ticker.done(done_before + start)
        size = max(floor, int(len(piece) * SLICE_TARGET_S / took))
    return failures


def _records(operation_id: str, creator_id: str, rows: Sequence[_Row], deleted_at: str,
             proof: dict[str, dict] | None = None) -> list[dict]:
    return [{"video_id": row.id, "creator_id": creator_id, "objects": list(row.keys), "deleted_at": deleted_at,
             "operation_id": operation_id, **({"verified": proof[row.id]} if proof and row.id in proof else {})}
            for row in rows]


class AuditPart:
    """One batch's part of a delete's audit manifest (``audit/delete/{op}/batch-N.jsonl``,
    one JSON record per video). Writes merge with what is there: a retried batch keeps
    what its earlier attempt recorded, and a cleanup batch that finishes several
    creators' tombstones (one delete call each) keeps them all."""

    def __init__(self, store: ObjectStore, operation_id: str, batch_index: int) -> None:
        self.store, self.key = store, manifest_part_key(operation_id, batch_index)
        self._records: dict[str, dict] | None = None

    @property
    def records(self) -> dict[str, dict]:
        """video id -> record, as stored (read once)."""
        if self._records is None:
            try:
                data = self.store.get(self.key)
            except FileNotFoundError:
                data = b""
            self._records = {}
            for line in data.decode().splitlines():
                if line:
                    record = json.loads(line)
                    self._records[record["video_id"]] = record
        return self._records

    def write(self, records: Sequence[dict], *, drop: Sequence[str] = ()) -> None:
        """Add (or replace) ``records``, remove those of ``drop``; one atomic put."""
        merged = dict(self.records)
        for vid in drop:
            merged.pop(vid, None)
        merged.update({record["video_id"]: record for record in records})
        lines = [json.dumps(record, ensure_ascii=False) for record in merged.values()]
        self.store.put(self.key, ("\n".join(lines) + "\n").encode() if lines else b"")
        self._records = merged


def write_manifest(
    store: ObjectStore,
    *,
    operation_id: str,
    creator_id: str,
    started_at: str,
    finished_at: str,
    videos_deleted: int,
    objects_removed: int,
    batches: int,
) -> str:
    """The manifest's index: which parts hold the per-video records of this delete."""
    candidates = [manifest_part_key(operation_id, index) for index in range(batches)]
    sizes = store.sizes(candidates)  # concurrent HEADs on S3, not one at a time
    parts = [key for key in candidates if sizes.get(key) is not None]
    key = manifest_key(operation_id)
    document = {
        "operation": "delete",
        "operation_id": operation_id,
        "creator_id": creator_id,
        "started_at": started_at,
        "finished_at": finished_at,
        "videos_deleted": videos_deleted,
        "objects_removed": objects_removed,
        "parts": parts,
        "format": "each part is JSON lines: video_id, creator_id, objects, deleted_at, operation_id, and verified: "
                  "{objects_absent, row_absent, chunks_absent}, what was read back as gone after the delete",
    }
    store.put(key, json.dumps(document, indent=2).encode())
    return key


def read_manifest_records(store: ObjectStore, operation_id: str) -> list[dict]:
    """Every per-video record of a delete's manifest (for audits and tests)."""
    document = json.loads(store.get(manifest_key(operation_id)))
    records = []
    for part in document["parts"]:
        records.extend(json.loads(line) for line in store.get(part).decode().splitlines() if line)
    return records
