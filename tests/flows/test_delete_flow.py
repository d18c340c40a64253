"""The bulk-delete flow under Prefect's real test harness: states, artifacts, reports,
batch sizing, refusal and the stop flag."""

from __future__ import annotations

import csv
import io
import uuid

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _run(**params):
    from flows.bulk_delete import bulk_delete

    return bulk_delete(**params, return_state=True)


def _artifacts(run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import Artifact

    with get_client(sync_client=True) as client:
        response = client.request(
            "POST", "/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [run_id]}}, "sort": "CREATED_DESC", "limit": 200, "offset": 0},
        )
    return Artifact.model_validate_list(response.json())


def _status(run_id: str):
    from service.status import read_status

    return read_status(run_id)


def test_completed_delete(library):
    library.seed(30, creators=2)
    ids = library.ids("creator-001")
    state = _run(creator_id="creator-001", video_ids=ids, batch_size=4)
    assert state.is_completed() and state.name == "Completed"
    doc = state.result()
    assert doc["status"] == "completed" and doc["requested"] == len(ids) == doc["succeeded"]
    assert doc["failed"] == 0 and doc["report_path"] is None and doc["errors"] == []
    assert doc["verified"] == {"videos": len(ids), "objects_absent": 2 * len(ids), "rows_absent": len(ids)}
    assert library.ids("creator-001") == [] and library.ids("creator-002")
    assert doc["manifest_path"] and library.store.exists(doc["manifest_path"])

    status = _status(doc["operation_id"])
    assert status["status"] == "completed" and status["operation"] == "delete"
    assert status["creator_id"] == "creator-001"
    assert status["progress"] == {"current": len(ids), "total": len(ids), "percent": 100.0}
    assert status["result"]["succeeded"] == len(ids)
    kinds = {a.type for a in _artifacts(doc["operation_id"])}
    assert {"progress", "markdown"} <= kinds and "table" not in kinds


def test_a_batch_retried_after_its_rows_went_counts_them_deleted(library, monkeypatch):
    """Prefect retries a batch task whole. Its first attempt dies after its row delete
    (injected in its second audit write): the retry finds the rows gone and counts them
    as the batch's deletions, proven, not as ``not_found``."""
    import tasks.delete
    from tests.faults import CrashingStore
    from videolib.delete import read_manifest_records

    library.seed(20, creators=2)
    ids, theirs = library.ids("creator-001"), library.ids("creator-002")
    dying = CrashingStore(library.store, fail_put_prefix="audit/", fail_put_number=2)
    monkeypatch.setattr(tasks.delete, "store", lambda: dying)
    doc = _run(creator_id="creator-001", video_ids=ids).result()  # one batch
    assert doc["status"] == "completed" and doc["succeeded"] == len(ids) and doc["failed"] == 0, doc
    assert dying.puts == 3, "died in its second audit write; the retry completed the proof"
    assert doc["verified"] == {"videos": len(ids), "objects_absent": 2 * len(ids), "rows_absent": len(ids)}
    records = read_manifest_records(library.store, doc["operation_id"])
    assert sorted(r["video_id"] for r in records) == sorted(ids)
    assert all(r["verified"] == {"objects_absent": 2, "row_absent": True, "chunks_absent": True} for r in records)
    assert library.ids("creator-001") == [] and library.ids("creator-002") == theirs


def test_partial_delete_reports_every_failed_item(sqlite_library):
    lib = sqlite_library
    lib.seed(20, creators=2)
    mine = lib.ids("creator-001")[:5]
    theirs = lib.ids("creator-002")[:2]
    hostile = '=HYPERLINK("http://evil.example","x")'
    request = mine + mine[:2] + theirs + ["not-a-uuid", hostile, str(uuid.uuid4())]

    state = _run(creator_id="creator-001", video_ids=request)

    assert state.is_completed() and state.name == "Partial"
    doc = state.result()
    assert doc["status"] == "partial"
    assert doc["requested"] == 5 + 2 + 3  # duplicates collapse, are not errors
    assert doc["succeeded"] == 5 and doc["failed"] == 5 and doc["skipped"] == 0
    assert doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"]
    errors = {e["video_id"]: e["error"] for e in doc["errors"]}
    assert errors == {theirs[0]: "not_found", theirs[1]: "not_found", "not-a-uuid": "invalid_id",
                      hostile: "invalid_id", request[-1]: "not_found"}
    # The CSV report lists every failed item, and a hostile id cannot become a formula.
    assert doc["report_path"] == f"reports/{doc['operation_id']}.csv"
    rows = list(csv.DictReader(io.StringIO(lib.store.get(doc["report_path"]).decode("utf-8"))))
    assert len(rows) == 5
    assert "'" + hostile in {r["video_id"] for r in rows}
    assert not any(r["video_id"].startswith(("=", "+", "-", "@")) for r in rows)
    kinds = [a.type for a in _artifacts(doc["operation_id"])]
    assert "table" in kinds
    assert _status(doc["operation_id"])["status"] == "partial"


def test_nothing_succeeded_is_failed_with_readable_result(sqlite_library):
    lib = sqlite_library
    lib.seed(6, creators=2)
    theirs = lib.ids("creator-002")[:2]
    state = _run(creator_id="creator-001", video_ids=theirs + ["bogus"])
    assert state.is_failed()
    status = _status(str(state.state_details.flow_run_id))
    assert status["status"] == "failed"
    assert status["result"]["failed"] == 3 and status["result"]["succeeded"] == 0
    assert len(lib.ids("creator-002")) == 3


@pytest.mark.parametrize(
    "params, code_words",
    [
        ({"video_ids": []}, "no videos selected"),
        ({"video_ids": None}, "no videos selected"),
        ({"all_videos": True, "video_ids": ["x"]}, "not both"),
        ({"creator_id": "../../etc", "video_ids": ["x"]}, "creator_id"),
        ({"creator_id": "a b", "all_videos": True}, "creator_id"),
        # The key of malformed ids set aside by a front door: only this creator's, only that shape.
        ({"invalid_ids_key": "../../etc/passwd"}, "invalid_ids_key"),
        ({"invalid_ids_key": "requests/creator-002/invalid-ids-" + "0" * 32 + ".json"}, "invalid_ids_key"),
        ({"invalid_ids_key": "audit/delete/x/manifest.json"}, "invalid_ids_key"),
        ({"invalid_ids_key": "requests/creator-001/invalid-ids-" + "0" * 32 + ".json"}, "are gone"),
        ({"all_videos": True, "invalid_ids_key": "requests/creator-001/invalid-ids-" + "0" * 32 + ".json"},
         "not both"),
    ],
)
def test_bad_request_fails_at_once_touching_nothing(sqlite_library, params, code_words):
    lib = sqlite_library
    lib.seed(6, creators=1)
    before = lib.ids("creator-001")
    state = _run(**{"creator_id": "creator-001", **params})
    assert state.is_failed()
    assert code_words in state.message
    assert lib.ids("creator-001") == before
    result = _status(str(state.state_details.flow_run_id))["result"]
    assert result["status"] == "failed" and code_words in result["message"] and result["report_path"] is None
    assert lib.store.list_keys("reports") == []


def test_malformed_ids_set_aside_by_a_front_door_are_reported(library):
    from videolib.selection import stage_invalid_ids

    lib = library
    lib.seed(6, creators=1)
    ids = lib.ids("creator-001")
    key = stage_invalid_ids(lib.store, "creator-001", ["nope", "x" * 100])
    doc = _run(creator_id="creator-001", video_ids=ids[:2], invalid_ids_key=key).result()
    assert (doc["status"], doc["requested"], doc["succeeded"], doc["failed"]) == ("partial", 4, 2, 2)
    assert [(e["video_id"], e["error"]) for e in doc["errors"]] == [("nope", "invalid_id"), ("x" * 64 + "…", "invalid_id")]
    # Only malformed ids: nothing to do, every item reported; not a refusal.
    only = stage_invalid_ids(lib.store, "creator-001", ["nope"])
    state = _run(creator_id="creator-001", video_ids=[], invalid_ids_key=only)
    assert state.is_failed() and _status(str(state.state_details.flow_run_id))["result"]["failed"] == 1
    assert lib.ids("creator-001") == ids[2:]


def test_unusable_storage_fails_the_run_at_once_touching_nothing(sqlite_library, monkeypatch):
    """A deployment run (no CLI to check first) on storage that cannot be used."""
    from tests.conftest import reset_bulkops_caches

    lib = sqlite_library
    lib.seed(6, creators=1)
    ids = lib.ids("creator-001")
    monkeypatch.setenv("BULKOPS_STORAGE_URL", "/etc/passwd/storage")
    reset_bulkops_caches()
    state = _run(creator_id="creator-001", video_ids=ids)
    assert state.is_failed() and "/etc/passwd/storage" in state.message and "BULKOPS_STORAGE_URL" in state.message
    result = _status(str(state.state_details.flow_run_id))["result"]
    assert (result["requested"], result["succeeded"], result["failed"]) == (0, 0, 0)
    assert lib.ids("creator-001") == ids


def test_over_limit_request_refused(sqlite_library, monkeypatch):
    from config import get_settings

    monkeypatch.setenv("BULKOPS_MAX_IDS", "5")
    get_settings.cache_clear()
    lib = sqlite_library
    lib.seed(10, creators=1)
    ids = lib.ids("creator-001")
    state = _run(creator_id="creator-001", video_ids=ids)
    assert state.is_failed() and "at most 5" in state.message
    assert lib.ids("creator-001") == ids


def test_dry_run_reports_plan_and_changes_nothing(sqlite_library):
    lib = sqlite_library
    lib.seed(10, creators=1)
    ids = lib.ids("creator-001")
    state = _run(creator_id="creator-001", video_ids=ids + ["bad-id"], dry_run=True)
    doc = state.result()
    assert doc["dry_run"] is True and doc["status"] == "partial"
    assert doc["plan"]["videos"] == 10 and doc["plan"]["objects"] == 20 and doc["plan"]["bytes"] > 0
    assert doc["succeeded"] == 10 and doc["report_path"] is None and doc["manifest_path"] is None
    assert lib.ids("creator-001") == ids
    assert lib.store.list_keys("reports") == [] and lib.store.list_keys("audit") == []


def test_dry_runs_say_so_in_their_name_and_tags(library):
    """The Prefect UI's run list must not mix dry runs with real deletes."""
    from prefect.client.orchestration import get_client

    lib = library
    lib.seed(6, creators=1)
    ids = lib.ids("creator-001")
    dry = _run(creator_id="creator-001", video_ids=ids[:2], dry_run=True)
    real = _run(creator_id="creator-001", video_ids=ids[:2])
    with get_client(sync_client=True) as client:
        dry_run = client.read_flow_run(dry.state_details.flow_run_id)
        real_run = client.read_flow_run(real.state_details.flow_run_id)
    assert dry_run.name == "delete-creator-001-dry-run" and "dry-run" in dry_run.tags
    assert real_run.name == "delete-creator-001" and "dry-run" not in real_run.tags


def test_all_videos_with_batches_growing_past_the_cap(sqlite_library, monkeypatch):
    from config import get_settings

    monkeypatch.setenv("BULKOPS_MAX_BATCHES", "4")
    get_settings.cache_clear()
    lib = sqlite_library
    lib.seed(50, creators=2, files=False)
    count = len(lib.ids("creator-001"))
    state = _run(creator_id="creator-001", all_videos=True, batch_size=1)
    doc = state.result()
    assert doc["succeeded"] == count and lib.ids("creator-001") == []
    status = _status(doc["operation_id"])
    progress = next(a for a in _artifacts(doc["operation_id"]) if a.type == "progress")
    assert progress.description.startswith(f"{count}/{count} videos") and "/4 batches" in progress.description
    assert status["progress"]["current"] == count


def test_the_default_batch_size_is_the_setting(sqlite_library, monkeypatch):
    """Without `batch_size`, a delete takes BULKOPS_BATCH_SIZE videos per batch."""
    from config import get_settings
    from videolib.operation import plan_batches

    monkeypatch.setenv("BULKOPS_BATCH_SIZE", "3")
    get_settings.cache_clear()
    lib = sqlite_library
    lib.seed(12, creators=1, files=False)
    ids = lib.ids("creator-001")
    settings = get_settings()
    expected = len(plan_batches(ids, batch_size=3, max_batches=settings.max_batches, workers=settings.task_workers))
    assert expected > 1  # the flow's old fixed default (1000) would make one batch
    doc = _run(creator_id="creator-001", all_videos=True).result()
    assert doc["status"] == "completed" and lib.ids("creator-001") == []
    progress = next(a for a in _artifacts(doc["operation_id"]) if a.type == "progress")
    assert f"/{expected} batches" in progress.description


def test_stop_flag_cancels_after_batches_in_flight(sqlite_library, monkeypatch):
    import threading

    import tasks.delete
    from config import get_settings
    from tasks.stop import request_stop

    lib = sqlite_library
    lib.seed(40, creators=1)
    ids = lib.ids("creator-001")
    real_delete = tasks.delete.delete_batch
    first = threading.Lock()

    def delete_and_stop(*args, **kwargs):
        # The first batch to start asks for the stop: at that moment at most the
        # task runner's workers have begun a batch, and none has finished.
        if first.acquire(blocking=False):
            request_stop(kwargs["operation_id"])
        return real_delete(*args, **kwargs)

    monkeypatch.setattr(tasks.delete, "delete_batch", delete_and_stop)
    state = _run(creator_id="creator-001", video_ids=ids, batch_size=1)

    assert state.is_cancelled()
    status = _status(str(state.state_details.flow_run_id))
    assert status["status"] == "cancelled"
    doc = status["result"]
    assert doc["status"] == "cancelled" and doc["failed"] == 0
    assert doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"] == 40
    assert 1 <= doc["succeeded"] <= get_settings().task_workers, "only the batches in flight finish"
    assert len(lib.ids("creator-001")) == doc["skipped"]
    assert "stopped on request" in doc["message"]


def test_a_flow_stops_by_the_flag_it_is_given_without_prefect_variables(sqlite_library, monkeypatch):
    """The operation's stop flag is passed to it: a test (or any caller) can drive a run
    with a flag of its own, and Prefect's Variables are never read or written."""
    import threading

    import tasks.delete
    import tasks.stop
    from flows.operation import stop_flag
    from tasks.stop import MemoryStop

    def no_server(*_args, **_kwargs):
        raise AssertionError("a Prefect Variable was used")

    for name in ("get", "set", "unset"):
        monkeypatch.setattr(tasks.stop.Variable, name, no_server)
    lib = sqlite_library
    lib.seed(20, creators=1)
    ids = lib.ids("creator-001")
    flag = MemoryStop()
    real_delete = tasks.delete.delete_batch
    first = threading.Lock()

    def delete_and_stop(*args, **kwargs):
        if first.acquire(blocking=False):
            flag.request(kwargs["operation_id"])
        return real_delete(*args, **kwargs)

    monkeypatch.setattr(tasks.delete, "delete_batch", delete_and_stop)
    with stop_flag(flag):
        state = _run(creator_id="creator-001", video_ids=ids, batch_size=1)
    assert state.is_cancelled()
    doc = _status(str(state.state_details.flow_run_id))["result"]
    assert doc["status"] == "cancelled" and doc["requested"] == doc["succeeded"] + doc["skipped"] == 20
    assert len(lib.ids("creator-001")) == doc["skipped"] > 0
    assert flag.stopped == set(), "the run clears its flag when it ends"


def test_stop_before_any_batch_skips_everything(sqlite_library):
    from flows.progress import add_progress_listener, remove_progress_listener
    from tasks.stop import request_stop

    lib = sqlite_library
    lib.seed(10, creators=1)
    ids = lib.ids("creator-001")

    def stop_at_plan(event):
        if event.batches_done == 0 and event.result is None:
            request_stop(event.operation_id)

    add_progress_listener(stop_at_plan)
    try:
        state = _run(creator_id="creator-001", video_ids=ids, batch_size=2)
    finally:
        remove_progress_listener(stop_at_plan)
    assert state.is_cancelled()
    doc = _status(str(state.state_details.flow_run_id))["result"]
    assert (doc["succeeded"], doc["skipped"], doc["status"]) == (0, 10, "cancelled")
    assert lib.ids("creator-001") == ids


def test_a_terminated_run_leaves_its_progress_where_it_got_to(sqlite_library, monkeypatch):
    """SIGTERM (a crash, or Prefect's own cancel) reaches the flow as a BaseException
    (Prefect's TerminationSignal) between two progress posts: the artifact must still
    show the batches that finished. Raised here as a BaseException of our own: a real TerminationSignal makes
    Prefect re-send SIGTERM to the process, the test runner."""
    import flows.progress
    from flows.progress import add_progress_listener, remove_progress_listener

    lib = sqlite_library
    lib.seed(200, creators=1, files=False)
    ids = lib.ids("creator-001")
    # No post between the first (0 %) and the last batch: only the flush can move it.
    monkeypatch.setattr(flows.progress, "PROGRESS_MIN_INTERVAL_S", float("inf"))
    seen = []

    def terminate_after_three(event):
        if event.result is None and event.batches_done:
            seen.append((event.operation_id, event.current))
            if event.batches_done == 3:
                raise _Terminated

    add_progress_listener(terminate_after_three)
    try:
        with pytest.raises(_Terminated):
            _run(creator_id="creator-001", video_ids=ids, batch_size=1)
    finally:
        remove_progress_listener(terminate_after_three)
    operation_id, current = seen[-1]
    assert len(seen) == 3 and current == 3
    status = _status(operation_id)
    assert status["status"] == "failed" and status["result"] is None  # Crashed
    assert status["progress"]["current"] == current, "the progress of the 3 finished batches"
    assert status["progress"]["percent"] == 1.5
    assert len(ids) - len(lib.ids("creator-001")) >= current, "what the progress counts was really deleted"
    # And the batches that had not started were told not to (in this process only).
    import tasks.stop

    monkeypatch.setattr(tasks.stop.Variable, "get", lambda *a, **k: pytest.fail("asked the server"))
    assert tasks.stop.stop_requested(operation_id) is True


def test_a_stop_here_is_seen_at_once_and_asks_no_server(monkeypatch):
    """What a terminated flow sets so that its batches not yet started return unstarted:
    no Variable is read or written for it (the run is ending; nobody would clear it)."""
    import tasks.stop
    from tasks.stop import stop_here, stop_requested

    def no_server(*_args, **_kwargs):
        raise AssertionError("the Prefect server was asked")

    monkeypatch.setattr(tasks.stop.Variable, "get", no_server)
    monkeypatch.setattr(tasks.stop.Variable, "set", no_server)
    operation_id = str(uuid.uuid4())
    stop_here(operation_id)
    assert stop_requested(operation_id) is True


class _Terminated(BaseException):
    """Stands in for prefect.exceptions.TerminationSignal (also a BaseException)."""



def test_a_stored_result_keeps_every_error_of_a_long_id_list(sqlite_library):
    """`bulkops status` and the API read the result back from the run's artifact: with
    thousands of unknown ids (a dry run writes no report), failed == len(errors) still."""
    lib = sqlite_library
    lib.seed(6, creators=1, files=False)
    real = lib.ids("creator-001")[:2]
    unknown = [str(uuid.uuid4()) for _ in range(2500)]
    state = _run(creator_id="creator-001", video_ids=[*unknown, *real], dry_run=True)
    doc = _status(str(state.state_details.flow_run_id))["result"]
    assert (doc["requested"], doc["succeeded"], doc["failed"]) == (2502, 2, 2500)
    assert len(doc["errors"]) == doc["failed"] and "errors_truncated" not in doc
    assert {e["video_id"] for e in doc["errors"]} == set(unknown)
    assert doc["report_path"] is None and lib.ids("creator-001")

