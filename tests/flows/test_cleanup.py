"""The cleanup flow under Prefect's real test harness, on a prepared mess of every kind it
removes, beside what it must leave (a fresh upload inside its grace, a video held by a
running reprocess, a tombstone of a running delete, a fresh export, a young report): a
dry run counts and changes nothing; the run removes exactly what is due, with exact
counts; a second run does nothing. On SQLite and PostgreSQL with local files, and the
object kinds on the S3 endpoint. Pruned runs are read back from their records; two
cleanups never run at once.

The harness's Prefect server is shared by the session: each test starts from an empty
run history (cleanup acts on every bulkops run the server has)."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from videolib.db.models import Video

pytestmark = pytest.mark.usefixtures("prefect_harness")

HOUR, DAY = 3600, 86400
EXPECTED = {"tombstones_finished": 2, "claims_released": 2, "exports_expired": 1, "parts_removed": 3,
            "reports_expired": 3, "manifests_expired": 1, "orphans_found": 1, "orphans_deleted": 0, "runs_archived": 1,
            "runs_pruned": 0, "trash_purged": 0}
NOTHING = dict.fromkeys(EXPECTED, 0)


@pytest.fixture(autouse=True)
def empty_history(monkeypatch):
    """No run of an earlier test in the shared harness; no limits of theirs."""
    from prefect import get_client

    from config import get_settings

    with get_client(sync_client=True) as client:  # 50 at a time (one by one took a minute late in the suite)
        while client.request("POST", "/flow_runs/bulk_delete", json={"limit": 50}).json()["deleted"]:
            pass
    monkeypatch.setenv("BULKOPS_CLEANUP_CRON", "off")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _run_cleanup(**parameters) -> dict:
    from service.launch import run
    from service.requests import CleanupRequest

    return run(CleanupRequest.build(**parameters))


def _age(store, key: str, seconds: float) -> None:
    path = store.path(key)
    when = time.time() - seconds
    os.utime(path, (when, when))


def _put(store, key: str, *, age: float = 0.0, data: bytes = b"x" * 10) -> str:
    store.put(key, data)
    if age:
        _age(store, key, age)
    return key


def _unended_runs(flow_name: str) -> list[tuple]:
    """(name, state, parameters, created) of the runs of ``flow_name`` that have not ended."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        runs = client.request("POST", "/flow_runs/filter", json={
            "flows": {"name": {"any_": [flow_name]}},
            "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING", "PAUSED"]}}}}).json()
    return [(r["name"], r["state"]["type"], r["parameters"], r["created"]) for r in runs]


def _prefect_run(flow_name: str, state: str, parameters: dict | None = None) -> str:
    """A run of ``flow_name`` in ``state`` (as another process would have left it)."""
    from prefect import get_client
    from prefect.states import Completed, Crashed, Running

    with get_client(sync_client=True) as client:
        flow_id = client.request("POST", "/flows/", json={"name": flow_name}).json()["id"]
        run = client.request("POST", "/flow_runs/", json={"flow_id": flow_id, "parameters": parameters or {},
                                                          "name": f"test-{state.lower()}"}).json()
        run_id = uuid.UUID(run["id"])
        client.set_flow_run_state(run_id, Running(), force=True)
        if state == "COMPLETED":
            client.set_flow_run_state(run_id, Completed(), force=True)
        elif state == "CRASHED":
            client.set_flow_run_state(run_id, Crashed(message="the process was killed"), force=True)
    return str(run_id)


def _set(engine, vid: str, *, age: float = 0.0, **values) -> None:
    with engine.begin() as conn:
        conn.execute(update(Video).where(Video.id == vid).values(
            updated_at=datetime.now(UTC) - timedelta(seconds=age), **values))


