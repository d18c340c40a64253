"""Bulk delete in the domain (no Prefect): tombstones, ownership, keys, faults, concurrency.

Runs on SQLite and on a real PostgreSQL server (``library`` is parametrized), with real
files; one case runs on the loopback S3 endpoint.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update

from videolib.db.models import Video, VideoChunk
from videolib.delete import (
    check_video_keys,
    delete_batch,
    manifest_part_key,
    plan_delete_batch,
    read_manifest_records,
    write_manifest,
)
from tests.faults import CrashingStore
from videolib.storage import UnsafeKeyError

OP = "11111111-1111-4111-8111-111111111111"


def _rows(engine, ids):
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(select(Video).where(Video.id.in_(ids)))}


def _chunks(engine, ids):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(VideoChunk).where(VideoChunk.video_id.in_(ids))).scalar_one()


def _keys(engine, ids):
    rows = _rows(engine, ids)
    return [k for r in rows.values() for k in (r.storage_key, r.thumbnail_key) if k]


def test_delete_removes_rows_objects_and_chunks(library):
    library.seed(30, creators=2, chunks_per_video=3, transcript_ratio=1.0)
    ids = library.ids("creator-001")[:10]
    keys = _keys(library.engine, ids)
    assert len(keys) == 20 and _chunks(library.engine, ids) == 30
    store = library.store
    assert all(store.exists(k) for k in keys)

    outcome = delete_batch(library.engine, store, creator_id="creator-001", video_ids=ids, operation_id=OP, batch_index=0)

    assert sorted(outcome.succeeded) == sorted(ids) and outcome.errors == [] and outcome.objects == 20
    assert outcome.extra["verified"] == {"videos": 10, "objects_absent": 20, "rows_absent": 10}
    assert _rows(library.engine, ids) == {}
    assert _chunks(library.engine, ids) == 0, "chunks must cascade with the row"
    assert not any(store.exists(k) for k in keys)
    # Empty per-video folders are gone too (local storage).
    assert store.list_keys(f"videos/creator-001/{ids[0]}") == []
    # The other creator is untouched.
    assert len(library.ids("creator-002")) > 0


def test_foreign_and_unknown_ids_are_not_found_and_untouched(library):
    library.seed(20, creators=2)
    mine = library.ids("creator-001")[:3]
    theirs = library.ids("creator-002")[:3]
    unknown = str(uuid.uuid4())
    before = {vid: r.status for vid, r in _rows(library.engine, theirs).items()}

    outcome = delete_batch(
        library.engine, library.store, creator_id="creator-001", video_ids=mine + theirs + [unknown],
        operation_id=OP, batch_index=0,
    )

    assert sorted(outcome.succeeded) == sorted(mine)
    errors = {e.video_id: e for e in outcome.errors}
    assert set(errors) == set(theirs) | {unknown}
    assert {e.error for e in errors.values()} == {"not_found"}
    # Never "belongs to someone else": the same words for foreign and unknown ids.
    assert len({e.detail for e in errors.values()}) == 1
    after = _rows(library.engine, theirs)
    assert {vid: r.status for vid, r in after.items()} == before
    assert all(library.store.exists(k) for k in _keys(library.engine, theirs))


@pytest.mark.parametrize(
    "bad_key",
    [
        "videos/creator-002/{vid}/source.mp4",  # another creator's folder
        "videos/creator-001/{other}/source.mp4",  # another video's folder
        "videos/creator-001/{vid}/../{other}/source.mp4",  # climbs out
        "/etc/passwd",
        "reports/important.csv",
        "videos/creator-001/{vid}/",  # the folder itself
    ],
)
def test_unsafe_key_refused_and_video_unchanged(sqlite_library, bad_key):
    lib = sqlite_library
    lib.seed(10, creators=1)
    vid, other = lib.ids("creator-001")[:2]
    key = bad_key.format(vid=vid, other=other)
    with lib.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id == vid).values(storage_key=key))
    other_keys = _keys(lib.engine, [other])

    outcome = delete_batch(lib.engine, lib.store, creator_id="creator-001", video_ids=[vid, other],
                           operation_id=OP, batch_index=0)

    assert outcome.succeeded == [other]
    assert [(e.video_id, e.error) for e in outcome.errors] == [(vid, "unsafe_key")]
    row = _rows(lib.engine, [vid])[vid]
    assert row.status != "deleting" and row.storage_key == key
    assert lib.store.exists(f"videos/creator-001/{vid}/thumbnail.jpg"), "nothing of an unsafe video is touched"
    assert not any(lib.store.exists(k) for k in other_keys)


def test_check_video_keys():
    vid = str(uuid.uuid4())
    assert check_video_keys("c1", vid, f"videos/c1/{vid}/a.mp4", None) == (f"videos/c1/{vid}/a.mp4",)
    for bad in (f"videos/c1/{vid}", f"videos/c2/{vid}/a.mp4", f"videos/c1/{vid}/../x", f"videos/c1/{vid}//a"):
        with pytest.raises(UnsafeKeyError):
            check_video_keys("c1", vid, bad)


def test_delete_is_idempotent(library):
    library.seed(10, creators=1)
    ids = library.ids("creator-001")[:5]
    first = delete_batch(library.engine, library.store, creator_id="creator-001", video_ids=ids,
                         operation_id=OP, batch_index=0)
    again = delete_batch(library.engine, library.store, creator_id="creator-001", video_ids=ids,
                         operation_id=OP, batch_index=1)
    assert len(first.succeeded) == 5
    assert again.succeeded == [] and {e.error for e in again.errors} == {"not_found"}


def test_dry_run_plans_exactly_and_changes_nothing(library):
    library.seed(12, creators=1)
    ids = library.ids("creator-001")[:6]
    store = library.store
    keys = _keys(library.engine, ids)
    store.delete(keys[0])  # one object already missing: not counted
    expected_bytes = sum(store.size(k) for k in keys[1:])
    before = {vid: (r.status, r.updated_at) for vid, r in _rows(library.engine, ids).items()}

    plan = plan_delete_batch(library.engine, store, creator_id="creator-001", video_ids=ids + [str(uuid.uuid4())])

    assert sorted(plan.succeeded) == sorted(ids)
    assert plan.objects == len(keys) - 1 and plan.bytes == expected_bytes
    assert [e.error for e in plan.errors] == ["not_found"]
    assert {vid: (r.status, r.updated_at) for vid, r in _rows(library.engine, ids).items()} == before
    assert all(store.exists(k) for k in keys[1:])
    assert store.list_keys("audit") == []


def _assert_converged_states(lib, ids):
    """Every video is gone with its objects, 'deleting', or untouched; never live without its files."""
    rows = _rows(lib.engine, ids)
    store = lib.store
    for vid in ids:
        row = rows.get(vid)
        keys = [f"videos/creator-001/{vid}/source.mp4", f"videos/creator-001/{vid}/thumbnail.jpg"]
        if row is None:
            assert not any(store.exists(k) for k in keys)
        elif row.status != "deleting":
            assert all(store.exists(k) for k in keys), f"live video {vid} lost a file"


@pytest.mark.parametrize("fault", ["objects", "manifest"])
def test_crash_leaves_tombstones_and_a_rerun_converges(library, fault):
    library.seed(16, creators=1)
    ids = library.ids("creator-001")[:8]
    chunk_count = _chunks(library.engine, ids)
    crashing = CrashingStore(
        library.store, fail_delete=fault == "objects", fail_put_prefix="audit/" if fault == "manifest" else None
    )
    with pytest.raises(ConnectionError):
        delete_batch(library.engine, crashing, creator_id="creator-001", video_ids=ids, operation_id=OP, batch_index=0)

    rows = _rows(library.engine, ids)
    assert len(rows) == 8 and {r.status for r in rows.values()} == {"deleting"}
    assert _chunks(library.engine, ids) == chunk_count
    _assert_converged_states(library, ids)

    # A later delete of the same ids (another operation) takes the tombstones over.
    other_op = str(uuid.uuid4())
    outcome = delete_batch(library.engine, library.store, creator_id="creator-001", video_ids=ids,
                           operation_id=other_op, batch_index=0)
    assert sorted(outcome.succeeded) == sorted(ids) and outcome.errors == []
    assert _rows(library.engine, ids) == {} and _chunks(library.engine, ids) == 0
    _assert_converged_states(library, ids)


def test_storage_error_keeps_tombstone_and_reports_item(library):
    library.seed(6, creators=1)
    ids = library.ids("creator-001")[:3]
    bad = f"videos/creator-001/{ids[0]}/source.mp4"
    outcome = delete_batch(library.engine, CrashingStore(library.store, fail_keys={bad}), creator_id="creator-001",
                           video_ids=ids, operation_id=OP, batch_index=0)
    assert sorted(outcome.succeeded) == sorted(ids[1:])
    assert [(e.video_id, e.error) for e in outcome.errors] == [(ids[0], "storage_error")]
    assert "AccessDenied" in outcome.errors[0].detail
    assert _rows(library.engine, [ids[0]])[ids[0]].status == "deleting"
    # Retried with a healthy store, it converges.
    retry = delete_batch(library.engine, library.store, creator_id="creator-001", video_ids=[ids[0]],
                         operation_id=OP, batch_index=0)
    assert retry.succeeded == [ids[0]]
    # The batch's audit part keeps what the first call recorded beside what the retry did.
    assert sorted(_part(library.store, OP, 0)) == sorted(ids)


def _part(store, operation_id, batch_index) -> dict[str, dict]:
    """video id -> record of one batch's audit part."""
    lines = store.get(manifest_part_key(operation_id, batch_index)).decode().splitlines()
    return {record["video_id"]: record for record in map(json.loads, filter(None, lines))}


