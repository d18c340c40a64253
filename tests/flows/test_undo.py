"""The undo window of deletes, through the flows and the front doors' requests, on
SQLite and PostgreSQL: a delete trashes, every other operation stops seeing what it
trashed, restore gives it back unchanged, and cleanup purges after the window with
the delete's proof."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, update

from tests.flows.test_cleanup import empty_history  # noqa: F401 - its harness without other tests' runs
from videolib.db.models import Video

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def window(monkeypatch):
    from config import get_settings

    monkeypatch.setenv("BULKOPS_DELETE_GRACE", "1h")
    get_settings.cache_clear()
    yield 3600.0
    get_settings.cache_clear()


def _run(request_type, **options):
    from service import requests
    from service.launch import run

    return run(getattr(requests, request_type).build(**options))


def _rows(lib, ids):
    with lib.engine.connect() as conn:
        return {r.id: (r.status, r.updated_at, r.embedded_at, r.storage_key) for r in
                conn.execute(select(Video).where(Video.id.in_(ids)))}


def _age_trash(lib, ids, seconds):
    with lib.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id.in_(ids)).values(
            trashed_at=datetime.now(UTC) - timedelta(seconds=seconds)))


def test_a_delete_under_the_window_trashes_and_nothing_else_sees_it(library, window):
    from service.library import search
    from service.requests import SearchRequest

    library.seed(16, creators=2, chunks_per_video=2, transcript_ratio=1.0)
    mine = library.ids("creator-001")
    doomed, kept = mine[:4], mine[4:]
    before = _rows(library, doomed)
    doc = _run("DeleteRequest", creator_id="creator-001", video_ids=doomed)
    assert doc["status"] == "completed" and doc["succeeded"] == 4 and doc["trashed"] == 4, doc
    assert datetime.fromisoformat(doc["purge_after"].replace("Z", "+00:00")) > datetime.now(UTC) + timedelta(minutes=59)
    assert "verified" not in doc and doc["manifest_path"] is None  # nothing removed yet
    assert all(library.store.exists(key) for *_, key in before.values())
    # Gone for every operation: --all, listed ids, export, reprocess, search, a second delete.
    assert library.ids("creator-001") == kept
    exported = _run("ExportRequest", creator_id="creator-001", format="parquet")
    table = pq.read_table(io.BytesIO(library.store.get(exported["output"]["path"])))
    assert set(table.column("id").to_pylist()) == set(kept)
    listed = _run("ExportRequest", creator_id="creator-001", format="csv", video_ids=doomed[:1] + kept[:1])
    assert [(e["video_id"], e["error"]) for e in listed["errors"]] == [(doomed[0], "not_found")]
    again = _run("ReprocessRequest", creator_id="creator-001", video_ids=doomed[:2])
    assert {e["error"] for e in again["errors"]} == {"not_found"} and again["succeeded"] == 0
    hits = search(SearchRequest.build(creator_id="creator-001", query="the", top=50))["results"]
    assert hits and not {hit["video_id"] for hit in hits} & set(doomed)
    twice = _run("DeleteRequest", creator_id="creator-001", video_ids=doomed[:1])
    assert twice["errors"][0]["error"] == "not_found" and twice["trashed"] == 0
    from service.requests import RequestError

    with pytest.raises(RequestError) as refused:
        _run("ExportRequest", creator_id="creator-001", format="csv", status="trashed")
    assert refused.value.code == "bad_filter"


def test_restore_by_ids_and_by_operation_gives_them_back_unchanged(library, window):
    library.seed(20, creators=2)
    mine, theirs = library.ids("creator-001"), library.ids("creator-002")
    assert len(mine) >= 6
    before = _rows(library, mine)
    first = _run("DeleteRequest", creator_id="creator-001", video_ids=mine[:3])
    second = _run("DeleteRequest", creator_id="creator-001", video_ids=mine[3:6])
    restored = _run("RestoreRequest", creator_id="creator-001", video_ids=mine[:2] + theirs[:1] + ["junk"])
    assert restored["operation"] == "restore" and restored["status"] == "partial" and restored["succeeded"] == 2
    assert {e["video_id"]: e["error"] for e in restored["errors"]} == {theirs[0]: "not_found", "junk": "invalid_id"}
    by_operation = _run("RestoreRequest", creator_id="creator-001", delete_operation=second["operation_id"])
    assert by_operation["status"] == "completed" and by_operation["succeeded"] == 3
    assert set(library.ids("creator-001")) == set(mine) - {mine[2]}
    from service.requests import RequestError

    with pytest.raises(RequestError) as refused:  # all of that delete's videos are back
        _run("RestoreRequest", creator_id="creator-001", delete_operation=second["operation_id"])
    assert refused.value.code == "empty_selection"
    assert {vid: row for vid, row in _rows(library, mine).items() if vid != mine[2]} == {
        vid: row for vid, row in before.items() if vid != mine[2]}
    # Past the window: the id is not_restorable, and --operation is refused before a run.
    _age_trash(library, [mine[2]], 2 * 3600)
    late = _run("RestoreRequest", creator_id="creator-001", video_ids=[mine[2]])
    assert late["status"] == "failed" and late["errors"][0]["error"] == "not_restorable"
    with pytest.raises(RequestError) as refused:
        _run("RestoreRequest", creator_id="creator-001", delete_operation=first["operation_id"])
    assert refused.value.code == "window_closed"
    with pytest.raises(RequestError) as refused:
        _run("RestoreRequest", creator_id="creator-001", delete_operation=str(uuid.uuid4()))
    assert refused.value.code == "bad_selection"


def test_an_all_delete_under_the_window_trashes_every_batch_and_one_restore_undoes_it(library, window):
    from service.requests import CommandLineIds, RequestError

    library.seed(30, creators=2, chunks_per_video=1)
    mine, theirs = library.ids("creator-001"), library.ids("creator-002")
    before = _rows(library, mine + theirs)
    # One already in the trash from an earlier delete: --all does not see it again.
    earlier = _run("DeleteRequest", creator_id="creator-001", video_ids=mine[:1])
    doc = _run("DeleteRequest", creator_id="creator-001", selection=CommandLineIds(all_videos=True), batch_size=4)
    assert doc["status"] == "completed" and doc["trashed"] == doc["succeeded"] == len(mine) - 1, doc
    assert doc["requested"] == len(mine) - 1 and doc["errors"] == []
    assert library.ids("creator-001") == [] and library.ids("creator-002") == theirs
    with pytest.raises(RequestError) as refused:  # nothing left to select
        _run("DeleteRequest", creator_id="creator-001", selection=CommandLineIds(all_videos=True))
    assert refused.value.code == "empty_selection"
    back = _run("RestoreRequest", creator_id="creator-001", delete_operation=doc["operation_id"])
    assert back["status"] == "completed" and back["succeeded"] == len(mine) - 1
    assert library.ids("creator-001") == mine[1:]
    _run("RestoreRequest", creator_id="creator-001", delete_operation=earlier["operation_id"])
    assert _rows(library, mine + theirs) == before


def test_cleanup_purges_after_the_window_as_a_delete_would(library, window):
    from videolib.delete import read_manifest_records

    library.seed(10, creators=2)
    mine = library.ids("creator-001")
    keys = {vid: row[3] for vid, row in _rows(library, mine[:4]).items()}
    _run("DeleteRequest", creator_id="creator-001", video_ids=mine[:4])
    _age_trash(library, mine[:3], 2 * 3600)
    dry = _run("CleanupRequest", dry_run=True)
    assert dry["cleanup"]["trash_purged"] == 3 and len(_rows(library, mine[:4])) == 4
    done = _run("CleanupRequest")
    assert done["cleanup"]["trash_purged"] == 3, done
    assert done["verified"]["videos"] == 3 and done["verified"]["rows_absent"] == 3
    assert set(_rows(library, mine[:4])) == {mine[3]}  # the young one waits
    assert not any(library.store.exists(keys[vid]) for vid in mine[:3]) and library.store.exists(keys[mine[3]])
    records = read_manifest_records(library.store, done["operation_id"])
    assert sorted(r["video_id"] for r in records) == sorted(mine[:3])
    assert all(r["verified"]["row_absent"] for r in records)
    assert _run("CleanupRequest")["cleanup"]["trash_purged"] == 0


@pytest.mark.parametrize("died", ["after_its_rows", "in_its_object_deletes"])
def test_a_purge_batch_retried_counts_what_its_first_attempt_began(library, window, monkeypatch, died):
    """Prefect retries a cleanup batch whole. The first attempt at purging dies after the
    rows went, or half-way through the objects (the videos marked 'deleting', no longer
    trashed): the retry finishes them and counts them purged, proven and audited."""
    from tests.flows.test_cleanup import _die_once
    from videolib.delete import read_manifest_records

    library.seed(10, creators=2)
    mine = library.ids("creator-001")
    _run("DeleteRequest", creator_id="creator-001", video_ids=mine[:3])
    _age_trash(library, mine[:3], 2 * 3600)
    died_once = _die_once(library.store, monkeypatch, died)
    done = _run("CleanupRequest")
    assert done["status"] == "completed" and done["failed"] == 0, done
    assert done["cleanup"]["trash_purged"] == 3 and done["cleanup"]["tombstones_finished"] == 0, done
    assert done["verified"] == {"videos": 3, "objects_absent": 6, "rows_absent": 3}
    assert died_once()
    assert _rows(library, mine[:3]) == {} and library.ids("creator-001") == mine[3:]
    records = read_manifest_records(library.store, done["operation_id"])
    assert sorted(r["video_id"] for r in records) == sorted(mine[:3])
    assert all(r["verified"]["row_absent"] and r["verified"]["objects_absent"] == 2 for r in records)


def test_trash_restore_and_purge_on_the_s3_endpoint(s3_library, window):
    lib = s3_library
    lib.seed(8, creators=1)
    mine = lib.ids("creator-001")
    keys = {vid: row[3] for vid, row in _rows(lib, mine).items()}
    doc = _run("DeleteRequest", creator_id="creator-001", video_ids=mine[:4])
    assert doc["trashed"] == 4 and all(lib.store.exists(keys[vid]) for vid in mine[:4])
    assert _run("RestoreRequest", creator_id="creator-001", video_ids=mine[:1])["succeeded"] == 1
    _age_trash(lib, mine[1:4], 2 * 3600)
    done = _run("CleanupRequest")
    assert done["cleanup"]["trash_purged"] == 3 and done["verified"]["objects_absent"] == 6, done
    assert not any(lib.store.exists(keys[vid]) for vid in mine[1:4]) and lib.store.exists(keys[mine[0]])
    assert set(lib.ids("creator-001")) == {mine[0], *mine[4:]}
