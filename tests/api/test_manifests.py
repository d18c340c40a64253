"""POST /bulk/manifests: an id manifest streamed to storage (raw body or multipart),
keyed by its content in the caller's own folder, exempt from BULKOPS_MAX_BODY_BYTES and
bounded by BULKOPS_MAX_MANIFEST_IDS; then named as `manifest` by a trigger."""

from __future__ import annotations

import io
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _lines(n: int) -> bytes:
    return ("\n".join(str(uuid.UUID(int=i + 1)) for i in range(n)) + "\n").encode()


def test_a_raw_upload_is_stored_by_content_in_the_creators_folder(api):
    body = _lines(500)
    answer = api.post("/bulk/manifests", content=body, headers={**api.bearer(), "Content-Type": "text/plain"})
    assert answer.status_code == 201, answer.text
    doc = answer.json()
    assert doc["key"] == f"manifests/creator-001/{doc['sha256']}.txt" and doc["lines"] == 500
    assert api.lib.store.get(doc["key"]) == body
    again = api.post("/bulk/manifests", content=body, headers=api.bearer())
    assert again.status_code == 201 and again.json() == doc
    # A service token names the creator; a creator token only its own.
    service = api.post("/bulk/manifests?creator_id=creator-002", content=body, headers=api.bearer("svc", service=True))
    assert service.status_code == 201 and service.json()["key"].startswith("manifests/creator-002/")
    assert api.post("/bulk/manifests", content=body, headers=api.bearer("svc", service=True)).json()["error"] \
        == "creator_required"
    other = api.post("/bulk/manifests?creator_id=creator-002", content=body, headers=api.bearer())
    assert other.status_code == 403
    assert api.post("/bulk/manifests", content=body).status_code == 401


def test_multipart_csv_and_parquet_uploads_keep_their_format(api):
    csv_body = b"video_id,title\n" + b"".join(f"{uuid.uuid4()},=cmd()\n".encode() for _ in range(20))
    answer = api.post("/bulk/manifests", files={"file": ("mine.csv", csv_body, "text/csv")}, headers=api.bearer())
    assert answer.status_code == 201, answer.text
    assert answer.json()["key"].endswith(".csv") and answer.json()["lines"] == 20
    buffer = io.BytesIO()
    pq.write_table(pa.table({"video_id": [str(uuid.uuid4()) for _ in range(7)]}), buffer)
    answer = api.post("/bulk/manifests?format=parquet", content=buffer.getvalue(),
                      headers={**api.bearer(), "Content-Type": "application/octet-stream"})
    assert answer.status_code == 201 and answer.json()["lines"] == 7 and answer.json()["key"].endswith(".parquet")


def test_bad_uploads_are_422_and_leave_nothing(api, monkeypatch):
    from config import get_settings

    monkeypatch.setenv("BULKOPS_MAX_MANIFEST_IDS", "100")
    get_settings.cache_clear()
    cases = [
        ({"content": _lines(101)}, "", "manifest_too_large"),
        ({"content": b"\n\n"}, "", "empty_selection"),
        ({"content": "caf\xe9\n".encode("latin-1")}, "", "manifest_unreadable"),
        ({"content": b"id\nx\n"}, "?format=csv", "manifest_unreadable"),
        ({"content": b"PAR1 nope"}, "?format=parquet", "manifest_unreadable"),
        ({"content": _lines(3)}, "?format=xlsx", "bad_manifest"),
        ({"files": {"other": ("x.txt", _lines(3), "text/plain")}}, "", "bad_manifest"),
    ]
    for request, query, code in cases:
        answer = api.post(f"/bulk/manifests{query}", headers=api.bearer(), **request)
        assert answer.status_code == 422 and answer.json()["error"] == code, (code, answer.text)
    assert api.lib.store.list_keys("manifests") == []


def test_an_upload_over_the_body_limit_passes_and_a_trigger_names_it(api, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    from config import get_settings
    from service.launch import run
    from service.requests import DeleteRequest

    monkeypatch.setenv("BULKOPS_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    get_settings.cache_clear()
    api.lib.seed(80, creators=2)
    mine, theirs = api.lib.ids("creator-001"), api.lib.ids("creator-002")
    body = ("\n".join(mine + theirs[:2] + ["junk"]) + "\n").encode()
    assert len(body) > 1024
    assert api.post("/bulk/delete", json={"video_ids": mine}, headers=api.bearer()).status_code == 413
    key = api.post("/bulk/manifests", content=body, headers=api.bearer()).json()["key"]
    # Every check passes (the manifest is read to the end); nothing here executes runs.
    answer = api.post("/bulk/delete", json={"manifest": key}, headers=api.bearer())
    assert answer.status_code == 503 and answer.json()["error"] == "no_runner", answer.text
    assert api.lib.ids("creator-001") == mine
    document = run(DeleteRequest.build(creator_id="creator-001", manifest=key))
    assert document["succeeded"] == len(mine) and document["failed"] == 3
    assert document["manifest"]["key"] == key and document["manifest"]["lines"] == len(mine) + 3
    assert api.lib.ids("creator-001") == [] and api.lib.ids("creator-002") == theirs
