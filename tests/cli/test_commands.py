"""The `bulkops` command as a user runs it, where no operation runs: help, init, seed,
search, and every refusal (exit 2, one JSON document naming what to fix), with real
processes and real files, exactly as CONTRACT.md says."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from tests.clitools import counts, ids_file as _ids_file, run_cli
from videolib.db.models import Video


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


def test_help_shows_every_default_it_names(sqlite_library):
    """Defaults written in brackets are text, not console markup that swallows them."""
    env = dict(os.environ, COLUMNS="200", **sqlite_library.env())
    for command, default in ((["reprocess"], "[default: 1000 with hashing, 100 with minilm]"),
                             (["delete"], "[default: BULKOPS_BATCH_SIZE, 1000]"),
                             (["export"], "[default: BULKOPS_SPLIT, 1]"), (["serve"], "[default: BULKOPS_SERVE_LIMIT, 4]")):
        proc = subprocess.run([sys.executable, "-m", "cli.main", *command, "--help"], env=env, capture_output=True,
                              text=True)
        assert proc.returncode == 0 and default in " ".join(proc.stdout.split()), (command, proc.stdout)


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


def test_refusal_without_json_explains_on_stderr(seeded):
    proc, _ = run_cli(seeded, "delete", "--creator", "creator-001")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "exactly one of --ids, --ids-file or --all" in proc.stderr


# ----------------------------------------------------------------------------- operations


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


def test_search_without_embedded_chunks_says_what_to_do(sqlite_library):
    lib = sqlite_library
    from videolib.seed import seed_library

    seed_library(lib.engine, None, None, videos=5, creators=1, seed=3)  # no embeddings
    proc, doc = run_cli(lib, "search", "--creator", "creator-001", "bread", "--json")
    assert proc.returncode == 0 and doc["results"] == [] and doc["searched_chunks"] == 0
    assert "bulkops reprocess --creator creator-001 --all" in doc["message"]


def test_token_prints_a_token_the_api_accepts_and_refuses_what_it_must(sqlite_library):
    from tests.api.conftest import SECRET

    env = {"BULKOPS_JWT_SECRET": SECRET}
    proc, doc = run_cli(sqlite_library, "token", "--creator", "creator-001", "--ttl", "30m", "--json", env_extra=env)
    assert proc.returncode == 0, proc.stderr
    assert (doc["creator_id"], doc["role"]) == ("creator-001", "creator") and doc["expires_at"].endswith("Z")
    import jwt

    claims = jwt.decode(doc["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "creator-001" and 1790 <= claims["exp"] - claims["iat"] <= 1800
    proc, _ = run_cli(sqlite_library, "token", "--creator", "backend", "--service", env_extra=env)
    assert proc.returncode == 0 and jwt.decode(proc.stdout.strip(), SECRET, algorithms=["HS256"])["role"] == "service"
    for args, code in ((["--creator", "bad id/.."], "invalid_creator"), (["--creator", "c", "--ttl", "soon"], "usage"),
                       (["--creator", "c", "--ttl", "0"], "usage"), (["--creator", "c", "--ttl", "400d"], "usage")):
        proc, doc = run_cli(sqlite_library, "token", *args, "--json", env_extra=env)
        assert proc.returncode == 2 and doc["error"] == code, (args, doc)
    proc, doc = run_cli(sqlite_library, "token", "--creator", "c", "--json", env_extra={"BULKOPS_JWT_SECRET": ""})
    assert proc.returncode == 2 and doc["error"] == "bad_settings" and "BULKOPS_JWT_SECRET" in doc["message"]
