"""The undo window in the domain (no Prefect): trash, restore, purge, and what every
other operation sees of a trashed video. SQLite and PostgreSQL (``library``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from videolib.db.models import Video, VideoChunk
from videolib.delete import delete_batch, read_manifest_records, write_manifest
from videolib.operation import NOT_FOUND
from videolib.selection import count_creator_videos, iter_creator_video_ids, resolve_owned
from videolib.trash import find_trash, restore_batch, trash_batch, trashed_by

OP = str(uuid.uuid4())
HOUR = 3600.0


def _snapshot(engine, ids):
    with engine.connect() as conn:
        rows = conn.execute(select(Video).where(Video.id.in_(ids)).order_by(Video.id)).all()
        chunks = conn.execute(select(VideoChunk.video_id, func.count()).where(VideoChunk.video_id.in_(ids))
                              .group_by(VideoChunk.video_id)).all()
        return ([(r.id, r.status, r.updated_at, r.embedded_at, r.processing_by, r.storage_key) for r in rows],
                sorted(chunks))


def _age_trash(engine, ids, seconds):
    with engine.begin() as conn:
        conn.execute(update(Video).where(Video.id.in_(ids)).values(
            trashed_at=datetime.now(UTC) - timedelta(seconds=seconds)))


def test_trash_hides_videos_and_restore_gives_them_back_unchanged(library):
    library.seed(20, creators=2, chunks_per_video=2, transcript_ratio=1.0)
    mine, theirs = library.ids("creator-001"), library.ids("creator-002")
    doomed = mine[:5]
    before = _snapshot(library.engine, doomed)
    keys = [k for row in before[0] for k in [row[5]] if k]
    outcome = trash_batch(library.engine, creator_id="creator-001", video_ids=doomed + theirs[:1] + [str(uuid.uuid4())],
                          operation_id=OP)
    assert sorted(outcome.succeeded) == sorted(doomed) and outcome.extra == {"trashed": 5}
    assert sorted(e.error for e in outcome.errors) == [NOT_FOUND, NOT_FOUND]
    # Gone for every selection; kept in the database and in storage.
    assert set(iter_creator_video_ids(library.engine, "creator-001")) == set(mine) - set(doomed)
    assert count_creator_videos(library.engine, "creator-001") == len(mine) - 5
    owned, missing = resolve_owned(library.engine, "creator-001", doomed[:2])
    assert owned == [] and [e.error for e in missing] == [NOT_FOUND, NOT_FOUND]
    assert all(library.store.exists(k) for k in keys)
    assert trashed_by(library.engine, "creator-001", OP) == sorted(doomed)
    # Trashing again: not_found (it is gone); deleting it: not_found, nothing removed.
    again = trash_batch(library.engine, creator_id="creator-001", video_ids=doomed[:1], operation_id=str(uuid.uuid4()))
    assert again.succeeded == [] and again.errors[0].error == NOT_FOUND
    deleted = delete_batch(library.engine, library.store, creator_id="creator-001", video_ids=doomed[:1],
                           operation_id=str(uuid.uuid4()), batch_index=0)
    assert deleted.succeeded == [] and deleted.errors[0].error == NOT_FOUND and all(library.store.exists(k) for k in keys)
    # A retry of the same batch counts what it trashed the first time.
    retry = trash_batch(library.engine, creator_id="creator-001", video_ids=doomed, operation_id=OP)
    assert sorted(retry.succeeded) == sorted(doomed)
    # Restore: back exactly as before; another creator's and unknown ids are not_found.
    restored = restore_batch(library.engine, creator_id="creator-001", video_ids=doomed + theirs[:1], grace_s=HOUR)
    assert sorted(restored.succeeded) == sorted(doomed) and [e.error for e in restored.errors] == [NOT_FOUND]
    assert _snapshot(library.engine, doomed) == before
    assert set(iter_creator_video_ids(library.engine, "creator-001")) == set(mine)


def test_past_the_window_restore_refuses_and_the_purge_deletes_with_proof(library):
    library.seed(10, creators=1)
    mine = library.ids("creator-001")
    trash_batch(library.engine, creator_id="creator-001", video_ids=mine[:4], operation_id=OP)
    _age_trash(library.engine, mine[:2], 2 * HOUR)
    now = datetime.now(UTC)
    assert find_trash(library.engine, grace_s=HOUR, now=now) == sorted(["creator-001", v] for v in mine[:2])
    late = restore_batch(library.engine, creator_id="creator-001", video_ids=mine[:3], grace_s=HOUR)
    assert late.succeeded == [mine[2]] and {e.video_id: e.error for e in late.errors} == {
        mine[0]: "not_restorable", mine[1]: "not_restorable"}
    purge_op = str(uuid.uuid4())
    # The purge takes only trashed videos past the window: a live one and a young one stay.
    purged = delete_batch(library.engine, library.store, creator_id="creator-001",
                          video_ids=mine[:4] + [mine[5]], operation_id=purge_op, batch_index=0,
                          purge_before=now - timedelta(seconds=HOUR))
    assert sorted(purged.succeeded) == sorted(mine[:2])
    assert purged.extra["verified"] == {"videos": 2, "objects_absent": 4, "rows_absent": 2}
    with library.engine.connect() as conn:
        left = dict(conn.execute(select(Video.id, Video.status).where(Video.id.in_(mine[:6]))).all())
    assert set(left) == set(mine[2:6]) and left[mine[3]] == "trashed" and left[mine[5]] != "trashed"
    write_manifest(library.store, operation_id=purge_op, creator_id="creator-001", started_at="s", finished_at="f",
                   videos_deleted=2, objects_removed=4, batches=1)
    assert sorted(r["video_id"] for r in read_manifest_records(library.store, purge_op)) == sorted(mine[:2])


def test_a_restore_racing_a_purge_one_wins(sqlite_library):
    """The purge's compare-and-set: a video restored after the purge planned it stays."""
    lib = sqlite_library
    lib.seed(4, creators=1)
    mine = lib.ids("creator-001")
    trash_batch(lib.engine, creator_id="creator-001", video_ids=mine, operation_id=OP)
    planned = find_trash(lib.engine, grace_s=0, now=datetime.now(UTC) + timedelta(seconds=1))
    assert len(planned) == 4
    restore_batch(lib.engine, creator_id="creator-001", video_ids=mine[:1], grace_s=HOUR)
    purged = delete_batch(lib.engine, lib.store, creator_id="creator-001", video_ids=[v for _, v in planned],
                          operation_id=str(uuid.uuid4()), batch_index=0,
                          purge_before=datetime.now(UTC) + timedelta(seconds=1))
    assert sorted(purged.succeeded) == sorted(mine[1:]) and [e.video_id for e in purged.errors] == [mine[0]]
    assert lib.ids("creator-001") == [mine[0]]


