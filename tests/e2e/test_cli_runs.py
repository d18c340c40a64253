"""The `bulkops` operations as a user runs them: real processes against a shared `prefect
server` (concurrent CLI processes must not each start an ephemeral server), their exit
statuses and JSON documents, kills and reruns, operations one after the other."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests
from sqlalchemy import select

from tests.clitools import BULKOPS, counts, ids_file as _ids_file, kill_after_first_batch, run_cli
from tests.e2e import E2E
from videolib.db.models import Video, VideoChunk

pytestmark = E2E


def test_malformed_ids_never_travel_as_flow_parameters(seeded, prefect_server, tmp_path):
    """10,000 malformed 60-character ids fit BULKOPS_MAX_IDS but not Prefect's 512 KiB
    parameter limit: they are set aside before the run and still reported, each echoed."""
    lib = seeded
    junk = [f"not-a-uuid-{i:049d}" for i in range(10_000)]
    assert {len(j) for j in junk} == {60}
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids-file", _ids_file(tmp_path, junk), "--json",
                        prefect=prefect_server)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (doc["status"], doc["requested"], doc["succeeded"], doc["failed"]) == ("failed", 10_000, 0, 10_000)
    assert [e["video_id"] for e in doc["errors"]] == junk
    assert {e["error"] for e in doc["errors"]} == {"invalid_id"}
    assert proc.stdout.count(junk[123]) == 1  # each echo once
    run = requests.get(f"{prefect_server.api_url}/flow_runs/{doc['operation_id']}", timeout=30).json()
    assert run["parameters"]["video_ids"] == [] and run["parameters"]["invalid_ids_key"].startswith(
        "requests/creator-001/")
    status, read_back = run_cli(lib, "status", doc["operation_id"], "--json", prefect=prefect_server)
    assert read_back["result"]["failed"] == 10_000 and read_back["result"]["errors"][0]["video_id"] == junk[0]


def test_a_megabyte_line_is_echoed_once_and_cut_at_64_characters(seeded, prefect_server, tmp_path):
    lib = seeded
    mine = lib.ids("creator-001")[:2]
    line = "z" * 1_000_000
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids-file", _ids_file(tmp_path, [line, *mine]),
                        "--json", prefect=prefect_server)
    assert proc.returncode == 1 and doc["status"] == "partial" and doc["succeeded"] == 2
    assert doc["errors"] == [{"video_id": "z" * 64 + "…", "error": "invalid_id",
                              "detail": "not a UUID (expected 8-4-4-4-12 hex digits)"}]
    assert len(proc.stdout) < 5_000 and len(proc.stderr) < 20_000
    report = lib.store.get(doc["report_path"]).decode()
    assert "z" * 64 + "…" in report and "z" * 65 not in report


def test_valid_ids_up_to_the_limit_always_fit(seeded, prefect_server, tmp_path):
    import uuid

    lib = seeded
    ids = [str(uuid.uuid4()) for _ in range(13_000)]
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids-file", _ids_file(tmp_path, ids),
                        "--dry-run", "--json", prefect=prefect_server, env_extra={"BULKOPS_MAX_IDS": "13000"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["requested"] == doc["failed"] == 13_000 and {e["error"] for e in doc["errors"]} == {"not_found"}


def test_delete_json_result_and_status(seeded, prefect_server, tmp_path):
    lib = seeded
    mine = lib.ids("creator-001")
    all_theirs = lib.ids("creator-002")
    theirs = all_theirs[:1]
    injected = "x' OR '1'='1"
    file = _ids_file(tmp_path, ["", *mine[:5], mine[0].upper(), "", *theirs, injected])
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids-file", file, "--json", prefect=prefect_server)
    assert proc.returncode == 1, proc.stderr  # partial
    expected_keys = {"operation_id", "operation", "creator_id", "status", "requested", "succeeded", "failed",
                     "skipped", "errors", "report_path", "output", "plan", "dry_run", "duration_s"}
    assert expected_keys <= set(doc)
    assert doc["status"] == "partial" and doc["operation"] == "delete" and doc["creator_id"] == "creator-001"
    assert (doc["requested"], doc["succeeded"], doc["failed"], doc["skipped"]) == (7, 5, 2, 0)
    assert {(e["video_id"], e["error"]) for e in doc["errors"]} == {(theirs[0], "not_found"), (injected, "invalid_id")}
    assert doc["output"] is None and doc["plan"] is None and doc["dry_run"] is False
    assert doc["verified"] == {"videos": 5, "objects_absent": 10, "rows_absent": 5}
    assert lib.store.exists(doc["report_path"])
    assert counts(lib)[0] == 25
    assert lib.ids("creator-002") == all_theirs

    proc, status = run_cli(lib, "status", doc["operation_id"], "--json", prefect=prefect_server)
    assert proc.returncode == 0
    assert set(status) == {"operation_id", "operation", "creator_id", "status", "progress", "eta_seconds", "result"}
    assert status["status"] == "partial" and status["result"]["succeeded"] == 5
    assert status["progress"] == {"current": 7, "total": 7, "percent": 100.0}

    proc, watched = run_cli(lib, "status", doc["operation_id"], "--watch", "--json", prefect=prefect_server)
    assert proc.returncode == 0 and watched["status"] == "partial" and watched["result"] == status["result"]

    for bad in ("00000000-0000-4000-8000-000000000000", "not-an-id"):
        proc, missing = run_cli(lib, "status", bad, "--json", prefect=prefect_server)
        assert proc.returncode == 2 and missing["error"] == "unknown_operation"


def test_delete_all_completed_and_dry_run(seeded, prefect_server):
    lib = seeded
    theirs, mine = lib.ids("creator-002"), lib.ids("creator-001")
    n = len(theirs)
    proc, plan = run_cli(lib, "delete", "--creator", "creator-002", "--all", "--dry-run", "--json", prefect=prefect_server)
    assert proc.returncode == 0 and plan["dry_run"] and plan["plan"]["videos"] == n and plan["plan"]["objects"] == 2 * n
    assert "verified" not in plan  # a dry run reads nothing back: it removed nothing
    assert lib.ids("creator-002") == theirs
    proc, doc = run_cli(lib, "delete", "--creator", "creator-002", "--all", "--json", prefect=prefect_server)
    assert proc.returncode == 0 and doc["status"] == "completed" and doc["succeeded"] == n == doc["requested"]
    assert lib.ids("creator-002") == [] and lib.ids("creator-001") == mine


def test_repeated_selection_options_add_up_and_a_byte_order_mark_is_not_part_of_an_id(seeded, prefect_server,
                                                                                       tmp_path):
    lib = seeded
    mine = lib.ids("creator-001")
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids", mine[0], "--ids", f"{mine[1]},{mine[2]}",
                        "--dry-run", "--json", prefect=prefect_server)
    assert proc.returncode == 0, proc.stderr
    assert (doc["requested"], doc["succeeded"], doc["failed"], doc["plan"]["videos"]) == (3, 3, 0, 3)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeff".encode() + f"{mine[3]}\r\n{mine[4]}\r\n".encode())
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids-file", _ids_file(tmp_path, [mine[5]]),
                        "--ids-file", str(bom), "--dry-run", "--json", prefect=prefect_server)
    assert proc.returncode == 0, proc.stderr
    assert (doc["requested"], doc["succeeded"], doc["errors"]) == (3, 3, [])
    assert lib.ids("creator-001") == mine, "dry runs change nothing"


def test_human_output_has_summary_and_progress(seeded, prefect_server):
    lib = seeded
    ids = ",".join(lib.ids("creator-001")[:3])
    proc, _ = run_cli(lib, "delete", "--creator", "creator-001", "--ids", ids, prefect=prefect_server)
    assert proc.returncode == 0, proc.stderr
    assert "completed" in proc.stdout and "requested" in proc.stdout
    assert "Verified gone: 3 videos" in proc.stdout and "6 objects absent" in proc.stdout
    assert "3/3 videos" in proc.stderr  # progress goes to stderr


def test_concurrent_cli_deletes_count_each_video_once(sqlite_library, prefect_server, tmp_path):
    lib = sqlite_library
    lib.seed(400, creators=1, files=True)
    ids = lib.ids("creator-001")
    files = [_ids_file(tmp_path, ids[:300], "a.txt"), _ids_file(tmp_path, ids[100:], "b.txt"),
             _ids_file(tmp_path, ids[::-1][:250], "c.txt")]
    env = dict(os.environ, **lib.env(), PREFECT_API_URL=prefect_server.api_url)
    procs = [subprocess.Popen([BULKOPS, "delete", "--creator", "creator-001", "--ids-file", f, "--batch-size", "20",
                               "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in files]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode in (0, 1), err[-3000:]
        docs.append(json.loads(out))
    assert sum(d["succeeded"] for d in docs) == 400, "every video deleted and counted exactly once"
    for d in docs:
        assert d["requested"] == d["succeeded"] + d["failed"]
        assert {e["error"] for e in d["errors"]} <= {"not_found"}
    assert counts(lib) == (0, 0)
    assert lib.store.list_keys("videos") == []


def test_killed_delete_converges_on_rerun(sqlite_library, prefect_server, tmp_path):
    lib = sqlite_library
    lib.seed(1500, creators=1, files=True)
    ids = lib.ids("creator-001")
    env = dict(os.environ, **lib.env(), PREFECT_API_URL=prefect_server.api_url)
    kill_after_first_batch(["delete", "--creator", "creator-001", "--all", "--batch-size", "5"], env)
    remaining = lib.ids("creator-001")
    assert 0 < len(remaining) < len(ids), "the kill must land mid-run"

    # Invariant after the crash: no live row without its files.
    store = lib.store
    with lib.engine.connect() as conn:
        rows = conn.execute(select(Video.id, Video.status)).all()
    for vid, status in rows:
        if status != "deleting":
            assert store.exists(f"videos/creator-001/{vid}/source.mp4")

    rerun, doc = run_cli(lib, "delete", "--creator", "creator-001", "--all", "--json", prefect=prefect_server)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert doc["succeeded"] == len(remaining)
    assert counts(lib) == (0, 0) and store.list_keys("videos") == []


# ----------------------------------------------------------------------------- reprocess and search


def test_reprocess_json_then_search_finds_a_chunk(sqlite_library, prefect_server, tmp_path):
    lib = sqlite_library
    lib.seed(30, creators=2, transcript_ratio=1.0)
    with lib.engine.connect() as conn:
        ids = list(conn.execute(select(Video.id).where(Video.creator_id == "creator-001",
                                                       Video.status != "processing")).scalars())
    theirs = lib.ids("creator-002")[0]
    ids_file = _ids_file(tmp_path, ids + [theirs, "not-an-id"])
    proc, doc = run_cli(lib, "reprocess", "--creator", "creator-001", "--ids-file", ids_file, "--json",
                        "--chunk-target", "30", "--chunk-overlap", "5", prefect=prefect_server)
    assert proc.returncode == 1, proc.stderr[-2000:]  # partial: one foreign, one malformed id
    assert doc["operation"] == "reprocess" and doc["status"] == "partial"
    assert doc["succeeded"] == len(ids) and doc["failed"] == 2 and doc["requested"] == len(ids) + 2
    assert {(e["video_id"], e["error"]) for e in doc["errors"]} == {(theirs, "not_found"),
                                                                    ("not-an-id", "invalid_id")}
    status, sdoc = run_cli(lib, "status", doc["operation_id"], "--json", prefect=prefect_server)
    assert status.returncode == 0 and sdoc["status"] == "partial" and sdoc["operation"] == "reprocess"

    with lib.engine.connect() as conn:
        chunk = conn.execute(select(VideoChunk.video_id, VideoChunk.chunk_index, VideoChunk.content)
                             .where(VideoChunk.video_id == ids[0]).order_by(VideoChunk.chunk_index.desc())).first()
    proc, found = run_cli(lib, "search", "--creator", "creator-001", chunk.content, "--top", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert found["results"][0]["video_id"] == chunk.video_id
    assert found["results"][0]["content"] == chunk.content and found["results"][0]["score"] > 0.999
    assert len(found["results"]) == 3 and found["model"] == "hashing-v1" and found["searched_chunks"] > 3

    human, _ = run_cli(lib, "search", "--creator", "creator-001", "patience")
    assert human.returncode == 0 and "best of" in human.stdout

    # A hostile query is just text: results, and nothing changes.
    before = counts(lib)
    proc, hostile = run_cli(lib, "search", "--creator", "creator-001", "'; DELETE FROM videos; --", "--json")
    assert proc.returncode == 0 and counts(lib) == before


def test_killed_reprocess_leaves_whole_chunk_sets_and_converges(sqlite_library, prefect_server):
    from videolib.chunking import ChunkingConfig, chunk_transcript

    lib = sqlite_library
    lib.seed(1200, creators=1, transcript_ratio=1.0, files=False)
    with lib.engine.connect() as conn:
        before = {}
        for vid, content in conn.execute(select(VideoChunk.video_id, VideoChunk.content)
                                         .order_by(VideoChunk.video_id, VideoChunk.chunk_index)):
            before.setdefault(vid, []).append(content)
        seeded_processing = set(conn.execute(select(Video.id).where(Video.status == "processing")).scalars())
    env = dict(os.environ, **lib.env(), PREFECT_API_URL=prefect_server.api_url)
    args = ["reprocess", "--creator", "creator-001", "--all", "--batch-size", "5", "--chunk-target", "25",
            "--chunk-overlap", "5"]
    kill_after_first_batch(args, env)

    config = ChunkingConfig(target=25, overlap=5)

    def check_invariant():
        with lib.engine.connect() as conn:
            videos = {r.id: r for r in conn.execute(select(Video))}
            now = {}
            for vid, content in conn.execute(select(VideoChunk.video_id, VideoChunk.content)
                                             .order_by(VideoChunk.video_id, VideoChunk.chunk_index)):
                now.setdefault(vid, []).append(content)
        new = 0
        for vid, video in videos.items():
            fresh = [c.content for c in chunk_transcript(video.transcript, config)]
            if video.status == "ready" and video.embedding_model and now.get(vid) == fresh:
                new += 1
            else:  # never half: exactly the old chunks
                assert now.get(vid) == before.get(vid), vid
        return videos, new

    videos, new = check_invariant()
    assert 0 < new < len(videos) - len(seeded_processing), "the kill must land mid-run"
    claimed = [v for v in videos.values() if v.processing_by]
    # After the lease a rerun takes the dead run's claims over; the other pipeline's
    # 'processing' videos are left out of --all on purpose (not_selected), not failed.
    rerun, doc = run_cli(lib, *args, "--json", prefect=prefect_server, env_extra={"BULKOPS_REPROCESS_LEASE_S": "0"})
    assert rerun.returncode == 0 and doc["status"] == "completed" and doc["errors"] == []
    assert doc["not_selected"] == {"no_transcript": 0, "busy": len(seeded_processing)}
    assert doc["succeeded"] == doc["requested"] == len(videos) - len(seeded_processing)
    videos, new = check_invariant()
    assert new == len(videos) - len(seeded_processing)
    assert not any(v.processing_by for v in videos.values()), claimed[:1]


def test_a_killed_export_shows_no_file_and_the_next_export_clears_what_it_left(sqlite_library, prefect_server):
    """SIGKILL mid-export: nothing appears under the export's name (it is written under a
    staging name and moved into place whole); once Prefect holds the run as over, the
    next export of the creator removes its parts and its unfinished file."""
    from videolib.export import leftover_operation

    lib = sqlite_library
    lib.seed(20_000, creators=1, files=False)
    env = dict(os.environ, **lib.env(), PREFECT_API_URL=prefect_server.api_url, BULKOPS_PROGRESS="0")
    kill_after_first_batch(["export", "--creator", "creator-001", "--format", "csv", "--batch-size", "100"], env)
    left = lib.store.list_keys("exports/creator-001")
    assert left, "the kill must land mid-run"
    assert all(leftover_operation(key) for key in left), f"a file under its final name: {left}"
    (operation,) = {leftover_operation(key) for key in left}
    # Prefect marks a killed run Crashed once its heartbeats stop (an automation the
    # control issue sets up); here the test does what that automation would.
    answer = requests.post(f"{prefect_server.api_url}/flow_runs/{operation}/set_state",
                           json={"state": {"type": "CRASHED", "name": "Crashed"}, "force": True}, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    proc, doc = run_cli(lib, "export", "--creator", "creator-001", "--format", "csv", "--json", prefect=prefect_server)
    assert proc.returncode == 0 and doc["succeeded"] == 20_000, proc.stderr[-2000:]
    assert lib.store.list_keys("exports/creator-001") == [doc["output"]["path"]]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_reprocess_then_export_from_the_cli(request, prefect_server, database):
    """The user's second command: an export right after a reprocess (it ended `failed`,
    every row a batch_error, when reprocess wrote timestamps with an offset on SQLite)."""
    import io

    import pyarrow.parquet as pq

    lib = request.getfixturevalue("sqlite_library" if database == "sqlite" else "pg_library")
    lib.seed(60, creators=2)
    proc, doc = run_cli(lib, "reprocess", "--creator", "creator-001", "--all", "--json", prefect=prefect_server)
    assert proc.returncode == 0 and doc["status"] == "completed" and doc["succeeded"] > 0, proc.stderr[-2000:]
    assert doc["not_selected"]["no_transcript"] + doc["not_selected"]["busy"] + doc["requested"] == len(
        lib.ids("creator-001"))
    outputs = {}
    for fmt in ("parquet", "csv"):
        proc, exported = run_cli(lib, "export", "--creator", "creator-001", "--format", fmt, "--json",
                                 prefect=prefect_server)
        assert proc.returncode == 0 and exported["status"] == "completed", exported["errors"][:3]
        assert exported["succeeded"] == len(lib.ids("creator-001"))
        outputs[fmt] = exported["output"]["path"]
    table = pq.read_table(io.BytesIO(lib.store.get(outputs["parquet"])))
    with lib.engine.connect() as conn:
        embedded = dict(conn.execute(select(Video.id, Video.embedded_at).where(Video.creator_id == "creator-001")).all())
    assert dict(zip(table.column("id").to_pylist(), table.column("embedded_at").to_pylist())) == embedded


def test_cleanup_from_the_cli_dry_run_then_for_real_and_one_at_a_time(seeded, prefect_server):
    """`bulkops cleanup`: a dry run changes nothing, the run removes what is due (exit 0),
    a person reads what was done; a second while one has not ended is exit 2
    `cleanup_running`; bad settings and options are exit 2. (The shared server holds other
    tests' runs: only this library's counts are exact here; tests/flows/test_cleanup.py has all.)"""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    lib = seeded
    doomed = lib.ids("creator-001")[0]
    # A creator of its own (rows and objects): no other test's delete on the shared server holds it.
    with lib.engine.begin() as conn:
        keys = conn.execute(select(Video.storage_key, Video.thumbnail_key).where(Video.id == doomed)).one()
        moved = [key.replace("videos/creator-001/", "videos/creator-cleanup-cli/") for key in keys]
        for key, new_key in zip(keys, moved):
            lib.store.put(new_key, lib.store.get(key))
            lib.store.delete(key)
        conn.execute(update(Video).where(Video.id == doomed).values(
            creator_id="creator-cleanup-cli", storage_key=moved[0], thumbnail_key=moved[1], status="deleting",
            updated_at=datetime.now(UTC) - timedelta(hours=2)))
    proc, plan = run_cli(lib, "cleanup", "--dry-run", "--json", prefect=prefect_server)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert plan["operation"] == "cleanup" and plan["dry_run"] is True and plan["creator_id"] is None
    assert plan["cleanup"]["tombstones_finished"] == 1 and doomed in _all_ids(lib)
    proc, doc = run_cli(lib, "cleanup", "--json", prefect=prefect_server)
    assert proc.returncode == 0 and doc["status"] == "completed", (doc, proc.stderr[-2000:])
    assert doc["cleanup"]["tombstones_finished"] == 1 and doomed not in _all_ids(lib)
    assert doc["operation_id"] in proc.stderr  # announced as it started
    proc, _ = run_cli(lib, "cleanup", prefect=prefect_server)
    assert proc.returncode == 0 and "cleanup completed" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "tombstones" not in proc.stdout  # nothing left of that kind

    flow = requests.post(f"{prefect_server.api_url}/flows/", json={"name": "cleanup"}, timeout=30).json()
    run = requests.post(f"{prefect_server.api_url}/flow_runs/", json={"flow_id": flow["id"], "state": {
        "type": "RUNNING", "name": "Running"}}, timeout=30).json()
    try:
        proc, refused = run_cli(lib, "cleanup", "--json", prefect=prefect_server)
        assert proc.returncode == 2 and refused["error"] == "cleanup_running" and run["id"] in refused["message"]
    finally:
        requests.post(f"{prefect_server.api_url}/flow_runs/{run['id']}/set_state", json={
            "state": {"type": "COMPLETED", "name": "Completed"}, "force": True}, timeout=30)
    for env, args, error in (({"BULKOPS_CLEANUP_TOMBSTONE_GRACE": "soon"}, [], "bad_settings"),
                             ({"BULKOPS_CLEANUP_CRON": "61 * * * *"}, [], "bad_settings"),
                             ({"BULKOPS_HISTORY_RETENTION": "-1d"}, [], "bad_settings"),
                             ({}, ["--creator", "creator-001"], "usage")):
        proc, refused = run_cli(lib, "cleanup", *args, "--json", prefect=prefect_server, env_extra=env)
        assert proc.returncode == 2 and refused["error"] == error, (env, args, refused)


def _all_ids(lib) -> set[str]:
    with lib.engine.connect() as conn:
        return set(conn.execute(select(Video.id)).scalars())


def test_delete_under_the_undo_window_then_restore_from_the_cli(seeded, prefect_server, tmp_path):
    """`BULKOPS_DELETE_GRACE`: the delete trashes (exit 0, says until when and how to undo),
    `bulkops restore --operation` brings the videos back (exit 0), a second is exit 2; by
    ids a foreign id is a per-item not_found (exit 1); bad usage is exit 2."""
    lib = seeded
    window = {"BULKOPS_DELETE_GRACE": "1h"}
    mine, theirs = lib.ids("creator-001"), lib.ids("creator-002")
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids", ",".join(mine[:4]), "--json",
                        prefect=prefect_server, env_extra=window)
    assert proc.returncode == 0 and doc["trashed"] == 4 and doc["purge_after"], proc.stderr[-2000:]
    assert lib.ids("creator-001") == mine[4:]
    proc, _ = run_cli(lib, "delete", "--creator", "creator-001", "--ids", mine[4], prefect=prefect_server,
                      env_extra=window)
    assert proc.returncode == 0 and "Trashed 1 videos" in proc.stdout and "bulkops restore" in proc.stdout
    proc, back = run_cli(lib, "restore", "--creator", "creator-001", "--operation", doc["operation_id"], "--json",
                         prefect=prefect_server, env_extra=window)
    assert proc.returncode == 0 and back["operation"] == "restore" and back["succeeded"] == 4, proc.stderr[-2000:]
    assert set(lib.ids("creator-001")) == set(mine) - {mine[4]}
    proc, again = run_cli(lib, "restore", "--creator", "creator-001", "--operation", doc["operation_id"], "--json",
                          prefect=prefect_server, env_extra=window)
    assert proc.returncode == 2 and again["error"] == "empty_selection", again
    proc, partly = run_cli(lib, "restore", "--creator", "creator-001", "--ids", f"{mine[4]},{theirs[0]}", "--json",
                           prefect=prefect_server, env_extra=window)
    assert proc.returncode == 1 and partly["succeeded"] == 1, partly
    assert [(e["video_id"], e["error"]) for e in partly["errors"]] == [(theirs[0], "not_found")]
    for args, error in ((["--ids", mine[0], "--operation", doc["operation_id"]], "bad_selection"),
                        (["--operation", "not-an-id"], "bad_selection"),
                        ([], "bad_selection")):
        proc, refused = run_cli(lib, "restore", "--creator", "creator-001", *args, "--json", prefect=prefect_server,
                                env_extra=window)
        assert proc.returncode == 2 and refused["error"] == error, (args, refused)


def test_an_ids_file_over_the_inline_limit_runs_as_an_uploaded_manifest(seeded, prefect_server, tmp_path):
    """--ids-file over BULKOPS_MAX_IDS goes to storage as manifests/{creator}/{sha256}.txt
    and the run reads it from there: the ids are never a flow parameter."""
    import hashlib

    lib = seeded
    mine, theirs = lib.ids("creator-001"), lib.ids("creator-002")
    lines = mine[:6] + mine[:2] + theirs[:2] + ["not-a-uuid"]
    path = _ids_file(tmp_path, lines)
    limits = {"BULKOPS_MAX_IDS": "3"}
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids-file", path, "--json",
                        env_extra={**limits, "BULKOPS_MAX_MANIFEST_IDS": "10"}, prefect=prefect_server)
    assert proc.returncode == 2 and doc["error"] == "manifest_too_large", doc
    assert lib.ids("creator-001") == mine and lib.store.list_keys("manifests") == []

    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids-file", path, "--json", env_extra=limits,
                        prefect=prefect_server)
    assert proc.returncode == 1, proc.stderr[-3000:]
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert doc["manifest"] == {"key": f"manifests/creator-001/{sha}.txt", "sha256": sha, "lines": len(lines)}
    assert (doc["requested"], doc["succeeded"], doc["failed"]) == (9, 6, 3)
    assert set(lib.ids("creator-001")) == set(mine[6:]) and lib.ids("creator-002") == theirs
    run = requests.get(f"{prefect_server.api_url}/flow_runs/{doc['operation_id']}", timeout=30).json()
    assert run["parameters"]["manifest"] == doc["manifest"]["key"] and not run["parameters"].get("video_ids")
    # Inline ids over the limit stay a refusal; several files over it ask for one.
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids", ",".join(mine[6:10]), "--json",
                        env_extra=limits, prefect=prefect_server)
    assert proc.returncode == 2 and doc["error"] == "too_many_ids"
    proc, doc = run_cli(lib, "delete", "--creator", "creator-001", "--ids-file", _ids_file(tmp_path, mine[6:8], "a"),
                        "--ids-file", _ids_file(tmp_path, mine[8:10], "b"), "--json", env_extra=limits,
                        prefect=prefect_server)
    assert proc.returncode == 2 and doc["error"] == "too_many_ids" and "one file" in doc["message"]
