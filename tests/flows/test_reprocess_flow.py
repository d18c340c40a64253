"""The bulk-reprocess flow under Prefect's real test harness: states, counting, refusals,
artifacts, and a batch whose embedder fails after its retries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, update

from videolib.chunking import ChunkingConfig, chunk_transcript
from videolib.db.models import StagedId, Video, VideoChunk

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _run(**params):
    from flows.bulk_reprocess import bulk_reprocess

    return bulk_reprocess(**params, return_state=True)


def _transcribed(lib, creator="creator-001"):
    with lib.engine.connect() as conn:
        return list(conn.execute(
            select(Video.id).where(Video.creator_id == creator, Video.transcript.is_not(None),
                                   Video.status != "processing").order_by(Video.id)).scalars())


def _snapshot(lib):
    with lib.engine.connect() as conn:
        videos = {r.id: (r.status, r.embedded_at, r.updated_at) for r in conn.execute(select(Video))}
        chunks = conn.execute(select(VideoChunk.video_id, VideoChunk.chunk_index, VideoChunk.content,
                                     VideoChunk.embedding).order_by(VideoChunk.id)).all()
    return videos, chunks


def test_completed_reprocess(library):
    library.seed(40, creators=2)
    ids = _transcribed(library)
    state = _run(creator_id="creator-001", video_ids=ids, batch_size=3, chunk_target=40, chunk_overlap=8)
    assert state.is_completed() and state.name == "Completed"
    doc = state.result()
    assert doc["operation"] == "reprocess" and doc["status"] == "completed"
    assert doc["requested"] == doc["succeeded"] == len(ids) and doc["failed"] == 0 and doc["output"] is None
    config = ChunkingConfig(target=40, overlap=8)
    expected = 0
    with library.engine.connect() as conn:
        for vid in ids:
            video = conn.execute(select(Video).where(Video.id == vid)).one()
            assert video.status == "ready" and video.embedding_model == "hashing-v1"
            contents = conn.execute(select(VideoChunk.content).where(VideoChunk.video_id == vid)
                                    .order_by(VideoChunk.chunk_index)).scalars().all()
            assert contents == [c.content for c in chunk_transcript(video.transcript, config)]
            expected += len(contents)
    assert doc["message"] == f"{expected} chunks written with embedder hashing"

    from service.status import read_status

    status = read_status(doc["operation_id"])
    assert status["operation"] == "reprocess" and status["status"] == "completed"
    assert status["progress"]["percent"] == 100.0 and status["result"]["succeeded"] == len(ids)


@pytest.mark.parametrize("staged", [False, True], ids=["listed", "staged"])
def test_all_videos_selects_what_it_can_act_on_and_counts_the_rest(library, staged, monkeypatch):
    """Under all_videos, videos without a transcript and videos that another operation
    or pipeline holds are left out on purpose (not_selected), not failed: the run is
    completed. A claim whose lease ran out is taken over; tombstones are not counted.
    Past ``STAGE_LIBRARY_ABOVE`` videos (10 here) the selection is staged in the
    database, batches are ranges of it, and the staged ids are gone when the run ends."""
    import flows.selection

    stagings = []
    if staged:
        monkeypatch.setattr(flows.selection, "STAGE_LIBRARY_ABOVE", 10)
        real = flows.selection.stage_manifest

        def counted(*args, **kwargs):
            stagings.append(real(*args, **kwargs))
            return stagings[-1]

        monkeypatch.setattr(flows.selection, "stage_manifest", counted)
    lib = library
    lib.seed(40, creators=2, transcript_ratio=0.6)
    everything = lib.ids("creator-001")
    old = datetime(2020, 1, 1, tzinfo=UTC)
    with lib.engine.begin() as conn:
        transcribed = list(conn.execute(select(Video.id).where(
            Video.creator_id == "creator-001", Video.transcript.is_not(None), Video.status != "processing")
            .order_by(Video.id)).scalars())
        # Another run's fresh claim (busy), a crashed run's stale claim (taken over), a tombstone.
        fresh, stale, tombstone, blank, cueless = transcribed[:5]
        conn.execute(update(Video).where(Video.id == fresh).values(
            status="processing", processing_by="33333333-3333-4333-8333-333333333333", updated_at=datetime.now(UTC)))
        conn.execute(update(Video).where(Video.id == stale).values(
            status="processing", processing_by="44444444-4444-4444-8444-444444444444", updated_at=old))
        conn.execute(update(Video).where(Video.id == tombstone).values(status="deleting"))
        conn.execute(update(Video).where(Video.id == blank).values(transcript="  \n\t "))
        # Text, but no words: only the claim's chunking finds out (left out then, not failed).
        conn.execute(update(Video).where(Video.id == cueless).values(
            transcript="WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n\n", status="ready"))
        no_transcript = set(conn.execute(select(Video.id).where(
            Video.creator_id == "creator-001", Video.status != "deleting",
            (Video.transcript.is_(None)) | (func.trim(Video.transcript, " \n\t") == ""))).scalars()) | {cueless}
        elsewhere = set(conn.execute(select(Video.id).where(
            Video.creator_id == "creator-001", Video.status == "processing", Video.processing_by.is_(None),
            Video.transcript.is_not(None), func.trim(Video.transcript) != "")).scalars())
    assert no_transcript and blank in no_transcript
    busy = elsewhere | {fresh}
    selected = set(everything) - no_transcript - busy - {tombstone}
    before = _snapshot(lib)
    state = _run(creator_id="creator-001", all_videos=True, batch_size=4)
    assert state.is_completed() and state.name == "Completed", state.message
    doc = state.result()
    assert doc["status"] == "completed" and doc["errors"] == [] and doc["report_path"] is None
    assert doc["not_selected"] == {"no_transcript": len(no_transcript), "busy": len(busy)}
    assert doc["requested"] == doc["succeeded"] == len(selected)
    assert [s.ids for s in stagings] == ([len(selected | {cueless})] if staged else [])
    with lib.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(StagedId)).scalar() == 0
    after = _snapshot(lib)
    for vid in no_transcript - {cueless} | busy | {tombstone}:
        assert after[0][vid] == before[0][vid], "left out means left untouched"
    with lib.engine.connect() as conn:
        assert conn.execute(select(Video.status).where(Video.id == stale)).scalar_one() == "ready"
        assert conn.execute(select(Video.status, Video.processing_by).where(Video.id == cueless)).one() == (
            "ready", None)

    from service.status import read_status

    status = read_status(doc["operation_id"])
    assert status["status"] == "completed" and status["result"]["not_selected"] == doc["not_selected"]
    assert status["progress"] == {"current": len(selected), "total": len(selected), "percent": 100.0}


@pytest.mark.parametrize("staged", [False, True], ids=["listed", "staged"])
def test_all_videos_with_nothing_to_act_on_is_refused_with_the_counts(sqlite_library, staged, monkeypatch):
    import flows.selection

    if staged:  # past the limit the (empty) selection is staged, and dropped as the run ends
        monkeypatch.setattr(flows.selection, "STAGE_LIBRARY_ABOVE", 5)
    lib = sqlite_library
    lib.seed(10, creators=1, transcript_ratio=1.0)
    with lib.engine.begin() as conn:
        ids = lib.ids("creator-001")
        conn.execute(update(Video).where(Video.id.in_(ids[:3])).values(transcript=None))
        conn.execute(update(Video).where(Video.id.in_(ids[3:])).values(status="processing", processing_by=None))
    before = _snapshot(lib)
    state = _run(creator_id="creator-001", all_videos=True)
    assert state.is_failed()
    assert "no videos to reprocess: 3 without a transcript, 7 busy" in state.message
    assert _snapshot(lib) == before
    with lib.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(StagedId)).scalar() == 0


def test_listed_ids_keep_their_per_item_errors(sqlite_library):
    """Only a whole-library selection leaves things out: a listed video that has no
    transcript or that someone else holds is still a per-item error."""
    lib = sqlite_library
    lib.seed(10, creators=1, transcript_ratio=1.0)
    ids = lib.ids("creator-001")
    with lib.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id == ids[0]).values(transcript=None))
        conn.execute(update(Video).where(Video.id == ids[1]).values(status="processing", processing_by=None))
        conn.execute(update(Video).where(Video.id.in_(ids[2:])).values(status="ready"))
    doc = _run(creator_id="creator-001", video_ids=ids).result()
    assert doc["status"] == "partial" and doc["not_selected"] is None
    assert {e["video_id"]: e["error"] for e in doc["errors"]} == {ids[0]: "no_transcript", ids[1]: "busy"}


def test_foreign_malformed_and_duplicate_ids(sqlite_library):
    lib = sqlite_library
    lib.seed(20, creators=2, transcript_ratio=1.0)
    mine = _transcribed(lib)[:3]
    theirs = lib.ids("creator-002")[:1]
    before = _snapshot(lib)
    state = _run(creator_id="creator-001", video_ids=mine + mine[:1] + theirs + ["nope'; DROP TABLE videos;--"])
    doc = state.result()
    assert doc["status"] == "partial" and doc["requested"] == 5 and doc["succeeded"] == 3
    assert {e["error"] for e in doc["errors"]} == {"not_found", "invalid_id"}
    after = _snapshot(lib)
    assert after[0][theirs[0]] == before[0][theirs[0]], "another creator's video is untouched"


@pytest.mark.parametrize(
    "params, error_text",
    [
        ({"video_ids": None}, "no videos selected"),
        ({"all_videos": True, "video_ids": ["x"]}, "not both"),
        ({"all_videos": True, "chunk_target": 20, "chunk_overlap": 20}, "overlap"),
        ({"all_videos": True, "creator_id": "../etc"}, "creator"),
    ],
)
def test_refused_requests_change_nothing(sqlite_library, params, error_text):
    lib = sqlite_library
    lib.seed(10, creators=1, transcript_ratio=1.0)
    before = _snapshot(lib)
    state = _run(**{"creator_id": "creator-001", **params})
    assert state.is_failed()
    from service.status import read_status

    status = read_status(str(state.state_details.flow_run_id))
    assert status["status"] == "failed" and error_text in status["result"]["message"]
    assert _snapshot(lib) == before


class _BrokenEmbedder:
    name = "broken-v1"
    dim = 384

    def embed(self, texts):
        raise RuntimeError("the model crashed")


def test_a_batch_that_fails_after_its_retries_is_reported_and_released(sqlite_library, monkeypatch):
    import tasks.reprocess as task_module

    lib = sqlite_library
    lib.seed(12, creators=1, transcript_ratio=1.0)
    ids = _transcribed(lib)[:4]
    before = _snapshot(lib)
    monkeypatch.setattr(task_module, "embedder_for", lambda name: _BrokenEmbedder())  # fault injection
    state = _run(creator_id="creator-001", video_ids=ids, batch_size=10)
    doc = state.result() if not state.is_failed() else None
    assert state.is_failed()
    from service.status import read_status

    result = read_status(str(state.state_details.flow_run_id))["result"]
    assert result["failed"] == len(ids) and {e["error"] for e in result["errors"]} == {"batch_error"}
    assert all("the model crashed" in e["detail"] for e in result["errors"])
    assert doc is None
    # Every claim was given back: same statuses, same chunks.
    after = _snapshot(lib)
    assert {v: s[0] for v, s in after[0].items()} == {v: s[0] for v, s in before[0].items()}
    assert after[1] == before[1]
    with lib.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Video).where(Video.processing_by.is_not(None))).scalar() == 0


def test_a_concurrent_run_takes_nothing_twice(sqlite_library):
    lib = sqlite_library
    lib.seed(20, creators=1, transcript_ratio=1.0)
    ids = _transcribed(lib)
    other = "44444444-4444-4444-8444-444444444444"
    with lib.engine.begin() as conn:  # another reprocess holds the first three
        conn.execute(update(Video).where(Video.id.in_(ids[:3])).values(status="processing", processing_by=other,
                                                                        updated_at=datetime.now(UTC)))
    doc = _run(creator_id="creator-001", video_ids=ids).result()
    assert doc["status"] == "partial"
    assert {e["video_id"]: e["error"] for e in doc["errors"]} == {v: "busy" for v in ids[:3]}
    assert other in doc["errors"][0]["detail"]


def test_a_big_job_chunks_and_embeds_in_worker_processes(sqlite_library, monkeypatch):
    """Jobs of at least compute_pool.MIN_VIDEOS videos (lowered here) chunk and embed in
    worker processes; the result is the same, and the workers stop with the run."""
    import videolib.compute_pool as compute_pool

    lib = sqlite_library
    lib.seed(30, creators=1, transcript_ratio=1.0)
    ids = _transcribed(lib)
    monkeypatch.setattr(compute_pool, "MIN_VIDEOS", 10)
    calls = []
    original = compute_pool.ComputePool.chunk_and_embed

    def counted(self, items, chunking, embedder):
        calls.append(len(items))
        return original(self, items, chunking, embedder)

    monkeypatch.setattr(compute_pool.ComputePool, "chunk_and_embed", counted)
    state = _run(creator_id="creator-001", all_videos=True, batch_size=5, chunk_target=40, chunk_overlap=8)
    assert state.is_completed(), state.message
    assert sum(calls) == len(ids) and len(calls) >= 2
    assert compute_pool.compute_pool() is None
    config = ChunkingConfig(target=40, overlap=8)
    with lib.engine.connect() as conn:
        for vid in ids:
            video = conn.execute(select(Video).where(Video.id == vid)).one()
            contents = conn.execute(select(VideoChunk.content).where(VideoChunk.video_id == vid)
                                    .order_by(VideoChunk.chunk_index)).scalars().all()
            assert video.status == "ready"
            assert contents == [c.content for c in chunk_transcript(video.transcript, config)]


def test_the_default_batch_size_is_the_embedders(sqlite_library, monkeypatch):
    """Without `batch_size`, a run takes its embedder's default (DEFAULT_BATCH_VIDEOS:
    big batches for the fast hashing embedder, small ones for the real model)."""
    import tasks.reprocess
    from videolib import embedders
    from config import get_settings
    from videolib.operation import plan_batches

    assert embedders.default_batch_size("hashing") == 1000
    assert embedders.default_batch_size("minilm") == 100
    lib = sqlite_library
    lib.seed(30, creators=1, transcript_ratio=1.0)
    ids = _transcribed(lib)
    batches: list[int] = []
    original = tasks.reprocess.reprocess_batch

    def spy(*args, **kwargs):
        batches.append(len(kwargs["video_ids"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(tasks.reprocess, "reprocess_batch", spy)
    monkeypatch.setitem(embedders.DEFAULT_BATCH_VIDEOS, "hashing", 2)
    settings = get_settings()
    for params, size in (({}, 2), ({"batch_size": 7}, 7)):
        batches.clear()
        state = _run(creator_id="creator-001", video_ids=ids, **params)
        assert state.is_completed() and state.name == "Completed", state.message
        planned = plan_batches(ids, batch_size=size, max_batches=settings.max_batches, workers=settings.task_workers)
        assert sorted(batches) == sorted(len(b) for b in planned)
