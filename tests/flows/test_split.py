"""One operation across workers (`--split N`), the pieces that need no worker: how the
batches are shared, the share documents (data only: a hostile one is refused), and the
refusals before anything runs. Split runs on real workers: tests/e2e/test_several_workers.py."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_shares_are_contiguous_and_within_one_of_each_other():
    from flows.split import shares

    assert shares(10, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert shares(2, 5) == [[0], [1]]  # never an empty share
    assert shares(7, 1) == [list(range(7))]
    for batches in range(1, 40):
        for split in range(1, 17):
            cut = shares(batches, split)
            assert sum(cut, []) == list(range(batches))
            assert max(map(len, cut)) - min(map(len, cut)) <= 1


def test_a_share_document_round_trips_and_names_only_data(sqlite_library):
    from flows.split import decode, encode, read_share, share_key, write_share
    from videolib.export import ExportBatch, ExportFilter

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    kwargs = {"creator_id": "creator-001", "columns": ["id", "title"], "export_filter": ExportFilter(
        status="ready", created_after=when), "format": "csv", "formula_guard": True}
    batches = [ExportBatch(lo="a", hi="m", rows=3), ExportBatch(ids=["x", "y"], rows=2), ExportBatch(lo="n", rows=1),
               ExportBatch(staged={"staged": str(uuid.uuid4()), "after": 10, "through": 20, "count": 7}, rows=7)]
    assert decode(json.loads(json.dumps(encode(kwargs)))) == kwargs
    parent = str(uuid.uuid4())
    write_share(parent, 0, operation="export", indices=[1, 2, 3], batches=batches, task_kwargs=kwargs)
    share = read_share(parent, 0)
    assert share["indices"] == [1, 2, 3] and share["batches"] == batches[1:] and share["task_kwargs"] == kwargs
    with pytest.raises(TypeError):
        encode({"callback": object()})
    # A document that names another operation, an unknown one, or a type that is not data.
    store = sqlite_library.store
    for forged in ({"parent_id": str(uuid.uuid4()), "operation": "delete"},
                   {"parent_id": parent, "operation": "os.system"},
                   {"parent_id": parent, "operation": "delete", "batches": [{"__type__": "Popen", "args": "sh"}]}):
        store.put(share_key(parent, 1), json.dumps({"indices": [0], "batches": [], "task_kwargs": {}, **forged}).encode())
        with pytest.raises(ValueError):
            read_share(parent, 1)


def test_split_without_workers_is_refused_before_anything_runs(sqlite_library, monkeypatch):
    """From the CLI's door (service.launch) and in the flow itself: no bulk-share
    deployment on the server, so nothing would run the shares: no_runner, nothing deleted."""
    from flows.bulk_delete import bulk_delete
    from flows.split import check_split
    from service.launch import run
    from service.requests import DeleteRequest
    from videolib.ids import RequestError

    sqlite_library.seed(6, creators=1)
    before = sqlite_library.ids("creator-001")
    assert check_split(None) == 1  # BULKOPS_SPLIT's default: no shares, nothing to ask
    with pytest.raises(RequestError) as refused:
        run(DeleteRequest.build(creator_id="creator-001", video_ids=before[:2], split=2))
    assert refused.value.code == "no_runner" and "--split 2" in refused.value.message
    state = bulk_delete(creator_id="creator-001", video_ids=before[:2], split=2, return_state=True)
    from service.status import status_of

    doc = status_of(str(state.state_details.flow_run_id))["result"]
    assert state.is_failed() and doc["status"] == "failed" and doc["error"] == "no_runner", doc
    monkeypatch.setenv("BULKOPS_SPLIT", "3")
    from config import get_settings

    get_settings.cache_clear()
    try:
        with pytest.raises(RequestError) as refused:
            run(DeleteRequest.build(creator_id="creator-001", video_ids=before[:2]))
        assert refused.value.code == "no_runner" and "--split 3" in refused.value.message
    finally:
        get_settings.cache_clear()
    assert sqlite_library.ids("creator-001") == before


def test_a_share_keeps_its_part_of_the_batches_in_flight():
    """Split over N shares, an operation still runs BULKOPS_TASK_WORKERS batches at once
    against the database and storage: each share at most its part (the share document's
    ``in_flight``), every batch once."""
    import threading
    import time

    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.bulk_share import _in_flight

    lock, running, most = threading.Lock(), [0], [0]

    @task
    def batch(items, index, *, operation_id, stop, label):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        return {"index": index, "items": items, "label": label}

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def share():
        spec = {"batches": [[i] for i in range(10)], "task_kwargs": {"label": "x"}}
        return [(index, future.result()) for index, future in _in_flight(batch, spec, list(range(10, 20)),
                                                                           str(uuid.uuid4()), 3)]

    done = share()
    assert sorted(index for index, _ in done) == list(range(10, 20))
    assert all(result["index"] == index and result["items"] == [index - 10] for index, result in done)
    assert most[0] == 3