class _TrashMidway:
    """A ticker that trashes the batch's first video once the reprocess has claimed it
    and is embedding (a delete under the window landing mid-batch)."""

    def __init__(self, engine, video_id):
        self.engine, self.video_id, self.fired = engine, video_id, False

    def done(self, items: int) -> None:
        if not self.fired:
            self.fired = True
            with self.engine.connect() as conn:
                assert conn.execute(select(Video.status).where(Video.id == self.video_id)).scalar_one() == "processing"
            trash_batch(self.engine, creator_id="creator-001", video_ids=[self.video_id], operation_id=OP)

    def stopping(self) -> bool:
        return False


def test_a_video_trashed_under_a_reprocess_claim_comes_back_free(library):
    """A delete under the window takes a video a reprocess holds: the reprocess writes
    nothing for it (its old chunks stay), and a restore gives it back released (`ready`,
    no holder), not as a claim of a run that may be long gone; the next reprocess takes it."""
    from videolib.embedders import get_embedder
    from videolib.reprocess import reprocess_batch

    library.seed(6, creators=1, chunks_per_video=2, transcript_ratio=1.0)
    ids = library.ids("creator-001")
    with library.engine.begin() as conn:  # all of them embedded once (as after an earlier reprocess)
        conn.execute(update(Video).where(Video.id.in_(ids)).values(embedded_at=datetime.now(UTC)))
    victim = ids[0]
    before = _snapshot(library.engine, [victim])
    reprocess_op = str(uuid.uuid4())
    outcome = reprocess_batch(library.engine, get_embedder("hashing"), creator_id="creator-001", video_ids=ids,
                              operation_id=reprocess_op, ticker=_TrashMidway(library.engine, victim))
    assert sorted(outcome.succeeded) == sorted(ids[1:])
    assert [(e.video_id, e.error) for e in outcome.errors] == [(victim, NOT_FOUND)]
    with library.engine.connect() as conn:
        row = conn.execute(select(Video).where(Video.id == victim)).one()
    assert (row.status, row.trashed_from, row.processing_by) == ("trashed", "processing", reprocess_op)
    assert _snapshot(library.engine, [victim])[1] == before[1]  # its chunks untouched
    restored = restore_batch(library.engine, creator_id="creator-001", video_ids=[victim], grace_s=HOUR)
    assert restored.succeeded == [victim]
    with library.engine.connect() as conn:
        row = conn.execute(select(Video).where(Video.id == victim)).one()
    assert (row.status, row.processing_by, row.trashed_from, row.trashed_by) == ("ready", None, None, None)
    again = reprocess_batch(library.engine, get_embedder("hashing"), creator_id="creator-001", video_ids=[victim],
                            operation_id=str(uuid.uuid4()))
    assert again.succeeded == [victim] and again.errors == []
