"""The `bulkops` command as a user runs it: a real process, real files, exit codes and
JSON documents exactly as CONTRACT.md says. Operations run against a shared `prefect
server` (concurrent CLI processes must not each start an ephemeral server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from videolib.db.models import Video, VideoChunk

BULKOPS = str(Path(sys.executable).parent / "bulkops")


def run_cli(lib, *args, prefect=None, env_extra=None, timeout=300, check_json=True):
    env = dict(os.environ)
    env.update(lib.env())
    env.pop("PREFECT_API_URL", None)
    if prefect is not None:
        env["PREFECT_API_URL"] = prefect.api_url
    env.update(env_extra or {})
    proc = subprocess.run([BULKOPS, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    doc = None
    if "--json" in args and check_json:
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"--json must print exactly one document, got: {proc.stdout!r} / {proc.stderr[-2000:]}"
        doc = json.loads(lines[0])
    return proc, doc


def kill_after_first_batch(args, env) -> None:
    """Run `bulkops ARGS` and SIGKILL it once its first batch has finished: mid-run,
    with batches in flight (the plain progress lines on stderr say when)."""
    proc = subprocess.Popen([BULKOPS, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if " 1/" in line and "batches" in line or not line:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def counts(lib):
    with lib.engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(Video)).scalar_one(),
                conn.execute(select(func.count()).select_from(VideoChunk)).scalar_one())


# ----------------------------------------------------------------------------- no prefect


def test_help_init_and_seed_do_not_import_prefect(sqlite_library):
    code = (
        "import sys; from cli.main import main; "
        "rc = main(sys.argv[1:]); "
        "assert 'prefect' not in sys.modules, 'prefect imported'; sys.exit(rc)"
    )
    env = dict(os.environ, **sqlite_library.env())
    for args in (["--help"], ["init", "--json"], ["seed", "--videos", "5", "--json"], ["delete", "--help"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_init_creates_and_reports_schema(sqlite_library, tmp_path):
    lib = sqlite_library
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    proc, doc = run_cli(lib, "init", "--json", env_extra={"BULKOPS_DATABASE_URL": fresh})
    assert proc.returncode == 0 and doc["before"] is None and doc["revision"]
    proc, again = run_cli(lib, "init", "--json", env_extra={"BULKOPS_DATABASE_URL": fresh})
    assert again["before"] == again["revision"] == doc["revision"]


def test_init_on_postgres(pg_library):
    proc, doc = run_cli(pg_library, "init", "--json")
    assert proc.returncode == 0 and doc["revision"] and "postgresql" in doc["database"]


def test_seed_json_document(sqlite_library):
    proc, doc = run_cli(sqlite_library, "seed", "--videos", "40", "--creators", "3", "--seed", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert set(doc) == {"creators", "videos", "chunks"}
    assert doc["videos"] == 40 == sum(c["videos"] for c in doc["creators"])
    assert [c["creator_id"] for c in doc["creators"]] == ["creator-001", "creator-002", "creator-003"]
    assert doc["chunks"] == counts(sqlite_library)[1] > 0
    # Same seed again: refused clearly, nothing added.
    proc, doc2 = run_cli(sqlite_library, "seed", "--videos", "40", "--seed", "5", "--json")
    assert proc.returncode == 2 and doc2["error"] == "already_seeded"
    assert counts(sqlite_library)[0] == 40


def test_seed_no_files(sqlite_library):
    proc, doc = run_cli(sqlite_library, "seed", "--videos", "30", "--no-files", "--json")
    assert proc.returncode == 0 and doc["videos"] == 30
    assert sqlite_library.store.list_keys("videos") == []


# ----------------------------------------------------------------------------- refusals (exit 2)


@pytest.fixture
def seeded(sqlite_library):
    sqlite_library.seed(30, creators=2)
    return sqlite_library


def _ids_file(tmp_path, lines, name="ids.txt"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "args, error",
    [
        (["delete", "--creator", "creator-001"], "bad_selection"),
        (["delete", "--creator", "creator-001", "--ids", "{id}", "--all"], "bad_selection"),
        (["delete", "--creator", "creator-001", "--ids", "{id}", "--ids-file", "{file}"], "bad_selection"),
        (["delete", "--creator", "creator-001", "--ids", ""], "empty_selection"),
        (["delete", "--creator", "creator-001", "--ids", " , ,"], "empty_selection"),
        (["delete", "--creator", "creator-001", "--ids-file", "{empty}"], "empty_selection"),
        (["delete", "--creator", "creator-001", "--ids-file", "/nonexistent/ids.txt"], "ids_file_not_found"),
        (["delete", "--creator", "creator-001", "--ids-file", "{dir}"], "ids_file_unreadable"),
        (["delete", "--creator", "creator-001", "--ids-file", "{binary}"], "ids_file_unreadable"),
        (["delete", "--creator", "../creator-001", "--all"], "invalid_creator"),
        (["delete", "--creator", "c'; DROP TABLE videos;--", "--ids", "{id}"], "invalid_creator"),
        (["delete", "--creator", "x" * 65, "--all"], "invalid_creator"),
        (["delete", "--creator", "nobody-here", "--all"], "empty_selection"),
        (["delete", "--creator", "creator-001", "--ids", "{id}", "--batch-size", "0"], "usage"),
        (["delete", "--creator", "creator-001", "--ids", "{id}", "--frobnicate"], "usage"),
        (["delete", "--ids", "{id}"], "usage"),
        (["explode"], "usage"),
    ],
)
def test_refused_before_any_flow_run(seeded, tmp_path, args, error):
    lib = seeded
    vid = lib.ids("creator-001")[0]
    (tmp_path / "adir").mkdir()
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81garbage")
    subs = {"id": vid, "file": _ids_file(tmp_path, [vid]), "empty": _ids_file(tmp_path, ["", "  "], "empty.txt"),
            "dir": str(tmp_path / "adir"), "binary": str(tmp_path / "bin.txt")}
    before = counts(lib)
    started = time.monotonic()
    proc, doc = run_cli(lib, *[a.format(**subs) for a in args], "--json")
    assert proc.returncode == 2, proc.stderr
    assert set(doc) == {"error", "message"} and doc["error"] == error and doc["message"]
    assert counts(lib) == before
    assert time.monotonic() - started < 30  # refused without starting a Prefect server (no timing claim beyond that)


def test_over_limit_selection_refused(seeded, tmp_path):
    before = seeded.ids("creator-001")
    ids = before[:4]
    proc, doc = run_cli(seeded, "delete", "--creator", "creator-001", "--ids", ",".join(ids), "--json",
                        env_extra={"BULKOPS_MAX_IDS": "3"})
    assert proc.returncode == 2 and doc["error"] == "too_many_ids" and "at most 3" in doc["message"]
    assert seeded.ids("creator-001") == before


@pytest.mark.parametrize(
    "env, args, error, words",
    [
        ({"BULKOPS_MAX_IDS": "abc"}, ["delete", "--creator", "creator-001", "--ids", "{id}"], "bad_settings",
         "BULKOPS_MAX_IDS"),
        ({"BULKOPS_MAX_IDS": "0"}, ["delete", "--creator", "creator-001", "--ids", "{id}"], "bad_settings",
         "BULKOPS_MAX_IDS"),
        ({"BULKOPS_EMBEDDER": "bogus"}, ["search", "--creator", "creator-001", "words"], "bad_settings",
         "BULKOPS_EMBEDDER"),
        ({"BULKOPS_DATABASE_URL": "nonsense://x"}, ["delete", "--creator", "creator-001", "--ids", "{id}"],
         "bad_database_url", "BULKOPS_DATABASE_URL"),
        ({"BULKOPS_DATABASE_URL": "sqlite:////proc/no/such.db"}, ["init"], "database_unavailable",
         "BULKOPS_DATABASE_URL"),
        ({"BULKOPS_DATABASE_URL": "postgresql+psycopg://u:s3cret@127.0.0.1:1/db"},
         ["delete", "--creator", "creator-001", "--all"], "database_unavailable", "u:***@127.0.0.1:1"),
        ({"PREFECT_API_URL": "http://127.0.0.1:1/api"}, ["delete", "--creator", "creator-001", "--ids", "{id}"],
         "prefect_unreachable", "prefect server start"),
        ({"PREFECT_API_URL": "http://127.0.0.1:1/api"}, ["status", "00000000-0000-4000-8000-000000000000"],
         "prefect_unreachable", "PREFECT_API_URL"),
        # More ids than fit in a flow run's parameters (Prefect refuses over 512 KiB).
        ({"BULKOPS_MAX_IDS": "20000"}, ["delete", "--creator", "creator-001", "--ids", "{id}"], "bad_settings",
         "13000"),
        # Storage that cannot be used: refused before any run, for every command that uses it.
        ({"BULKOPS_STORAGE_URL": "/etc/passwd/storage"}, ["delete", "--creator", "creator-001", "--ids", "{id}"],
         "storage_unavailable", "/etc/passwd/storage"),
        ({"BULKOPS_STORAGE_URL": "/etc/passwd/storage"}, ["export", "--creator", "creator-001", "--format", "csv"],
         "storage_unavailable", "Not a directory"),
        ({"BULKOPS_STORAGE_URL": "/proc/bulkops-storage"}, ["reprocess", "--creator", "creator-001", "--all"],
         "storage_unavailable", "/proc/bulkops-storage"),
        ({"BULKOPS_STORAGE_URL": "/proc/bulkops-storage"}, ["seed", "--videos", "3"], "storage_unavailable",
         "BULKOPS_STORAGE_URL"),
        # A database directory that does not exist is not made (only the data directory is).
        ({"BULKOPS_DATABASE_URL": "sqlite:////nonexistent-bulkops-dir/x.db"},
         ["delete", "--creator", "creator-001", "--ids", "{id}"], "database_unavailable", "does not exist"),
        ({"BULKOPS_DATABASE_URL": "sqlite:////nonexistent-bulkops-dir/x.db"}, ["init"], "database_unavailable",
         "/nonexistent-bulkops-dir"),
    ],
)
def test_a_broken_set_up_is_refused_with_what_to_fix(seeded, env, args, error, words):
    """Settings that do not validate, a database that cannot be opened, a Prefect server
    out of reach: one JSON document naming what to fix, exit 2, no traceback on stdout."""
    lib = seeded
    vid = lib.ids("creator-001")[0]
    before = counts(lib)
    proc, doc = run_cli(lib, *[a.format(id=vid) for a in args], "--json", env_extra=env)
    assert proc.returncode == 2, proc.stderr
    assert set(doc) == {"error", "message"} and doc["error"] == error and words in doc["message"], doc
    assert "s3cret" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert counts(lib) == before and not os.path.exists("/nonexistent-bulkops-dir")


def test_a_missing_s3_bucket_is_refused_before_any_run(seeded, s3_server):
    lib = seeded
    vid = lib.ids("creator-001")[0]
    env = {"BULKOPS_STORAGE_URL": "s3://no-such-bucket-bulkops/x", "BULKOPS_S3_ENDPOINT_URL": s3_server.endpoint_url}
    for args in (["delete", "--creator", "creator-001", "--ids", vid], ["seed", "--videos", "2"],
                 ["export", "--creator", "creator-001", "--format", "parquet"]):
        proc, doc = run_cli(lib, *args, "--json", env_extra=env)
        assert proc.returncode == 2 and doc["error"] == "storage_unavailable", (args, proc.stderr[-2000:])
        assert "no-such-bucket-bulkops" in doc["message"] and "does not exist" in doc["message"]
    assert lib.ids("creator-001")


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


def test_refusal_without_json_explains_on_stderr(seeded):
    proc, _ = run_cli(seeded, "delete", "--creator", "creator-001")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "exactly one of --ids, --ids-file or --all" in proc.stderr


# ----------------------------------------------------------------------------- operations


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


@pytest.mark.parametrize(
    "args, error",
    [
        (["reprocess", "--creator", "creator-001"], "bad_selection"),
        (["reprocess", "--creator", "creator-001", "--all", "--ids", "{id}"], "bad_selection"),
        (["reprocess", "--creator", "creator-001", "--ids", " , "], "empty_selection"),
        (["reprocess", "--creator", "creator-001", "--all", "--embedder", "gpt-9"], "unknown_embedder"),
        (["reprocess", "--creator", "creator-001", "--all", "--chunk-target", "20", "--chunk-overlap", "20"],
         "bad_chunking"),
        (["reprocess", "--creator", "creator-001", "--all", "--chunk-unit", "bytes"], "bad_chunking"),
        (["reprocess", "--creator", "creator-001", "--all", "--chunk-target", "999999"], "bad_chunking"),
        (["reprocess", "--creator", "c'; DROP TABLE videos;--", "--all"], "invalid_creator"),
        (["reprocess", "--creator", "nobody-here", "--all"], "empty_selection"),
        (["search", "--creator", "creator-001", "   "], "empty_query"),
        (["search", "--creator", "creator-001", "x" * 2001], "query_too_long"),
        (["search", "--creator", "creator-001", "bread", "--top", "0"], "bad_top"),
        (["search", "--creator", "creator-001", "bread", "--top", "101"], "bad_top"),
        (["search", "--creator", "../../etc", "bread"], "invalid_creator"),
        (["search", "--creator", "creator-001", "bread", "--embedder", "nope"], "unknown_embedder"),
        (["search", "--creator", "creator-001"], "usage"),
    ],
)
def test_reprocess_and_search_refusals(seeded, args, error):
    vid = seeded.ids("creator-001")[0]
    before = counts(seeded)
    with seeded.engine.connect() as conn:
        statuses = conn.execute(select(Video.id, Video.status, Video.updated_at).order_by(Video.id)).all()
    proc, doc = run_cli(seeded, *[a.format(id=vid) for a in args], "--json")
    assert proc.returncode == 2, proc.stderr
    assert set(doc) == {"error", "message"} and doc["error"] == error and doc["message"]
    assert counts(seeded) == before
    with seeded.engine.connect() as conn:
        assert conn.execute(select(Video.id, Video.status, Video.updated_at).order_by(Video.id)).all() == statuses


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


def test_search_without_embedded_chunks_says_what_to_do(sqlite_library):
    lib = sqlite_library
    from videolib.seed import seed_library

    seed_library(lib.engine, None, None, videos=5, creators=1, seed=3)  # no embeddings
    proc, doc = run_cli(lib, "search", "--creator", "creator-001", "bread", "--json")
    assert proc.returncode == 0 and doc["results"] == [] and doc["searched_chunks"] == 0
    assert "bulkops reprocess --creator creator-001 --all" in doc["message"]


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
