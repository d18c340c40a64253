"""The undo window of deletes (``BULKOPS_DELETE_GRACE``).

With a window, a delete does not remove anything at once: :func:`trash_batch` moves
the creator's videos to ``trashed`` (rows, chunks and objects kept; the status they
had, when, and which delete, in ``trashed_from``, ``trashed_at``, ``trashed_by``). A
trashed video is gone for every later operation: selections, exports, reprocess and
search do not see it, and listing its id is ``not_found``. Until the window closes,
:func:`restore_batch` gives it back exactly as it was; after, cleanup purges it
(:func:`find_trash`, then ``videolib.delete.delete_batch`` in purge mode, with the
audit manifest and the read-back proof of any delete).

Every change is a compare-and-set on the status: a restore and a purge racing for one
video cannot both win.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, case, select, update

from videolib.db.engine import set_lock_timeout
from videolib.db.models import Video
from videolib.delete import check_video_keys
from videolib.ids import RequestError
from videolib.operation import NOT_FOUND, UNSAFE_KEY, BatchOutcome, ItemError
from videolib.selection import chunked
from videolib.takeover import released_status
from videolib.storage import UnsafeKeyError

TRASHED = "trashed"
NOT_RESTORABLE = "not_restorable"


def trash_batch(engine: Engine, *, creator_id: str, video_ids: Sequence[str], operation_id: str,
                lock_timeout_ms: int = 5000, now: datetime | None = None) -> BatchOutcome:
    """Trash one batch of the creator's videos; ``not_found`` for ids that are not the
    creator's, already trashed, or being deleted (a tombstone goes its own way: a
    delete without the window finishes it). Idempotent for the same operation: a
    retry of the batch counts what it trashed the first time."""
    ids = list(dict.fromkeys(video_ids))
    now = now or datetime.now(UTC)
    trashed: set[str] = set()
    unsafe: dict[str, str] = {}
    with engine.begin() as conn:
        set_lock_timeout(conn, lock_timeout_ms)
        for part in chunked(ids):
            # As a delete would: a video whose stored keys lie outside its own folder is
            # refused (its purge could not delete them) and left unchanged.
            for vid, *keys in conn.execute(select(Video.id, Video.storage_key, Video.thumbnail_key).where(
                    Video.creator_id == creator_id, Video.id.in_(part))):
                try:
                    check_video_keys(creator_id, vid, *keys)
                except UnsafeKeyError as exc:
                    unsafe[vid] = str(exc)
            safe = [vid for vid in part if vid not in unsafe]
            trashed.update(conn.execute(
                update(Video)
                .where(Video.creator_id == creator_id, Video.id.in_(safe), Video.status.not_in((TRASHED, "deleting")))
                .values(status=TRASHED, trashed_from=Video.status, trashed_at=now, trashed_by=operation_id)
                .returning(Video.id)).scalars())
            rest = [vid for vid in part if vid not in trashed]
            if rest:  # a retry of this batch: what this operation trashed already is its own
                trashed.update(conn.execute(select(Video.id).where(
                    Video.creator_id == creator_id, Video.id.in_(rest), Video.status == TRASHED,
                    Video.trashed_by == operation_id)).scalars())
    errors = [ItemError(vid, UNSAFE_KEY, f"stored object key refused, video left unchanged: {unsafe[vid]}")
              if vid in unsafe else ItemError(vid, NOT_FOUND, "no such video for this creator")
              for vid in ids if vid not in trashed]
    return BatchOutcome(succeeded=[vid for vid in ids if vid in trashed], errors=errors,
                        extra={"trashed": len(trashed)})


def restore_batch(engine: Engine, *, creator_id: str, video_ids: Sequence[str], grace_s: float,
                  now: datetime | None = None, dry_run: bool = False) -> BatchOutcome:
    """Give back the creator's trashed videos whose window is still open, with the
    status they had; ``not_restorable`` past the window, ``not_found`` for the rest
    (not the creator's, unknown, or not trashed)."""
    ids = list(dict.fromkeys(video_ids))
    now = now or datetime.now(UTC)
    opened_after = now - timedelta(seconds=grace_s)
    restored: set[str] = set()
    closed: set[str] = set()
    with engine.begin() as conn:
        for part in chunked(ids):
            open_window = [Video.creator_id == creator_id, Video.id.in_(part), Video.status == TRASHED,
                           Video.trashed_at >= opened_after]
            if dry_run:
                restored.update(conn.execute(select(Video.id).where(*open_window)).scalars())
            else:
                restored.update(conn.execute(
                    update(Video).where(*open_window)
                    .values(status=_restored_status(), processing_by=None, trashed_from=None, trashed_at=None,
                            trashed_by=None)
                    .returning(Video.id)).scalars())
            closed.update(conn.execute(select(Video.id).where(
                Video.creator_id == creator_id, Video.id.in_([vid for vid in part if vid not in restored]),
                Video.status == TRASHED)).scalars())
    errors = []
    for vid in ids:
        if vid in closed:
            errors.append(ItemError(vid, NOT_RESTORABLE, "its undo window has closed (BULKOPS_DELETE_GRACE): it is "
                                                         "purged, or about to be"))
        elif vid not in restored:
            errors.append(ItemError(vid, NOT_FOUND, "no trashed video with this id for this creator"))
    return BatchOutcome(succeeded=[vid for vid in ids if vid in restored], errors=errors)


def _restored_status():
    """The status a restore gives back (SQL): the one the video had when trashed, but
    for a reprocess's claim (``processing`` with a holder; ``processing`` without one
    is the platform's own pipeline, given back as it was). Trashing ended the claim:
    the reprocess wrote nothing for the video, which has its old chunks. So it comes
    back as cleanup releases a claim, ``ready`` when it was ever embedded, ``failed``
    when not; never as a claim of a run that may be long gone."""
    claim = and_(Video.trashed_from == "processing", Video.processing_by.is_not(None))
    return case((~claim, Video.trashed_from), else_=released_status())


def trashed_by(engine: Engine, creator_id: str, operation_id: str, *,
               opened_after: datetime | None = None) -> list[str]:
    """The ids a delete operation trashed that are still in the trash (those trashed
    after ``opened_after``: whose window is still open)."""
    since = [Video.trashed_at >= opened_after] if opened_after is not None else []
    with engine.connect() as conn:
        return list(conn.execute(select(Video.id).where(
            Video.creator_id == creator_id, Video.status == TRASHED, Video.trashed_by == operation_id, *since)
            .order_by(Video.id)).scalars())


def restorable_of(engine: Engine, creator_id: str, delete_operation: str, *, grace_s: float,
                  record: Callable[[str], dict | None]) -> list[str]:
    """What ``restore --operation`` takes: the videos a delete trashed whose window is
    still open. ``record(id)`` reads the delete's result document. Refused with
    ``window_closed`` when it trashed videos and none can come back, ``empty_selection``
    when all of them are back already, ``bad_selection`` when it names no delete that
    trashed anything of this creator's."""
    try:
        delete_operation = str(uuid.UUID(str(delete_operation)))
    except ValueError:
        raise RequestError("bad_selection", f"--operation must be a delete's operation id (a UUID); got "
                                            f"{str(delete_operation)[:40]!r}") from None
    now = datetime.now(UTC)
    ids = trashed_by(engine, creator_id, delete_operation, opened_after=now - timedelta(seconds=grace_s))
    if ids:
        return ids
    if trashed_by(engine, creator_id, delete_operation):
        raise RequestError("window_closed", f"the undo window of delete {delete_operation} has closed "
                                            "(BULKOPS_DELETE_GRACE): its videos are purged, or about to be")
    document = record(delete_operation) or {}
    if document.get("operation") != "delete" or document.get("creator_id") != creator_id or not document.get("trashed"):
        raise RequestError("bad_selection", f"operation {delete_operation} is not a delete that trashed videos of "
                                            f"creator {creator_id!r}")
    purge_after = document.get("purge_after") or ""
    if purge_after and datetime.fromisoformat(purge_after.replace("Z", "+00:00")) > now:
        raise RequestError("empty_selection", f"nothing to restore: every video delete {delete_operation} trashed "
                                              "is back already")
    raise RequestError("window_closed", f"the undo window of delete {delete_operation} has closed "
                                        f"({purge_after or 'BULKOPS_DELETE_GRACE'}): its videos are purged")


def find_trash(engine: Engine, *, grace_s: float, now: datetime) -> list[list[str]]:
    """``[creator_id, video_id]`` of every trashed video whose window has closed."""
    query = (select(Video.creator_id, Video.id)
             .where(Video.trashed_at < now - timedelta(seconds=grace_s), Video.status == TRASHED)
             .order_by(Video.creator_id, Video.id))
    with engine.connect() as conn:
        return [[creator, vid] for creator, vid in conn.execute(query)]