def _prepare_mess(lib) -> dict:
    """Every kind of item cleanup removes, beside what it must keep. Returns the names."""
    lib.seed(24, creators=2)
    mine, theirs = lib.ids("creator-001"), lib.ids("creator-002")
    engine, store = lib.engine, lib.store
    m: dict = {"mine": mine, "theirs": theirs}
    alive = _prefect_run("bulk-reprocess", "RUNNING", {"creator_id": "creator-001"})
    ended = _prefect_run("bulk-reprocess", "COMPLETED", {"creator_id": "creator-001"})
    _prefect_run("bulk-delete", "RUNNING", {"creator_id": "creator-002"})  # finishing its own tombstones
    m["crashed"] = _prefect_run("bulk-delete", "CRASHED", {"creator_id": "creator-001"})
    # Tombstones: two old ones go; a young one, and an old one of a creator whose delete runs, stay.
    m["doomed"] = mine[:2]
    for vid in mine[:2]:
        _set(engine, vid, age=2 * HOUR, status="deleting")
    m["young_tombstone"] = mine[2]
    _set(engine, mine[2], age=10 * 60, status="deleting")
    m["held_tombstone"] = theirs[0]
    _set(engine, theirs[0], age=2 * HOUR, status="deleting")
    with engine.connect() as conn:
        m["doomed_keys"] = [k for vid in mine[:2] for k in conn.execute(
            select(Video.storage_key, Video.thumbnail_key).where(Video.id == vid)).one() if k]
    # Claims: past the lease with an unknown holder, and an ended run's, are released; a
    # running reprocess's (even past the lease) and another pipeline's stay.
    m["released"] = [mine[3], mine[4]]
    _set(engine, mine[3], age=2 * HOUR, status="processing", processing_by=str(uuid.uuid4()))
    _set(engine, mine[4], status="processing", processing_by=ended)
    m["held"] = [mine[5], mine[6]]
    _set(engine, mine[5], age=2 * HOUR, status="processing", processing_by=alive)
    _set(engine, mine[6], status="processing", processing_by=alive)
    m["pipeline"] = mine[7]
    _set(engine, mine[7], age=2 * HOUR, status="processing", processing_by=None)
    # Exports: an old file without a record goes; a fresh one, and an old one whose record
    # says its link is still valid, stay.
    old_op, fresh_op, valid_op = (str(uuid.uuid4()) for _ in range(3))
    m["expired_export"] = _put(store, f"exports/creator-001/{old_op}.parquet", age=3 * DAY)
    m["fresh_export"] = _put(store, f"exports/creator-001/{fresh_op}.csv")
    m["valid_export"] = _put(store, f"exports/creator-002/{valid_op}.csv", age=3 * DAY)
    store.put(f"operations/{valid_op}.json", json.dumps({
        "operation_id": valid_op, "operation": "export", "creator_id": "creator-002", "status": "completed",
        "output": {"expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")}}).encode())
    # Leftovers: parts of an export that ended long ago and a crashed write's temporary file
    # go; a file being written right now stays.
    m["leftovers"] = [_put(store, f"exports/creator-001/{uuid.uuid4()}.parts/part-00000.arrow", age=HOUR),
                      _put(store, "reports/.x.csv.123.456.tmp", age=HOUR)]
    m["writing"] = _put(store, f"exports/creator-001/.{uuid.uuid4()}.csv.partial", age=60)
    # Reports, audit manifests and set-aside ids past 90 days go; a young report stays.
    old_delete = str(uuid.uuid4())
    m["old_reports"] = [_put(store, f"reports/{uuid.uuid4()}.csv", age=100 * DAY),
                        _put(store, f"audit/delete/{old_delete}/batch-00000.jsonl", age=100 * DAY),
                        _put(store, f"audit/delete/{old_delete}/manifest.json", age=100 * DAY),
                        _put(store, f"requests/creator-001/invalid-ids-{uuid.uuid4().hex}.json", age=100 * DAY)]
    m["young_report"] = _put(store, f"reports/{uuid.uuid4()}.csv", age=10 * DAY)
    # Id manifests past 90 days go, a young one stays; an upload that died an hour ago goes
    # (a leftover); the staged ids of an ended run go, a running one's stay.
    m["old_manifest"] = _put(store, f"manifests/creator-001/{'a' * 64}.txt", age=100 * DAY)
    m["young_manifest"] = _put(store, f"manifests/creator-002/{'b' * 64}.csv", age=10 * DAY)
    m["leftovers"].append(_put(store, "manifests/creator-001/.upload-0123456789abcdef.txt", age=HOUR))
    from videolib.staging import stage_manifest

    stage_manifest(engine, ended, iter([mine[:3]]))
    stage_manifest(engine, alive, iter([mine[3:5]]))
    m["staging"] = {"ended": ended, "alive": alive}
    # Orphans: objects of a video with no row, two days old, are found (and kept: deleting
    # them is a setting); a fresh upload is not one yet; a seeded video's old files are no orphans.
    orphan = str(uuid.uuid4())
    m["orphan"] = [_put(store, f"videos/creator-001/{orphan}/video.mp4", age=2 * DAY),
                   _put(store, f"videos/creator-001/{orphan}/thumb.jpg", age=2 * DAY)]
    m["upload"] = _put(store, f"videos/creator-002/{uuid.uuid4()}/video.mp4", age=60)
    with engine.connect() as conn:
        key = conn.execute(select(Video.storage_key).where(Video.id == mine[8])).scalar()
    _age(store, key, 2 * DAY)
    return m


