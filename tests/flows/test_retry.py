"""Retry: a new run over exactly the retryable failed items of a finished delete or
reprocess, read from the earlier run's report in storage (``retry_of``), on SQLite and
PostgreSQL. The failures are real: a store that refuses some keys (fault injection over
a real store), videos held by another pipeline."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from videolib.db.models import Video

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _run(request):
    from service.launch import run

    return run(request)


def test_a_delete_retry_takes_exactly_its_retryable_failures(library, monkeypatch):
    import tasks.delete
    from service.control import retry_request
    from service.requests import DeleteRequest, ExportRequest, RequestError
    from tests.faults import CrashingStore

    library.seed(30, creators=2)
    ids = library.ids("creator-001")
    with library.engine.connect() as conn:
        refused = conn.execute(select(Video.storage_key).where(Video.id.in_(ids[:3]))).scalars().all()
    flaky = CrashingStore(library.store, fail_keys=set(refused))
    monkeypatch.setattr(tasks.delete, "store", lambda: flaky)
    first = _run(DeleteRequest.build(creator_id="creator-001", video_ids=ids[:10] + ["junk-id"]))
    assert first["status"] == "partial" and first["succeeded"] == 7
    assert sorted(e["error"] for e in first["errors"]) == ["invalid_id"] + ["storage_error"] * 3
    monkeypatch.undo()  # the storage works again

    retry = retry_request(first["operation_id"])
    assert retry.retry_of == first["operation_id"] and retry.video_ids is None
    second = _run(retry)
    assert second["retry_of"] == first["operation_id"]
    assert (second["status"], second["requested"], second["succeeded"], second["failed"]) == ("completed", 3, 3, 0)
    assert not set(ids[:10]) & set(library.ids("creator-001"))
    with library.engine.connect() as conn:
        assert conn.execute(select(Video.id).where(Video.status == "deleting")).all() == []

    # Nothing left to retry: the retry itself, an export, a run that failed only finally.
    for operation_id in (second["operation_id"],
                         _run(ExportRequest.build(creator_id="creator-001", format="csv"))["operation_id"],
                         _run(DeleteRequest.build(creator_id="creator-001", video_ids=["junk"]))["operation_id"]):
        with pytest.raises(RequestError) as nothing:
            retry_request(operation_id)
        assert nothing.value.code == "nothing_to_retry"
    with pytest.raises(RequestError) as unknown:
        retry_request("0b0b0b0b-0000-4000-8000-000000000000")
    assert unknown.value.code == "unknown_operation"


def test_retry_of_names_the_same_creator_and_flow_or_nothing_runs(library, monkeypatch):
    """Straight to the flow (a deployment form): another creator's operation, another
    flow's, or ids beside it are refused, and none of the earlier ids is echoed."""
    import tasks.delete
    from flows.bulk_delete import bulk_delete
    from flows.bulk_reprocess import bulk_reprocess
    from tests.faults import CrashingStore

    library.seed(20, creators=2)
    ids = library.ids("creator-001")
    with library.engine.connect() as conn:
        refused = conn.execute(select(Video.storage_key).where(Video.id == ids[0])).scalar_one()
    monkeypatch.setattr(tasks.delete, "store", lambda: CrashingStore(library.store, fail_keys={refused}))
    first = bulk_delete(creator_id="creator-001", video_ids=ids[:2], return_state=True).result()
    monkeypatch.undo()
    assert first["failed"] == 1
    for flow, params in ((bulk_delete, {"creator_id": "creator-002"}),
                         (bulk_reprocess, {"creator_id": "creator-001"}),
                         (bulk_delete, {"creator_id": "creator-001", "video_ids": ids[5:6]})):
        state = flow(**params, retry_of=first["operation_id"], return_state=True)
        assert state.is_failed()
        from service.status import status_of

        document = status_of(str(state.state_details.flow_run_id))["result"]
        assert document["succeeded"] == 0 and ids[0] not in str(document)
        assert document["message"]
    assert ids[0] in library.ids("creator-001") and ids[5] in library.ids("creator-001")


def test_a_reprocess_retry_takes_the_busy_items_again(library):
    from service.control import retry_request
    from service.requests import ReprocessRequest

    library.seed(40, creators=1, transcript_ratio=1.0)
    with library.engine.connect() as conn:
        busy = conn.execute(select(Video.id).where(Video.status == "processing")).scalars().all()
        free = conn.execute(select(Video.id).where(Video.status == "ready")).scalars().all()
    assert busy, "the seed leaves some videos held by another pipeline"
    first = _run(ReprocessRequest.build(creator_id="creator-001", video_ids=busy + free[:5]))
    assert {e["error"] for e in first["errors"]} == {"busy"}
    # The other pipeline has let go of them since.
    with library.engine.begin() as conn:
        conn.execute(Video.__table__.update().where(Video.id.in_(busy)).values(status="ready", processing_by=None))
    second = _run(retry_request(first["operation_id"]))
    assert (second["requested"], second["succeeded"], second["retry_of"]) == (len(busy), len(busy),
                                                                               first["operation_id"])