@pytest.mark.parametrize("died", ["before_its_proof", "after_everything"])
def test_a_retried_batch_counts_what_its_earlier_attempt_deleted(library, died):
    """Prefect retries a batch task whole. An attempt that died after its row delete (in
    its second audit write, or while reporting its state) leaves the retry ids that are
    gone: they are this batch's deletions, with their proof, not ``not_found``."""
    library.seed(12, creators=1, chunks_per_video=2, transcript_ratio=1.0)
    ids = library.ids("creator-001")[:6]
    keys = _keys(library.engine, ids)
    if died == "before_its_proof":
        crashing = CrashingStore(library.store, fail_put_prefix="audit/", fail_put_number=2)
        with pytest.raises(ConnectionError):
            delete_batch(library.engine, crashing, creator_id="creator-001", video_ids=ids, operation_id=OP,
                         batch_index=3)
        assert _rows(library.engine, ids) == {}, "the rows went before it died"
        assert not any("verified" in record and "row_absent" in record["verified"]
                       for record in _part(library.store, OP, 3).values())
    else:
        first = delete_batch(library.engine, library.store, creator_id="creator-001", video_ids=ids,
                             operation_id=OP, batch_index=3)
        assert sorted(first.succeeded) == sorted(ids)

    unknown = str(uuid.uuid4())
    retry = delete_batch(library.engine, library.store, creator_id="creator-001", video_ids=ids + [unknown],
                         operation_id=OP, batch_index=3)
    assert sorted(retry.succeeded) == sorted(ids)
    assert [(e.video_id, e.error) for e in retry.errors] == [(unknown, "not_found")]
    assert retry.objects == len(keys) == 12
    assert retry.extra["verified"] == {"videos": 6, "objects_absent": 12, "rows_absent": 6}
    part = _part(library.store, OP, 3)
    assert sorted(part) == sorted(ids) and {k for r in part.values() for k in r["objects"]} == set(keys)
    assert all(r["verified"] == {"objects_absent": 2, "row_absent": True, "chunks_absent": True}
               for r in part.values())
    assert _chunks(library.engine, ids) == 0
    # Another operation finds them gone: not found, and nothing of theirs in this audit.
    other = str(uuid.uuid4())
    late = delete_batch(library.engine, library.store, creator_id="creator-001", video_ids=ids, operation_id=other,
                        batch_index=3)
    assert late.succeeded == [] and {e.error for e in late.errors} == {"not_found"}
    assert not library.store.exists(manifest_part_key(other, 3))


