"""Id manifests (videolib/manifests.py) and their staging (videolib/staging.py): keys a
creator may name, the three formats streamed in chunks, refusals, uploads by content,
and the staged selection's duplicates, ownership and batch ranges, on SQLite and
PostgreSQL with real files."""

from __future__ import annotations

import io
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from videolib.ids import RequestError
from videolib.manifests import (
    check_manifest_key,
    inspect_manifest,
    iter_manifest,
    manifest_sha256,
    upload_manifest,
)

C = "creator-001"


def _codes(fn) -> str:
    with pytest.raises(RequestError) as caught:
        fn()
    return caught.value.code


@pytest.mark.parametrize("key", [
    "manifests/creator-002/ids.txt",           # another creator's folder
    "manifests/creator-001/",                  # no name
    "manifests/creator-001/../creator-002/x",  # climbs
    "manifests/creator-001/sub/ids.txt",       # nested
    "manifests/creator-001/.hidden",           # hidden (uploads in progress)
    "/etc/passwd",
    "reports/abc.csv",
    "manifests/creator-001/ids.txt'; DROP TABLE videos; --",
    "manifests/creator-001/" + "a" * 600,
    "",
    None,
    42,
])
def test_a_key_outside_the_creators_own_folder_is_bad_manifest(key):
    assert _codes(lambda: check_manifest_key(C, key)) == "bad_manifest"


def test_a_key_in_the_creators_folder_passes():
    assert check_manifest_key(C, "manifests/creator-001/2026-12 ids.v2.txt".replace(" ", "_")) \
        == "manifests/creator-001/2026-12_ids.v2.txt"
    assert _codes(lambda: check_manifest_key("../x", "manifests/../x/ids.txt")) == "bad_manifest"


def _ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def test_the_three_formats_stream_in_chunks(sqlite_library):
    store = sqlite_library.store
    ids = _ids(25)
    store.put("manifests/creator-001/a.txt", ("\n".join(ids[:12]) + "\n\n  \r\n" + "\r\n".join(ids[12:])).encode())
    store.put("manifests/creator-001/a.csv",
              ("\ufefftitle,video_id\n" + "".join(f'"x, {i}",{v}\n' for i, v in enumerate(ids))).encode())
    buffer = io.BytesIO()
    pq.write_table(pa.table({"video_id": ids, "n": list(range(25))}), buffer, row_group_size=7)
    store.put("manifests/creator-001/a.parquet", buffer.getvalue())
    for key in ("manifests/creator-001/a.txt", "manifests/creator-001/a.csv", "manifests/creator-001/a.parquet"):
        parts = list(iter_manifest(store, key, chunk=10))
        assert [v.strip() for part in parts for v in part] == ids, key
        assert all(len(part) <= 10 for part in parts)
        info = inspect_manifest(store, C, key, max_ids=25)
        assert info.lines == 25 and info.sha256 == manifest_sha256(store, key) and len(info.sha256) == 64


def test_refusals_name_what_is_wrong(sqlite_library):
    store = sqlite_library.store
    store.put("manifests/creator-001/latin1.txt", "caf\xe9\n".encode("latin-1"))
    store.put("manifests/creator-001/nocol.csv", b"id,title\nx,y\n")
    store.put("manifests/creator-001/broken.parquet", b"PAR1 not really")
    store.put("manifests/creator-001/big.txt", ("\n".join(_ids(11)) + "\n").encode())
    store.put("manifests/creator-001/empty.txt", b"\n\n")
    check = lambda key, n=100: inspect_manifest(store, C, f"manifests/creator-001/{key}", max_ids=n)  # noqa: E731
    assert _codes(lambda: check("missing.txt")) == "manifest_not_found"
    assert _codes(lambda: check("latin1.txt")) == "manifest_unreadable"
    assert _codes(lambda: check("nocol.csv")) == "manifest_unreadable"
    assert _codes(lambda: check("broken.parquet")) == "manifest_unreadable"
    assert _codes(lambda: check("big.txt", 10)) == "manifest_too_large"
    assert check("big.txt", 11).lines == 11
    assert _codes(lambda: check("empty.txt")) == "empty_selection"
    assert _codes(lambda: inspect_manifest(store, C, "manifests/creator-002/big.txt", max_ids=100)) == "bad_manifest"


def test_an_upload_is_stored_by_its_content_and_refused_whole_when_too_large(sqlite_library):
    store = sqlite_library.store
    body = ("\n".join(_ids(30)) + "\n").encode()
    first = upload_manifest(store, C, io.BytesIO(body), max_ids=30)
    assert first.key == f"manifests/creator-001/{first.sha256}.txt" and first.lines == 30
    assert store.get(first.key) == body
    again = upload_manifest(store, C, io.BytesIO(body), max_ids=30)
    assert again == first
    assert _codes(lambda: upload_manifest(store, C, io.BytesIO(body * 3), max_ids=30)) == "manifest_too_large"
    assert _codes(lambda: upload_manifest(store, C, io.BytesIO(b""), max_ids=30)) == "empty_selection"
    assert _codes(lambda: upload_manifest(store, C, io.BytesIO(body), max_ids=30, suffix=".exe")) == "bad_manifest"
    assert store.list_keys("manifests/creator-001/") == [first.key]  # nothing half-written stays


