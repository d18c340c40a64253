"""Every operation leaves a record of its result document in storage
(``operations/{id}.json``) as it ends, and status answers from it once Prefect no longer
has the run (deleted here with Prefect's own API, as pruning does): on SQLite and
PostgreSQL with local files, and on the S3 endpoint."""

from __future__ import annotations

import json
import uuid

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _forget_run(operation_id: str) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.delete_flow_run(uuid.UUID(operation_id))


def _record_then_status(lib, document: dict) -> dict:
    from service.status import read_status, status_of

    before = read_status(document["operation_id"])
    record = json.loads(lib.store.get(f"operations/{document['operation_id']}.json"))
    assert record == document == before["result"]
    _forget_run(document["operation_id"])
    after = status_of(document["operation_id"])
    assert after == {key: before[key] for key in after}, (before, after)
    assert set(after) == {"operation_id", "operation", "creator_id", "status", "progress", "eta_seconds", "result"}
    return after


def test_a_finished_operation_is_read_back_from_its_record_once_prefect_forgets_it(library):
    from service.launch import run
    from service.requests import DeleteRequest, ExportRequest

    library.seed(12, creators=1)
    ids = library.ids("creator-001")
    deleted = run(DeleteRequest.build(creator_id="creator-001", video_ids=ids[:2] + ["not-an-id"]))
    after = _record_then_status(library, deleted)
    assert after["status"] == "partial" and after["progress"] == {"current": 3, "total": 3, "percent": 100.0}
    exported = run(ExportRequest.build(creator_id="creator-001", format="csv"))
    after = _record_then_status(library, exported)
    assert after["result"]["output"]["rows"] == 10 and after["status"] == "completed"


def test_records_on_the_s3_endpoint(s3_library):
    from service.launch import run
    from service.requests import DeleteRequest

    s3_library.seed(6, creators=1)
    document = run(DeleteRequest.build(creator_id="creator-001", video_ids=s3_library.ids("creator-001")[:1]))
    assert _record_then_status(s3_library, document)["status"] == "completed"


def test_no_run_and_no_record_is_still_unknown_and_ids_never_become_keys(sqlite_library):
    from service.status import read_status, status_of
    from videolib.ids import RequestError
    from videolib.records import read_record

    assert read_status(str(uuid.uuid4())) is None
    for bad in ("../../etc/passwd", "operations/x", "", "0b0b0b0b-0000-4000-8000-00000000000"):
        assert read_record(sqlite_library.store, bad) is None
        with pytest.raises(RequestError) as unknown:
            status_of(bad)
        assert unknown.value.code == "unknown_operation"


def test_a_result_prefect_could_not_take_still_reaches_the_caller_and_status(sqlite_library, monkeypatch):
    """The result artifacts fail to reach Prefect (a server that answers errors when the
    run ends): the run still returns its document (what the CLI prints) and ends in its
    state, and status reads the document from the run's record in storage."""
    import flows.operation
    from service.launch import run
    from service.requests import DeleteRequest
    from service.status import read_status

    def refused(document):
        raise RuntimeError("503 Service Unavailable: database is locked")

    monkeypatch.setattr(flows.operation, "publish", refused)
    sqlite_library.seed(4, creators=1)
    ids = sqlite_library.ids("creator-001")
    document = run(DeleteRequest.build(creator_id="creator-001", video_ids=ids[:2] + ["not-an-id"]))
    assert (document["status"], document["succeeded"], document["failed"]) == ("partial", 2, 1)
    status = read_status(document["operation_id"])
    assert status["status"] == "partial" and status["result"] == document
    assert status["progress"] == {"current": 3, "total": 3, "percent": 100.0}