def _snapshot(lib) -> tuple:
    with lib.engine.connect() as conn:
        rows = sorted(conn.execute(select(Video.id, Video.status, Video.processing_by)).all())
    return rows, lib.store.list_keys("")


def test_cleanup_removes_exactly_what_is_due_and_a_second_run_does_nothing(library):
    from service.status import status_of
    from videolib.delete import read_manifest_records

    m = _prepare_mess(library)
    before = _snapshot(library)
    dry = _run_cleanup(dry_run=True)
    assert dry["status"] == "completed" and dry["dry_run"] is True, dry
    assert dry["cleanup"] == EXPECTED, dry["cleanup"]
    assert dry["plan"]["items"] == dry["requested"] == 13 and dry["plan"]["bytes"] > 0
    after_dry = _snapshot(library)
    assert after_dry[0] == before[0]
    assert [k for k in after_dry[1] if not k.startswith("operations/")] == [
        k for k in before[1] if not k.startswith("operations/")]

    done = _run_cleanup()
    assert done["status"] == "completed", done
    assert done["operation"] == "cleanup" and done["creator_id"] is None
    assert done["cleanup"] == EXPECTED, done
    assert done["requested"] == done["succeeded"] == 13 and done["failed"] == 0
    assert status_of(done["operation_id"])["result"] == done

    store, keys = library.store, set(library.store.list_keys(""))
    with library.engine.connect() as conn:
        rows = {row.id: row for row in conn.execute(select(Video.id, Video.status, Video.processing_by))}
    # Tombstones finished as a delete would: rows, objects, and the audit manifest.
    assert not set(m["doomed"]) & set(rows) and not set(m["doomed_keys"]) & keys
    assert sorted(r["video_id"] for r in read_manifest_records(store, done["operation_id"])) == sorted(m["doomed"])
    assert rows[m["young_tombstone"]].status == rows[m["held_tombstone"]].status == "deleting"
    for vid in m["released"]:
        assert rows[vid].status in {"ready", "failed"} and rows[vid].processing_by is None
    for vid in m["held"] + [m["pipeline"]]:
        assert rows[vid].status == "processing"
    gone = [m["expired_export"], *m["leftovers"], *m["old_reports"], m["old_manifest"]]
    kept = [m["fresh_export"], m["valid_export"], m["writing"], m["young_report"], *m["orphan"], m["upload"],
            m["young_manifest"]]
    assert not set(gone) & keys and set(kept) <= keys
    from videolib.staging import staged_operations

    assert staged_operations(library.engine) == [m["staging"]["alive"]]
    # The crashed run got its record (failed, saying why); status reads it.
    record = json.loads(store.get(f"operations/{m['crashed']}.json"))
    assert record["status"] == "failed" and "Crashed" in record["message"] and record["operation"] == "delete"
    assert status_of(m["crashed"])["status"] == "failed"
    # Nothing else changed: every other video as it was.
    untouched = {vid for vid in m["mine"] + m["theirs"]} - set(m["doomed"]) - set(m["released"])
    assert {vid: (rows[vid].status, rows[vid].processing_by) for vid in untouched} == {
        row.id: (row.status, row.processing_by) for row in before[0] if row.id in untouched}

    again = _run_cleanup()
    assert again["status"] == "completed" and again["requested"] == 0
    assert again["cleanup"] == {**NOTHING, "orphans_found": 1}

    # Deleting orphans is a setting.
    os.environ["BULKOPS_CLEANUP_DELETE_ORPHANS"] = "true"
    try:
        from config import get_settings

        get_settings.cache_clear()
        purge = _run_cleanup()
    finally:
        del os.environ["BULKOPS_CLEANUP_DELETE_ORPHANS"]
        get_settings.cache_clear()
    assert purge["cleanup"] == {**NOTHING, "orphans_found": 1, "orphans_deleted": 1}, purge["cleanup"]
    keys = set(store.list_keys(""))
    assert not set(m["orphan"]) & keys and m["upload"] in keys


