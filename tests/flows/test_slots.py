"""The per-creator limit under Prefect's real test harness: a run started over the limit
(as from the Prefect UI, where no front door counted it) waits for a slot of its
creator's global concurrency limit with a state that says so, then runs; it ends
Cancelled with ``too_many_running`` after ``BULKOPS_SLOT_WAIT``, and at once when
cancelled while it waits; slots are given back however a run ends. The front doors'
count (``service/slots.py``) refuses over the limit, counts runs however started, and
leaves out scheduled-for-later runs and ones whose process is gone.

Each test has a creator of its own (the harness's server is shared by the session)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import update

from videolib.db.models import Video

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def creator(sqlite_library, monkeypatch):
    """A creator of this test's own with 12 videos (no files), the limit at 1 slot."""
    from config import get_settings

    name = f"slots-{uuid.uuid4().hex[:10]}"
    sqlite_library.seed(12, creators=1, files=False)
    with sqlite_library.engine.begin() as conn:
        conn.execute(update(Video).values(creator_id=name))
    monkeypatch.setenv("BULKOPS_MAX_RUNNING_PER_CREATOR", "1")
    monkeypatch.setenv("BULKOPS_SLOT_WAIT", "1h")
    get_settings.cache_clear()
    yield name
    get_settings.cache_clear()


def _hold_slot(creator_id: str):
    """Take the creator's one slot as another run would (a lease held by someone else)."""
    from flows.slots import CreatorSlot

    slot = CreatorSlot(str(uuid.uuid4()), creator_id, limit=1, lease_s=60, wait_s=0)
    assert slot.acquire(stopped=lambda: False) == "acquired"
    return slot


def _start_delete(creator_id: str, ids: list[str]):
    """A delete started in a thread (the run from the UI); (thread, box with its result, run id holder)."""
    from flows.bulk_delete import bulk_delete
    from flows.progress import add_progress_listener, remove_progress_listener

    box: dict = {}
    created = threading.Event()

    def listener(event):
        if event.phase == "created" and "id" not in box:
            box["id"] = event.operation_id
            created.set()

    def go():
        add_progress_listener(listener)
        try:
            box["state"] = bulk_delete(creator_id=creator_id, video_ids=ids, return_state=True)
        finally:
            remove_progress_listener(listener)

    thread = threading.Thread(target=go)
    thread.start()
    assert created.wait(60)
    return thread, box


def _run_state(run_id: str):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(run_id)).state


def _wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_run_over_the_limit_waits_for_a_slot_and_says_so_then_runs(sqlite_library, creator):
    from flows.slots import AWAITING, slot_name
    from service.status import read_status

    ids = sqlite_library.ids(creator)
    held = _hold_slot(creator)
    thread, box = _start_delete(creator, ids[:3])
    try:
        state = _wait_for(lambda: (s := _run_state(box["id"])) and s.name == AWAITING and s)
        assert creator in state.message and "BULKOPS_MAX_RUNNING_PER_CREATOR" in state.message
        assert read_status(box["id"])["status"] == "pending"
        time.sleep(3)
        assert len(sqlite_library.ids(creator)) == 12, "nothing is touched while it waits"
    finally:
        held.release()
    thread.join(60)
    assert box["state"].is_completed()
    result = box["state"].result()
    assert (result["status"], result["succeeded"]) == ("completed", 3)
    assert len(sqlite_library.ids(creator)) == 9
    # Its slot was given back as it ended: the limit has every slot free again.
    from prefect import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(slot_name(creator))
    assert (limit.limit, limit.active_slots) == (1, 0)


def test_a_run_that_waits_past_the_bound_ends_cancelled_too_many_running(sqlite_library, creator, monkeypatch):
    from config import get_settings
    from service.status import read_status

    monkeypatch.setenv("BULKOPS_SLOT_WAIT", "3s")
    get_settings.cache_clear()
    held = _hold_slot(creator)
    try:
        thread, box = _start_delete(creator, sqlite_library.ids(creator)[:3])
        thread.join(60)
    finally:
        held.release()
    state = box["state"]
    assert state.is_cancelled()
    document = read_status(box["id"])
    assert document["status"] == "cancelled"
    result = document["result"]
    assert result["error"] == "too_many_running" and "BULKOPS_SLOT_WAIT" in result["message"]
    assert (result["succeeded"], result["failed"]) == (0, 0)
    assert len(sqlite_library.ids(creator)) == 12, "nothing was touched"