def test_a_cleanup_batch_of_several_creators_keeps_every_creators_audit_records(library):
    """Cleanup finishes the tombstones of several creators in one batch (one delete call
    per creator, one audit part): the part keeps them all."""
    from videolib.cleanup import Rules, finish_tombstones

    library.seed(8, creators=2)
    old = datetime.now(UTC) - timedelta(hours=2)
    items = [[creator, vid] for creator in ("creator-001", "creator-002") for vid in library.ids(creator)[:2]]
    with library.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id.in_([vid for _, vid in items]))
                     .values(status="deleting", updated_at=old))
    outcome = finish_tombstones(library.engine, library.store, items, Rules(now=time.time()), operation_id=OP,
                                batch_index=0, dry_run=False)
    assert sorted(outcome.succeeded) == sorted(vid for _, vid in items) and outcome.errors == []
    part = _part(library.store, OP, 0)
    assert sorted(part) == sorted(vid for _, vid in items)
    assert {vid: r["creator_id"] for vid, r in part.items()} == {vid: creator for creator, vid in items}


def test_concurrent_deletes_count_each_video_once(library):
    library.seed(60, creators=1, chunks_per_video=2, transcript_ratio=1.0)
    ids = library.ids("creator-001")
    overlap = ids[:40]
    results = {}
    barrier = threading.Barrier(4)

    def run(name, batch):
        barrier.wait()
        results[name] = delete_batch(library.engine, library.store, creator_id="creator-001", video_ids=batch,
                                     operation_id=str(uuid.uuid4()), batch_index=0)

    batches = {"a": overlap, "b": list(reversed(overlap)), "c": ids[20:60], "d": ids[::2]}
    threads = [threading.Thread(target=run, args=(name, batch)) for name, batch in batches.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    succeeded = [vid for r in results.values() for vid in r.succeeded]
    assert sorted(succeeded) == sorted(ids), "each video deleted and counted exactly once"
    for r in results.values():
        assert {e.error for e in r.errors} <= {"not_found"}
    assert _rows(library.engine, ids) == {} and _chunks(library.engine, ids) == 0


def test_manifest_records_what_was_deleted(sqlite_library):
    lib = sqlite_library
    lib.seed(8, creators=1)
    ids = lib.ids("creator-001")[:4]
    keys = set(_keys(lib.engine, ids))
    delete_batch(lib.engine, lib.store, creator_id="creator-001", video_ids=ids[:2], operation_id=OP, batch_index=0)
    delete_batch(lib.engine, lib.store, creator_id="creator-001", video_ids=ids[2:], operation_id=OP, batch_index=1)
    write_manifest(lib.store, operation_id=OP, creator_id="creator-001", started_at="s", finished_at="f",
                   videos_deleted=4, objects_removed=8, batches=2)
    records = read_manifest_records(lib.store, OP)
    assert sorted(r["video_id"] for r in records) == sorted(ids)
    assert {k for r in records for k in r["objects"]} == keys
    assert {r["operation_id"] for r in records} == {OP} and all(r["deleted_at"] for r in records)
    assert lib.store.exists(manifest_part_key(OP, 1))


def test_postgres_lock_timeout_fails_fast_instead_of_waiting(pg_library):
    from sqlalchemy.exc import OperationalError

    lib = pg_library
    lib.seed(4, creators=1)
    ids = lib.ids("creator-001")
    blocker = lib.engine.connect()
    tx = blocker.begin()
    blocker.execute(text("SELECT id FROM videos WHERE id = :id FOR UPDATE"), {"id": ids[0]})
    try:
        with pytest.raises(OperationalError, match="lock timeout"):
            delete_batch(lib.engine, lib.store, creator_id="creator-001", video_ids=ids, operation_id=OP,
                         batch_index=0, lock_timeout_ms=200)
    finally:
        tx.rollback()
        blocker.close()
    # Nothing was marked: the tombstone transaction rolled back whole.
    assert all(r.status != "deleting" for r in _rows(lib.engine, ids).values())
    outcome = delete_batch(lib.engine, lib.store, creator_id="creator-001", video_ids=ids, operation_id=OP, batch_index=0)
    assert sorted(outcome.succeeded) == sorted(ids)


def test_delete_on_s3(s3_library):
    lib = s3_library
    lib.seed(12, creators=1)
    ids = lib.ids("creator-001")
    keys = _keys(lib.engine, ids)
    assert all(lib.store.exists(k) for k in keys)
    outcome = delete_batch(lib.engine, lib.store, creator_id="creator-001", video_ids=ids, operation_id=OP, batch_index=0)
    assert sorted(outcome.succeeded) == sorted(ids)
    assert not any(lib.store.exists(k) for k in keys)
    assert _rows(lib.engine, ids) == {}


def _verification_catches_what_a_fault_left(lib):
    lib.seed(8, creators=1, chunks_per_video=2, transcript_ratio=1.0)
    ids = lib.ids("creator-001")[:5]
    left = _keys(lib.engine, [ids[1]])[0]
    outcome = delete_batch(lib.engine, CrashingStore(lib.store, silent_keys={left}), creator_id="creator-001",
                           video_ids=ids, operation_id=OP, batch_index=0)
    assert sorted(outcome.succeeded) == sorted(set(ids) - {ids[1]})
    assert [(e.video_id, e.error) for e in outcome.errors] == [(ids[1], "not_verified")]
    assert left in outcome.errors[0].detail and "deleting" in outcome.errors[0].detail
    assert outcome.extra["verified"] == {"videos": 4, "objects_absent": 8, "rows_absent": 4}
    # The video keeps its tombstone (and its chunks); the object is really there.
    assert _rows(lib.engine, [ids[1]])[ids[1]].status == "deleting" and _chunks(lib.engine, [ids[1]]) == 2
    assert lib.store.exists(left)
    # The audit manifest lists, per video, what was read back as gone; not the one left.
    write_manifest(lib.store, operation_id=OP, creator_id="creator-001", started_at="s", finished_at="f",
                   videos_deleted=4, objects_removed=8, batches=1)
    records = {r["video_id"]: r for r in read_manifest_records(lib.store, OP)}
    assert set(records) == set(ids) - {ids[1]}
    assert all(r["verified"] == {"objects_absent": 2, "row_absent": True, "chunks_absent": True}
               for r in records.values())
    # A rerun with a healthy store finishes it, and proves it.
    again = delete_batch(lib.engine, lib.store, creator_id="creator-001", video_ids=[ids[1]], operation_id=OP,
                         batch_index=1)
    assert again.succeeded == [ids[1]] and again.extra["verified"]["videos"] == 1
    assert not lib.store.exists(left) and _rows(lib.engine, [ids[1]]) == {}


def test_verification_catches_an_object_a_storage_fault_left(library):
    """The delete call answers success and the object stays: the read-back finds it."""
    _verification_catches_what_a_fault_left(library)


def test_verification_catches_an_object_a_storage_fault_left_on_s3(s3_library):
    _verification_catches_what_a_fault_left(s3_library)


def test_verification_without_the_check_counts_nothing(sqlite_library):
    """``verify=False`` (the benchmark's baseline) trusts the delete call: no counts."""
    lib = sqlite_library
    lib.seed(4, creators=1)
    ids = lib.ids("creator-001")
    left = _keys(lib.engine, [ids[0]])[0]
    outcome = delete_batch(lib.engine, CrashingStore(lib.store, silent_keys={left}), creator_id="creator-001",
                           video_ids=ids, operation_id=OP, batch_index=0, verify=False)
    assert sorted(outcome.succeeded) == sorted(ids) and "verified" not in outcome.extra
    assert lib.store.exists(left)  # what the check is there to catch


def test_present_reads_storage_on_s3_by_listing_and_by_heads(s3_library):
    """``present``: neighbours are answered by a listing of their span; scattered keys
    among many others by HEADs; both the same answer."""
    store = s3_library.store
    keys = [f"videos/c/{i:04d}/video.mp4" for i in range(0, 5000)]
    store.put_many({key: b"x" for key in keys})
    asked = keys[100:110] + ["videos/c/0105/gone.mp4", "videos/c/9999/video.mp4"]
    assert store.present(asked) == set(keys[100:110])
    scattered = keys[::1200] + ["videos/c/0001/nope"]  # a span of 4800 objects: over the listing's 4 pages
    assert store.present(scattered) == set(keys[::1200])
    assert store.present([]) == set()


def test_a_tombstone_marked_again_since_the_scan_waits_for_its_delete_unless_the_batch_is_retried(library):
    """Cleanup's scan found the tombstones due; one was marked again since (fresh
    ``updated_at``). On a first attempt it is a delete's begun since the scan, which
    finishes it: left out as done. On a retry of the batch it is the first attempt's own
    marking: finished, and counted."""
    from videolib.cleanup import ALREADY_DONE, Rules, finish_tombstones

    library.seed(6, creators=1)
    ids = library.ids("creator-001")[:3]
    with library.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id.in_(ids[:2]))
                     .values(status="deleting", updated_at=datetime.now(UTC) - timedelta(hours=2)))
        conn.execute(update(Video).where(Video.id == ids[2])
                     .values(status="deleting", updated_at=datetime.now(UTC)))
    items = [["creator-001", vid] for vid in ids]
    rules = Rules(now=time.time())
    first = finish_tombstones(library.engine, library.store, items, rules, operation_id=OP, batch_index=0,
                              dry_run=False)
    assert sorted(first.succeeded) == sorted(ids[:2]) and first.not_selected == {ALREADY_DONE: 1}
    assert list(_rows(library.engine, ids)) == [ids[2]]
    again = finish_tombstones(library.engine, library.store, items, rules, operation_id=OP, batch_index=0,
                              dry_run=False, retried=True)
    assert sorted(again.succeeded) == sorted(ids) and again.errors == [] and not again.not_selected
    assert _rows(library.engine, ids) == {}
    assert sorted(_part(library.store, OP, 0)) == sorted(ids)