def test_staging_collapses_duplicates_keeps_the_creators_own_and_cuts_ranges(library):
    from videolib.staging import batch_ids, batch_len, drop_staged, keep_owned, stage_manifest, staged_batches

    library.seed(40, creators=2, files=False)
    mine, theirs = library.ids("creator-001"), library.ids("creator-002")
    unknown = str(uuid.uuid4())
    # Repeats across the two chunks (the upper-cased ones) and inside the second (mine[18]).
    lines = mine + [mine[18]] + [m.upper() for m in mine[:5]] + theirs[:3] + ["not-a-uuid", "not-a-uuid", unknown]
    op = str(uuid.uuid4())
    staged = stage_manifest(library.engine, op, iter([lines[:17], lines[17:]]))
    assert staged.ids == len(mine) + 3 + 1 and [e.error for e in staged.invalid] == ["invalid_id"]
    assert staged.requested == len(mine) + 3 + 1 + 1
    missing = []
    kept = keep_owned(library.engine, op, "creator-001", on_missing=missing.extend)
    assert kept == len(mine)
    assert sorted(e.video_id for e in missing) == sorted(theirs[:3] + [unknown])
    assert {e.error for e in missing} == {"not_found"}
    batches = staged_batches(library.engine, op, 7)
    assert [batch_len(b) for b in batches] == [7] * (len(mine) // 7) + ([len(mine) % 7] if len(mine) % 7 else [])
    assert [v for b in batches for v in batch_ids(library.engine, b)] == mine  # the manifest's order
    other = str(uuid.uuid4())
    stage_manifest(library.engine, other, iter([mine[:3]]))
    drop_staged(library.engine, op)
    assert batch_ids(library.engine, batches[0]) == []
    assert batch_ids(library.engine, staged_batches(library.engine, other, 10)[0]) == mine[:3]


def test_a_role_without_temporary_tables_stages_with_inserts(pg_server, pg_library, caplog):
    """PostgreSQL stages through COPY into a temporary table; a role refused TEMPORARY
    (a hardened database) gets the same staged ids through INSERTs, with a warning once."""
    from sqlalchemy.engine import make_url

    from videolib.db.engine import create_db_engine
    from videolib.staging import _NO_TEMP, batch_ids, stage_manifest, staged_batches

    dbname = make_url(pg_library.database_url).database
    role = f"stager_{uuid.uuid4().hex[:8]}"
    with pg_server.connect(dbname) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f'REVOKE TEMPORARY ON DATABASE "{dbname}" FROM PUBLIC')
        conn.execute(f"GRANT SELECT, INSERT, DELETE ON staged_ids TO {role}")
    ids = [str(uuid.uuid4()) for _ in range(30)]
    lines = ids + ids[:3] + ["not-a-uuid"]
    owner = pg_library.engine  # the superuser: COPY, no warning
    restricted = create_db_engine(make_url(pg_library.database_url).set(username=role).render_as_string(hide_password=False))
    try:
        with caplog.at_level("WARNING", logger="videolib.staging"):
            first = stage_manifest(owner, str(uuid.uuid4()), iter([lines[:20], lines[20:]]))
            assert not caplog.records
            op = str(uuid.uuid4())
            staged = stage_manifest(restricted, op, iter([lines[:20], lines[20:]]))
            again = stage_manifest(restricted, str(uuid.uuid4()), iter([lines[:20], lines[20:]]))
        assert first.ids == staged.ids == again.ids == 30 and staged.n_invalid == 1
        assert [v for b in staged_batches(restricted, op, 7) for v in batch_ids(restricted, b)] == ids
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "GRANT TEMPORARY" in warnings[0], warnings
        assert restricted.url in _NO_TEMP and owner.url not in _NO_TEMP
    finally:
        _NO_TEMP.discard(restricted.url)
        restricted.dispose()


def test_a_line_longer_than_any_id_list_is_refused_not_read_whole(sqlite_library):
    store = sqlite_library.store
    store.put("manifests/creator-001/long.txt", b"\xef\xbb\xbf" + _ids(1)[0].encode() + b"\n" + b"x" * 100_000 + b"\n")
    store.put("manifests/creator-001/bom.txt", b"\xef\xbb\xbf" + ("\n".join(_ids(3))).encode())
    assert _codes(lambda: inspect_manifest(store, C, "manifests/creator-001/long.txt", max_ids=10)) \
        == "manifest_unreadable"
    assert [v for part in iter_manifest(store, "manifests/creator-001/bom.txt") for v in part] == _ids(3)


def test_manifests_on_the_s3_endpoint(s3_library):
    """Uploads, reads in every format and refusals on S3 as on local files."""
    store = s3_library.store
    ids = _ids(2500)
    info = upload_manifest(store, C, io.BytesIO(("\r\n".join(ids) + "\r\n").encode()), max_ids=2500)
    assert info.lines == 2500 and store.exists(info.key)
    assert [v for part in iter_manifest(store, info.key, chunk=1000) for v in part] == ids
    buffer = io.BytesIO()
    pq.write_table(pa.table({"video_id": ids[:10]}), buffer)
    parquet = upload_manifest(store, C, io.BytesIO(buffer.getvalue()), max_ids=10, suffix=".parquet")
    assert inspect_manifest(store, C, parquet.key, max_ids=10).lines == 10
    store.put("manifests/creator-001/long.txt", b"x" * 10_000 + b"\n")
    assert _codes(lambda: inspect_manifest(store, C, "manifests/creator-001/long.txt", max_ids=10)) \
        == "manifest_unreadable"
    assert _codes(lambda: inspect_manifest(store, C, "manifests/creator-001/none.txt", max_ids=10)) \
        == "manifest_not_found"
    assert _codes(lambda: upload_manifest(store, C, io.BytesIO(("\n".join(ids) + "\n").encode()), max_ids=100)) \
        == "manifest_too_large"
    assert sorted(store.list_keys("manifests/creator-001/")) == sorted([info.key, parquet.key,
                                                                        "manifests/creator-001/long.txt"])