def test_a_cancel_while_it_waits_ends_it_at_once(sqlite_library, creator):
    from flows.slots import AWAITING
    from service.control import cancel
    from service.status import read_status

    held = _hold_slot(creator)
    try:
        thread, box = _start_delete(creator, sqlite_library.ids(creator)[:3])
        _wait_for(lambda: (s := _run_state(box["id"])) and s.name == AWAITING)
        asked = time.monotonic()
        assert cancel(box["id"])["cancel_requested"] is True
        thread.join(60)
        assert time.monotonic() - asked < 15
    finally:
        held.release()
    assert box["state"].is_cancelled()
    result = read_status(box["id"])["result"]
    assert result["status"] == "cancelled" and "while it waited for a slot" in result["message"]
    assert len(sqlite_library.ids(creator)) == 12


def test_the_slot_is_given_back_when_a_run_is_refused_or_fails(sqlite_library, creator):
    """A refused request (nothing of the creator's listed) and a normal run: afterwards
    the creator's limit has no slot taken."""
    from flows.bulk_delete import bulk_delete
    from flows.slots import slot_name
    from prefect import get_client

    refused = bulk_delete(creator_id=creator, video_ids=[], return_state=True)
    assert refused.is_failed()
    done = bulk_delete(creator_id=creator, video_ids=sqlite_library.ids(creator)[:1], return_state=True)
    assert done.is_completed()
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(slot_name(creator)).active_slots == 0


def _make_run(creator_id: str, state, *, flow_name: str = "bulk-delete"):
    """A bulkops run of the creator in ``state``, as a deployment or the UI leaves one."""
    from prefect import get_client

    from flows import FLOWS, creator_tag

    with get_client(sync_client=True) as client:
        return client.create_flow_run(FLOWS[flow_name](), parameters={"creator_id": creator_id},
                                      tags=[creator_tag(creator_id)], state=state)


def test_the_front_doors_count_every_run_of_the_creator_that_has_not_ended(sqlite_library, creator, monkeypatch):
    import datetime as dt

    from prefect.states import Completed, Pending, Running, Scheduled

    from config import get_settings
    from service.slots import admission, admit, running_runs
    from videolib.ids import RequestError

    monkeypatch.setenv("BULKOPS_MAX_RUNNING_PER_CREATOR", "2")
    get_settings.cache_clear()
    admit(creator)  # nothing runs
    tomorrow = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    _make_run(creator, Scheduled(scheduled_time=tomorrow))  # not due: does not count
    first = _make_run(creator, Running(), flow_name="bulk-export")
    _make_run(f"{creator}-other", Running())  # another creator's
    admit(creator)
    _make_run(creator, Pending(), flow_name="bulk-reprocess")
    assert len(running_runs(creator)) == 2
    with pytest.raises(RequestError) as refused:
        with admission(creator):
            raise AssertionError("must not be admitted")
    error = refused.value
    assert error.code == "too_many_running" and creator in error.message
    assert 5 <= error.extra["retry_after"] <= 300 and len(error.extra["running"]) == 2
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(first.id, Completed(), force=True)
    admit(creator)  # one ended: room again


def test_concurrent_admissions_in_one_process_admit_exactly_the_limit(sqlite_library, creator, monkeypatch):
    """Twenty requests at once for one creator: the count and the run's creation happen
    under the creator's lock, so exactly the limit get through."""
    from prefect.states import Scheduled

    from config import get_settings
    from service.slots import admission
    from videolib.ids import RequestError

    monkeypatch.setenv("BULKOPS_MAX_RUNNING_PER_CREATOR", "2")
    get_settings.cache_clear()
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def request():
        barrier.wait()
        try:
            with admission(creator):
                _make_run(creator, Scheduled())
            outcomes.append("admitted")
        except RequestError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=request) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(outcomes).count("admitted") == 2 and outcomes.count("too_many_running") == 18