def _running(flow_name: str, creator_id: str) -> str:
    """A run of ``flow_name`` for ``creator_id``, Running from now."""
    from prefect import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        flow_id = client.request("POST", "/flows/", json={"name": flow_name}).json()["id"]
        run_id = uuid.UUID(client.request("POST", "/flow_runs/", json={
            "flow_id": flow_id, "parameters": {"creator_id": creator_id}, "name": "test-running"}).json()["id"])
        client.set_flow_run_state(run_id, Running(), force=True)
    return str(run_id)


def _heartbeat(run_id: str) -> None:
    """The heartbeat event the flow engine sends, recorded by the server."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        event_id = str(uuid.uuid4())
        client.request("POST", "/events", json=[{
            "id": event_id, "event": "prefect.flow-run.heartbeat", "occurred": datetime.now(UTC).isoformat(),
            "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"}, "related": [], "payload": {}}])
        deadline = time.monotonic() + 30  # the server writes events in the background
        while time.monotonic() < deadline:
            found = client.request("POST", "/events/filter", json={"filter": {
                "resource": {"id": [f"prefect.flow-run.{run_id}"]},
                "occurred": {"since": (datetime.now(UTC) - timedelta(minutes=5)).isoformat()}}, "limit": 10}).json()
            if any(event["id"] == event_id for event in found.get("events") or []):
                return
            time.sleep(0.1)
    pytest.fail("the heartbeat event was not recorded")


def test_a_delete_that_died_without_a_word_does_not_keep_its_tombstones(sqlite_library, monkeypatch):
    """A delete SIGKILLed on a temporary server stays Running in Prefect for ever: once it
    has sent no heartbeat for three periods it is marked Crashed (as admission does) and
    cleanup finishes its tombstones; a delete that still beats keeps its own. (Three
    periods are 90 s at least; 10 s here, so that the test does not wait 90.)"""
    from prefect import get_client

    import tasks.liveness

    monkeypatch.setattr(tasks.liveness, "silent_after_s", lambda: 10.0)
    lib = sqlite_library
    lib.seed(6, creators=2)
    mine, theirs = lib.ids("creator-001")[0], lib.ids("creator-002")[0]
    for vid in (mine, theirs):
        _set(lib.engine, vid, age=2 * HOUR, status="deleting")
    silent, beating = _running("bulk-delete", "creator-001"), _running("bulk-delete", "creator-002")
    _heartbeat(silent)
    time.sleep(11)
    _heartbeat(beating)
    done = _run_cleanup()
    assert done["status"] == "completed" and done["cleanup"]["tombstones_finished"] == 1, done
    with lib.engine.connect() as conn:
        assert conn.execute(select(Video.status).where(Video.id == theirs)).scalar() == "deleting"
        assert conn.execute(select(Video.id).where(Video.id == mine)).first() is None
    with get_client(sync_client=True) as client:
        states = {run: client.read_flow_run(uuid.UUID(run)).state for run in (silent, beating)}
    assert states[silent].type.value == "CRASHED" and "heartbeat" in states[silent].message, states[silent]
    assert states[beating].type.value == "RUNNING"


def test_pruned_runs_are_read_back_from_their_records(sqlite_library, monkeypatch):
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from config import get_settings
    from service.launch import run
    from service.requests import DeleteRequest
    from service.status import read_status, status_of

    sqlite_library.seed(6, creators=1)
    deleted = run(DeleteRequest.build(creator_id="creator-001", video_ids=sqlite_library.ids("creator-001")[:2]))
    before = read_status(deleted["operation_id"])
    share = _prefect_run("bulk-share", "COMPLETED", {"parent_id": deleted["operation_id"], "share": 0})
    monkeypatch.setenv("BULKOPS_HISTORY_RETENTION", "0")
    get_settings.cache_clear()
    done = _run_cleanup()
    # The delete, archived then pruned; the share run of a split operation, dropped (no record).
    assert done["cleanup"]["runs_pruned"] == 2 and done["cleanup"]["runs_archived"] == 0, done
    for gone in (deleted["operation_id"], share):
        with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
            client.read_flow_run(uuid.UUID(gone))
    from videolib.records import record_key

    assert not sqlite_library.store.exists(record_key(share))
    assert status_of(deleted["operation_id"]) == before
    # The cleanup's own run was not pruned while it ran; the next cleanup prunes it.
    again = _run_cleanup()
    assert again["cleanup"]["runs_pruned"] == 1
    assert status_of(done["operation_id"])["result"] == done


def test_the_operation_list_goes_on_past_prefect_into_the_records(sqlite_library, monkeypatch):
    from config import get_settings
    from service.launch import run
    from service.listing import list_operations
    from service.requests import DeleteRequest
    from service.status import read_status

    sqlite_library.seed(10, creators=1)
    ids = sqlite_library.ids("creator-001")
    old = [run(DeleteRequest.build(creator_id="creator-001", video_ids=[vid]))["operation_id"] for vid in ids[:3]]
    failed = run(DeleteRequest.build(creator_id="creator-001", video_ids=["not-an-id"]))["operation_id"]
    expected = [read_status(i) for i in reversed(old + [failed])]  # newest first
    monkeypatch.setenv("BULKOPS_HISTORY_RETENTION", "0")
    get_settings.cache_clear()
    assert _run_cleanup()["cleanup"]["runs_pruned"] == 4
    monkeypatch.setenv("BULKOPS_HISTORY_RETENTION", "30d")
    get_settings.cache_clear()
    newest = run(DeleteRequest.build(creator_id="creator-001", video_ids=[ids[3]]))["operation_id"]
    pages, cursor = [], None
    while True:
        page = list_operations(creator_id="creator-001", limit=2, cursor=cursor)
        pages.append([d["operation_id"] for d in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [[newest, expected[0]["operation_id"]], [d["operation_id"] for d in expected[1:3]],
                     [expected[3]["operation_id"]]], pages
    listed = list_operations(creator_id="creator-001", limit=10)["items"]
    assert listed[1:] == expected  # the records answer as Prefect did
    assert [d["operation_id"] for d in list_operations(creator_id="creator-001", status="failed")["items"]] == [failed]
    assert list_operations(creator_id="creator-001", operation="export")["items"] == []
    assert list_operations(creator_id="creator-002")["items"] == []
    everyone = [d["operation_id"] for d in list_operations(creator_id=None, limit=100)["items"]]
    assert set(old + [failed, newest]) <= set(everyone) and "cleanup" in {
        d["operation"] for d in list_operations(creator_id=None, limit=100)["items"]}


def test_a_second_cleanup_is_refused_and_one_started_anyway_touches_nothing(sqlite_library):
    from flows.cleanup import cleanup
    from flows.slots import ExclusiveSlot
    from videolib.ids import RequestError

    m = _prepare_mess(sqlite_library)
    before = _snapshot(sqlite_library)
    # The front doors: a cleanup that has not ended refuses the next.
    running = _prefect_run("cleanup", "RUNNING")
    with pytest.raises(RequestError) as refused:
        _run_cleanup()
    assert refused.value.code == "cleanup_running" and running in refused.value.message
    from prefect import get_client
    from prefect.states import Completed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(running), Completed(), force=True)
        # The daily run, due now but taken by no worker (the workers are down): not
        # started, so it holds nobody back (it would end cleanup_running if it started now).
        flow_id = client.request("POST", "/flows/", json={"name": "cleanup"}).json()["id"]
        due = client.request("POST", "/flow_runs/", json={"flow_id": flow_id, "name": "test-scheduled", "state": {
            "type": "SCHEDULED", "name": "Scheduled"}}).json()
    from service.slots import refuse_a_second_cleanup

    refuse_a_second_cleanup()  # not raised
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(due["id"]), Completed(), force=True)
    # A run nobody counted (a schedule, the UI) while another holds the cleanup's slot
    # ends Cancelled with cleanup_running, having touched nothing.
    holder = ExclusiveSlot(str(uuid.uuid4()), "cleanup", lease_s=60)
    assert holder.acquire(stopped=lambda: False) == "acquired"
    try:
        state = cleanup(return_state=True)
    finally:
        holder.release()
    assert state.type.value == "CANCELLED", state
    from service.status import status_of

    run_id = str(state.state_details.flow_run_id)
    result = status_of(run_id)["result"]
    assert result["status"] == "cancelled" and result["error"] == "cleanup_running"
    assert result["cleanup"] == NOTHING and result["requested"] == 0
    assert _snapshot(sqlite_library)[0] == before[0]
    assert m["expired_export"] in sqlite_library.store.list_keys("exports")
    # With the slot free again, the next one runs.
    # (A delete of creator-001 that has not ended would rightly hold its tombstones back.)
    assert [r for r in _unended_runs("bulk-delete") if r[2].get("creator_id") == "creator-001"] == []
    again = _run_cleanup()
    with sqlite_library.engine.connect() as conn:  # what it left, if it finished none (seen once in a full run)
        deleting = conn.execute(select(Video.creator_id, Video.id, Video.updated_at)
                                .where(Video.status == "deleting")).all()
    assert again["cleanup"]["tombstones_finished"] == 2, (again, _unended_runs("bulk-delete"), deleting)


def test_object_kinds_on_the_s3_endpoint(s3_library, monkeypatch):
    """S3 cannot be given old modification times: the graces are 0 here, and the export's
    record says when its link expired."""
    from config import get_settings

    store = s3_library.store
    s3_library.seed(4, creators=1)
    ended = _prefect_run("bulk-export", "COMPLETED", {"creator_id": "creator-001"})
    expired_op, valid_op, orphan = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for op, when in ((expired_op, -2 * DAY), (valid_op, DAY)):
        store.put(f"exports/creator-001/{op}.csv", b"a,b\n")
        store.put(f"operations/{op}.json", json.dumps({"operation_id": op, "output": {
            "expires_at": (datetime.now(UTC) + timedelta(seconds=when)).isoformat()}}).encode())
    parts = f"exports/creator-001/{ended}.parts/part-00000.arrow"
    store.put(parts, b"p")
    store.put(f"reports/{uuid.uuid4()}.csv", b"r")
    store.put(f"videos/creator-001/{orphan}/video.mp4", b"v" * 100)
    for name, value in (("BULKOPS_CLEANUP_REPORT_RETENTION", "0"), ("BULKOPS_CLEANUP_ORPHAN_GRACE", "0"),
                        ("BULKOPS_CLEANUP_EXPORT_GRACE", "1h"), ("BULKOPS_CLEANUP_DELETE_ORPHANS", "true")):
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    time.sleep(1.1)  # older than a grace of 0
    seeded_keys = set(store.list_keys("videos")) - {f"videos/creator-001/{orphan}/video.mp4"}
    done = _run_cleanup()
    counts = done["cleanup"]
    assert (counts["exports_expired"], counts["parts_removed"], counts["reports_expired"], counts["orphans_found"],
            counts["orphans_deleted"]) == (1, 1, 1, 1, 1), counts
    keys = set(store.list_keys(""))
    assert f"exports/creator-001/{valid_op}.csv" in keys and f"exports/creator-001/{expired_op}.csv" not in keys
    assert parts not in keys and not any(k.startswith("reports/") for k in keys)
    assert set(store.list_keys("videos")) == seeded_keys


def test_a_cleanup_started_while_another_scans_ends_cancelled_and_touches_nothing(sqlite_library, monkeypatch):
    """Two runs nobody counted (a schedule and a click in the UI): the second starts while
    the first holds the cleanup's slot and scans; it ends Cancelled `cleanup_running`,
    and the first does all the work."""
    import threading

    import flows.cleanup as module
    from flows.cleanup import cleanup
    from service.status import status_of

    _prepare_mess(sqlite_library)
    scan, scanning, go_on = module.scan, threading.Event(), threading.Event()

    def held_scan(*args, **kwargs):
        scanning.set()
        assert go_on.wait(60), "the second run reached the scan: it ran beside the first"
        return scan(*args, **kwargs)

    monkeypatch.setattr(module, "scan", held_scan)
    states: list = []
    first = threading.Thread(target=lambda: states.append(cleanup(return_state=True)))
    first.start()
    try:
        assert scanning.wait(60)
        second = cleanup(return_state=True)
    finally:
        go_on.set()
        first.join(120)
    refused = status_of(str(second.state_details.flow_run_id))["result"]
    done = status_of(str(states[0].state_details.flow_run_id))["result"]
    assert second.type.value == "CANCELLED" and refused["error"] == "cleanup_running", refused
    assert refused["cleanup"] == NOTHING and refused["requested"] == 0
    assert done["status"] == "completed" and done["cleanup"]["tombstones_finished"] == 2


def test_a_delete_proves_what_it_removed_and_cleanup_finishes_what_a_fault_left(library, monkeypatch):
    """A storage fault answers the delete call with success and keeps one object: the
    delete's read-back finds it (``not_verified``, run partial, the video kept as a
    tombstone); a later cleanup finishes that tombstone and proves it in its result."""
    import tasks.delete
    from config import get_settings
    from service.launch import run
    from service.requests import CleanupRequest
    from tests.faults import CrashingStore
    from videolib.delete import read_manifest_records

    library.seed(12, creators=2)
    ids = library.ids("creator-001")
    with library.engine.connect() as conn:
        from sqlalchemy import select

        from videolib.db.models import Video

        left = conn.execute(select(Video.thumbnail_key).where(Video.id == ids[0])).scalar_one()
    monkeypatch.setattr(tasks.delete, "store", lambda: CrashingStore(library.store, silent_keys={left}))
    from flows.bulk_delete import bulk_delete

    doc = bulk_delete(creator_id="creator-001", video_ids=ids, batch_size=4)
    assert doc["status"] == "partial" and doc["succeeded"] == len(ids) - 1
    assert [(e["video_id"], e["error"]) for e in doc["errors"]] == [(ids[0], "not_verified")]
    assert doc["verified"] == {"videos": len(ids) - 1, "objects_absent": 2 * (len(ids) - 1),
                               "rows_absent": len(ids) - 1}
    records = read_manifest_records(library.store, doc["operation_id"])
    assert sorted(r["video_id"] for r in records) == sorted(ids[1:])
    assert all(r["verified"]["row_absent"] and r["verified"]["objects_absent"] == 2 for r in records)
    assert library.ids("creator-001") == [ids[0]] and library.store.exists(left)

    monkeypatch.setenv("BULKOPS_CLEANUP_TOMBSTONE_GRACE", "0s")
    monkeypatch.setenv("BULKOPS_CLEANUP_CRON", "off")
    get_settings.cache_clear()
    cleaned = run(CleanupRequest.build())
    assert cleaned["cleanup"]["tombstones_finished"] == 1, cleaned
    assert cleaned["verified"] == {"videos": 1, "objects_absent": 2, "rows_absent": 1}
    assert library.ids("creator-001") == [] and not library.store.exists(left)
    assert library.ids("creator-002")


class _DiesOnce:
    """A real store whose first object delete dies half-way (once: the retry finds it well)."""

    def __init__(self, store):
        from tests.faults import CrashingStore

        self.dying, self.store, self.died = CrashingStore(store, fail_delete=True), store, 0

    def __call__(self):
        if self.died:
            return self.store
        return self

    def __getattr__(self, name):
        return getattr(self.dying, name)

    def delete_many(self, keys, **kwargs):
        self.died += 1
        return self.dying.delete_many(keys, **kwargs)


def _die_once(store, monkeypatch, died: str):
    """The cleanup task's store dies once: after the rows went (its second audit write)
    or half-way through the objects. Returns whether it died as told, and once."""
    import tasks.cleanup
    from tests.faults import CrashingStore

    if died == "after_its_rows":
        dying = CrashingStore(store, fail_put_prefix="audit/delete/", fail_put_number=2)
        monkeypatch.setattr(tasks.cleanup, "store", lambda: dying)
        return lambda: dying.puts == 3  # the retry wrote the proof the first attempt did not
    once = _DiesOnce(store)
    monkeypatch.setattr(tasks.cleanup, "store", lambda: once())
    return lambda: once.died == 1


@pytest.mark.parametrize("died", ["after_its_rows", "in_its_object_deletes"])
def test_a_tombstone_batch_retried_counts_them_finished(library, monkeypatch, died):
    """Prefect retries a cleanup batch whole. The first attempt at the tombstones dies
    after their rows went (injected in its second audit write), or half-way through their
    objects (its tombstones freshly marked): the retry finishes them and counts them as
    this cleanup's, with their proof and audit records, not as already done."""
    from videolib.delete import read_manifest_records

    library.seed(12, creators=2)
    mine = library.ids("creator-001")
    doomed = mine[:3]
    for vid in doomed:
        _set(library.engine, vid, age=2 * HOUR, status="deleting")
    died_once = _die_once(library.store, monkeypatch, died)
    done = _run_cleanup()
    assert done["status"] == "completed" and done["failed"] == 0, done
    assert done["cleanup"]["tombstones_finished"] == 3, done
    assert died_once()
    assert done["verified"] == {"videos": 3, "objects_absent": 6, "rows_absent": 3}
    records = read_manifest_records(library.store, done["operation_id"])
    assert sorted(r["video_id"] for r in records) == sorted(doomed)
    assert all(r["verified"]["row_absent"] for r in records)
    assert library.ids("creator-001") == mine[3:]
