"""Stopping a run however it is asked, and progress that moves inside batches, under
Prefect's real test harness: a termination signal, the run's state set Cancelling from
outside (what the Prefect UI's Cancel does), a reprocess batch rolled back mid-way, and
the counts of batches summed while they run, in this process and from worker processes.

Fault injection here slows real parts down (a real embedder that sleeps, a real delete
that takes longer); nothing is replaced by a fake."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import select

from flows.progress import listening
from tests.clitools import held_by
from videolib.db.models import Video, VideoChunk

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _delete(**params):
    from flows.bulk_delete import bulk_delete

    return bulk_delete(**params, return_state=True)


def _reprocess(**params):
    from flows.bulk_reprocess import bulk_reprocess

    return bulk_reprocess(**params, return_state=True)


def _status(run_id: str):
    from service.status import read_status

    return read_status(run_id)



def test_batches_still_working_when_the_drain_runs_out_give_their_videos_back(sqlite_library, monkeypatch):
    """A cancel whose drain runs out of time (a slow model on a loaded machine): the run
    ends Cancelled with those batches' items skipped and none of their claims held; when
    the batches get to their write, their claims are gone and they write nothing."""
    from prefect.exceptions import TerminationSignal

    import flows.operation
    import tasks.reprocess as task_module

    monkeypatch.setattr(flows.operation, "DRAIN_S", 0.5)
    lib = sqlite_library
    lib.seed(40, creators=1, transcript_ratio=1.0, files=False)
    with lib.engine.connect() as conn:
        ids = list(conn.execute(select(Video.id).order_by(Video.id)).scalars())
        embedded = dict(conn.execute(select(Video.id, Video.embedded_at)).all())
    slow = _SlowEmbedder(per_text_s=0.0)
    calls = iter(range(1_000))

    def first_quick_then_slow(texts):
        if next(calls) > 0:
            time.sleep(6.0)  # one slice of a heavy model, well past the drain's 0.5 s
        return slow.inner.embed(texts)

    slow.embed = first_quick_then_slow
    monkeypatch.setattr(task_module, "embedder_for", lambda name: slow)
    held_meanwhile: list[int] = []
    looks: list[threading.Timer] = []

    def stop_after_the_first_batch(event):
        if event.result is None and event.batches_done == 1:
            # While the slow batches still sleep, once the run has ended its drain:
            look = threading.Timer(3.5, lambda: held_meanwhile.append(held_by(lib, event.operation_id)))
            looks.append(look)
            look.start()
            raise TerminationSignal(signal=15)

    with listening(stop_after_the_first_batch):
        state = _reprocess(creator_id="creator-001", video_ids=ids, batch_size=5)
    assert state.is_cancelled(), state
    doc = _status(str(state.state_details.flow_run_id))["result"]
    done = doc["succeeded"] + doc["failed"]  # the batches that ended before the drain did
    assert doc["status"] == "cancelled" and 0 < done < 40 and doc["skipped"] == 40 - done
    for look in looks:
        look.join()  # the run may end before it looks (when every batch ended within the drain)
    assert held_meanwhile == [0], "the claims of the batches still working were given back as the run ended"
    assert held_by(lib, doc["operation_id"]) == 0

    def written() -> dict:
        with lib.engine.connect() as conn:
            return dict(conn.execute(select(Video.id, Video.embedded_at)).all())

    now = written()
    time.sleep(1.0)  # the batches have finished their slice, seen the stop, and written nothing
    assert written() == now and held_by(lib, doc["operation_id"]) == 0
    assert sum(now[v] != embedded[v] for v in ids) == doc["succeeded"], "what the result counts was written, no more"


class _SlowEmbedder:
    """The real hashing embedder, slowed to ``per_text_s`` per chunk (a heavy model)."""

    def __init__(self, per_text_s: float = 0.004):
        from videolib.embedders import get_embedder

        self.inner = get_embedder("hashing")
        self.name, self.dim = self.inner.name, self.inner.dim
        self.per_text_s = per_text_s
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        time.sleep(self.per_text_s * len(texts))
        return self.inner.embed(texts)


def test_a_termination_signal_ends_the_run_cancelled_with_its_result(sqlite_library, monkeypatch):
    """SIGTERM, as a worker or runner sends it to cancel (Prefect raises TerminationSignal
    in the flow's thread): batches not started never start, the ones in flight finish,
    and the result document is written with exact counts before the run ends Cancelled."""
    from prefect.exceptions import TerminationSignal

    lib = sqlite_library
    lib.seed(120, creators=1, files=False)
    ids = lib.ids("creator-001")
    seen: list[str] = []

    def terminate_after_three(event):
        if event.phase == "created":
            seen.append(event.operation_id)
        elif event.result is None and event.batches_done == 3:
            raise TerminationSignal(signal=15)

    with listening(terminate_after_three):
        state = _delete(creator_id="creator-001", video_ids=ids, batch_size=1)
    assert state.is_cancelled(), state
    status = _status(seen[0])
    doc = status["result"]
    assert status["status"] == doc["status"] == "cancelled"
    assert doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"] == 120
    assert doc["failed"] == 0 and 3 <= doc["succeeded"] < 120
    assert len(lib.ids("creator-001")) == doc["skipped"], "every item counted succeeded was really deleted"
    assert "SIGTERM" in doc["message"]
    # how far it really got: what a cancel left unstarted is not done
    assert status["progress"]["current"] == doc["succeeded"] < status["progress"]["total"] == 120


def test_a_slow_call_while_draining_does_not_crash_the_run(sqlite_library, monkeypatch):
    """The drain's deadline passes while the flow's own thread is busy counting a batch
    (a progress call to a slow Prefect server: CI saw one wait a minute on a locked
    SQLite server). The run still ends Cancelled with its result; it used to crash with
    Prefect's CancelledError, raised by the SIGALRM of ``as_completed(timeout=...)``
    wherever the thread was, and the CLI printed nothing."""
    from prefect.exceptions import TerminationSignal

    import flows.operation

    monkeypatch.setattr(flows.operation, "DRAIN_S", 1.0)
    lib = sqlite_library
    lib.seed(120, creators=1, files=False)
    seen: list[str] = []
    slowed: list[bool] = []

    def terminate_then_be_slow(event):
        if event.phase == "created":
            seen.append(event.operation_id)
        elif event.result is None and event.batches_done == 3:
            raise TerminationSignal(signal=15)
        elif event.result is None and event.batches_done > 3 and not slowed:
            slowed.append(True)
            time.sleep(2.5)  # past the drain's deadline, in the flow's thread

    with listening(terminate_then_be_slow):
        state = _delete(creator_id="creator-001", video_ids=lib.ids("creator-001"), batch_size=1)
    assert slowed and state.is_cancelled(), state
    doc = _status(seen[0])["result"]
    assert doc["status"] == "cancelled" and doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"]
    assert len(lib.ids("creator-001")) == doc["skipped"], "every item counted succeeded was really deleted"


def test_a_run_set_cancelling_from_outside_stops_by_itself(sqlite_library, monkeypatch):
    """The Prefect UI's Cancel of a run that no runner executes (the CLI runs it in its own
    process): only the run's state says so. The flow reads its own state and stops."""
    import flows.operation
    import tasks.delete
    from prefect import get_client
    from prefect.states import Cancelling

    lib = sqlite_library
    lib.seed(300, creators=1, files=False)
    ids = lib.ids("creator-001")
    monkeypatch.setattr(flows.operation, "STATE_POLL_S", 0.2)
    real_delete = tasks.delete.delete_batch

    def slow_delete(*args, **kwargs):  # slow storage: ~4 s for the whole run
        time.sleep(0.1)
        return real_delete(*args, **kwargs)

    monkeypatch.setattr(tasks.delete, "delete_batch", slow_delete)
    asked = threading.Event()

    def cancel_from_outside(event):
        if event.result is None and event.batches_done == 2 and not asked.is_set():
            asked.set()
            with get_client(sync_client=True) as client:  # as the UI does: the state, no stop flag
                client.set_flow_run_state(uuid.UUID(event.operation_id), Cancelling(), force=True)

    with listening(cancel_from_outside):
        state = _delete(creator_id="creator-001", video_ids=ids, batch_size=1)
    assert asked.is_set() and state.is_cancelled()
    doc = _status(str(state.state_details.flow_run_id))["result"]
    assert doc["status"] == "cancelled" and doc["skipped"] > 0
    assert doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"] == 300
    assert len(lib.ids("creator-001")) == doc["skipped"]
    assert "cancelled from Prefect" in doc["message"]


def test_a_cancel_rolls_a_reprocess_batch_back_whole_and_releases_its_claims(library, monkeypatch):
    """A reprocess batch of a slow model checks the stop between slices of its work: on a
    cancel it writes nothing, gives every claim back, and its videos count as skipped."""
    import tasks.reprocess as task_module
    from service.control import cancel

    lib = library
    lib.seed(40, creators=1, transcript_ratio=1.0)
    with lib.engine.connect() as conn:
        ids = list(conn.execute(select(Video.id).where(Video.status != "processing")
                                .order_by(Video.id)).scalars())
        before = conn.execute(select(VideoChunk.video_id, VideoChunk.content).order_by(VideoChunk.id)).all()
        statuses = dict(conn.execute(select(Video.id, Video.status)).all())
    slow = _SlowEmbedder(per_text_s=0.01)
    monkeypatch.setattr(task_module, "embedder_for", lambda name: slow)
    answers = []

    def cancel_once_working(event):
        if event.result is None and event.phase == "running" and 0 < event.current and not answers:
            answers.append(cancel(event.operation_id))  # what `bulkops cancel` does

    with listening(cancel_once_working):
        state = _reprocess(creator_id="creator-001", video_ids=ids, batch_size=len(ids))
    assert answers and answers[0]["cancel_requested"] is True
    assert state.is_cancelled()
    doc = _status(str(state.state_details.flow_run_id))["result"]
    assert (doc["status"], doc["succeeded"], doc["failed"], doc["skipped"]) == ("cancelled", 0, 0, len(ids))
    assert held_by(lib, doc["operation_id"]) == 0
    with lib.engine.connect() as conn:
        assert conn.execute(select(VideoChunk.video_id, VideoChunk.content).order_by(VideoChunk.id)).all() == before
        assert dict(conn.execute(select(Video.id, Video.status)).all()) == statuses
    # Asked again once it has ended: nothing to cancel.
    again = cancel(doc["operation_id"])
    assert again == {"operation_id": doc["operation_id"], "status": "cancelled", "cancel_requested": False}


def test_progress_moves_inside_a_batch(sqlite_library, monkeypatch):
    """One batch of a slow model: the count moves while the batch runs, and never down."""
    import tasks.reprocess as task_module

    lib = sqlite_library
    lib.seed(60, creators=1, transcript_ratio=1.0)
    slow = _SlowEmbedder(per_text_s=0.008)
    monkeypatch.setattr(task_module, "embedder_for", lambda name: slow)
    events = []
    with listening(lambda e: events.append((e.current, e.total, e.batches_done, e.phase, e.result))):
        state = _reprocess(creator_id="creator-001", all_videos=True, batch_size=1000)
    assert state.is_completed(), state.message
    doc = state.result()
    inside = [current for current, total, done, phase, result in events
              if result is None and phase == "running" and done == 0 and 0 < current < total]
    assert inside, f"no count before the batch ended: {events}"
    currents = [e[0] for e in events if e[4] is None and e[3] == "running"]
    assert currents == sorted(currents)
    assert currents[-1] == doc["requested"] and slow.calls >= 3
    status = _status(doc["operation_id"])
    assert status["progress"]["current"] == status["progress"]["total"] == doc["requested"]


def test_progress_from_worker_processes_is_exact_and_never_goes_down(sqlite_library, monkeypatch):
    """Batches whose chunking and embedding run in worker processes (the compute pool):
    the summed count only goes up and ends exactly at what was requested."""
    import videolib.compute_pool as compute_pool

    lib = sqlite_library
    lib.seed(400, creators=1, transcript_ratio=1.0, files=False)
    monkeypatch.setattr(compute_pool, "MIN_VIDEOS", 10)
    monkeypatch.setattr("flows.operation.TICK_S", 0.05)
    pooled = []
    original = compute_pool.ComputePool.chunk_and_embed

    def counted(self, items, chunking, embedder):
        pooled.append(len(items))
        return original(self, items, chunking, embedder)

    monkeypatch.setattr(compute_pool.ComputePool, "chunk_and_embed", counted)
    events = []
    with listening(lambda e: events.append((e.current, e.phase, e.result))):
        state = _reprocess(creator_id="creator-001", all_videos=True, batch_size=50)
    assert state.is_completed(), state.message
    doc = state.result()
    assert sum(pooled) == doc["requested"], "every video went through a worker process"
    currents = [current for current, phase, result in events if result is None and phase == "running"]
    assert currents == sorted(currents) and currents[-1] == doc["requested"]


def test_delete_progress_moves_inside_a_batch(sqlite_library, monkeypatch):
    """One delete batch on slow storage: the count moves as its objects go, before the
    batch ends, never down, and ends at what was requested."""
    from videolib.storage.store import ObjectStore

    lib = sqlite_library
    lib.seed(600, creators=1)
    ids = lib.ids("creator-001")
    monkeypatch.setattr("flows.operation.TICK_S", 0.05)
    real = ObjectStore._local_delete_many

    def slow_storage(self, keys):  # ~1 ms per object, a slow disk or a far bucket
        time.sleep(0.001 * len(keys))
        return real(self, keys)

    monkeypatch.setattr(ObjectStore, "_local_delete_many", slow_storage)
    events = []
    with listening(lambda e: events.append((e.current, e.total, e.batches_done, e.phase, e.result))):
        state = _delete(creator_id="creator-001", video_ids=ids, batch_size=1000)
    assert state.is_completed(), state.message
    doc = state.result()
    assert doc["succeeded"] == len(ids)
    assert max(done for _c, _t, done, _p, _r in events) == 1, "one batch"
    running = [(current, total, done) for current, total, done, phase, result in events
               if result is None and phase == "running"]
    assert any(done == 0 and 0 < current < total for current, total, done in running), running
    currents = [current for current, _total, _done in running]
    assert currents == sorted(currents) and currents[-1] == len(ids)
    assert lib.ids("creator-001") == []


@pytest.mark.slow  # spawns two worker processes (~8 s)
def test_progress_from_batches_run_in_other_processes(sqlite_library, monkeypatch):
    """Batches run by a process-pool task runner (each in a spawned worker process):
    their counts reach the flow through Prefect while they run, the sum only goes up and
    ends exactly at what was requested, and no count is left behind in Prefect."""
    from prefect.task_runners import ProcessPoolTaskRunner

    from flows.bulk_reprocess import bulk_reprocess
    from tasks.ticks import TICK_PREFIX
    from tests.flows import slow_worker

    lib = sqlite_library
    lib.seed(40, creators=1, transcript_ratio=1.0, files=False)
    monkeypatch.setenv("BULKOPS_TASK_WORKERS", "2")  # two batches of 20, one per worker process
    from config import get_settings

    get_settings.cache_clear()
    runner = ProcessPoolTaskRunner(max_workers=2, initializer=slow_worker.install, initargs=(0.03,))
    events = []
    with listening(lambda e: events.append((e.current, e.total, e.batches_done, e.phase, e.result))):
        state = bulk_reprocess.with_options(task_runner=runner)(
            creator_id="creator-001", all_videos=True, batch_size=20, return_state=True)
    assert state.is_completed(), state.message
    doc = state.result()
    assert doc["requested"] + sum(doc["not_selected"].values()) == 40
    assert doc["succeeded"] + doc["failed"] == doc["requested"]
    running = [(current, total, done) for current, total, done, phase, result in events
               if result is None and phase == "running"]
    # the count moved while no batch ended: a running batch's own count arrived
    assert any(later[0] > earlier[0] and later[2] == earlier[2] for earlier, later in zip(running, running[1:])), \
        f"no count arrived from inside a batch: {running}"
    currents = [current for current, _total, _done in running]
    assert currents == sorted(currents) and currents[-1] == doc["requested"]
    from prefect import get_client

    with get_client(sync_client=True) as client:
        left = [v.name for v in client.read_variables() if v.name.startswith(f"{TICK_PREFIX}{doc['operation_id']}")]
    assert left == []
    status = _status(doc["operation_id"])
    assert status["progress"]["current"] == status["progress"]["total"] == doc["requested"]


@pytest.mark.slow  # spawns two worker processes (~8 s)
def test_a_cancel_from_prefect_reaches_batches_in_other_processes(sqlite_library, monkeypatch):
    """The UI's Cancel (the run's state only) of a run whose batches run in worker
    processes: the flow passes the stop on through the stop flag, and every batch there
    rolls back whole and gives its claims back."""
    from prefect import get_client
    from prefect.states import Cancelling
    from prefect.task_runners import ProcessPoolTaskRunner

    import flows.operation
    from flows.bulk_reprocess import bulk_reprocess
    from tests.flows import slow_worker

    lib = sqlite_library
    lib.seed(40, creators=1, transcript_ratio=1.0, files=False)
    with lib.engine.connect() as conn:
        ids = list(conn.execute(select(Video.id).where(Video.status != "processing")).scalars())
        before = conn.execute(select(VideoChunk.video_id, VideoChunk.content).order_by(VideoChunk.id)).all()
    monkeypatch.setenv("BULKOPS_TASK_WORKERS", "2")
    from config import get_settings

    get_settings.cache_clear()
    monkeypatch.setattr(flows.operation, "STATE_POLL_S", 0.2)
    runner = ProcessPoolTaskRunner(max_workers=2, initializer=slow_worker.install, initargs=(0.03,))
    asked = threading.Event()

    def cancel_from_outside(event):
        if event.result is None and event.phase == "running" and event.current > 0 and not asked.is_set():
            asked.set()
            with get_client(sync_client=True) as client:  # as the UI does: the state, no stop flag
                client.set_flow_run_state(uuid.UUID(event.operation_id), Cancelling(), force=True)

    with listening(cancel_from_outside):
        state = bulk_reprocess.with_options(task_runner=runner)(
            creator_id="creator-001", video_ids=ids, batch_size=len(ids) // 2, return_state=True)
    assert asked.is_set() and state.is_cancelled()
    doc = _status(str(state.state_details.flow_run_id))["result"]
    assert (doc["status"], doc["succeeded"], doc["skipped"]) == ("cancelled", 0, len(ids))
    assert held_by(lib, doc["operation_id"]) == 0
    with lib.engine.connect() as conn:
        assert conn.execute(select(VideoChunk.video_id, VideoChunk.content).order_by(VideoChunk.id)).all() == before


def test_a_run_cancelled_while_scheduled_shows_zero_counts():
    """Cancelled before any process picked it up: cancelled at once, a result of zeros."""
    from prefect import get_client

    from flows.bulk_delete import bulk_delete
    from service.control import cancel

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(bulk_delete, parameters={"creator_id": "creator-001", "all_videos": True})
    answer = cancel(str(run.id))
    assert answer == {"operation_id": str(run.id), "status": "cancelled", "cancel_requested": True}
    status = _status(str(run.id))
    result = status["result"]
    assert status["status"] == result["status"] == "cancelled"
    assert (result["requested"], result["succeeded"], result["failed"], result["skipped"]) == (0, 0, 0, 0)


def test_cancel_of_an_unknown_or_malformed_id_is_refused():
    from service.control import cancel
    from videolib.ids import RequestError

    for bad in (str(uuid.uuid4()), "not-an-id", "1; DROP TABLE videos"):
        with pytest.raises(RequestError) as refused:
            cancel(bad)
        assert refused.value.code == "unknown_operation"


def test_prefect_says_which_holding_runs_have_ended():
    from prefect import get_client
    from prefect.states import Cancelled, Crashed, Running

    from flows.bulk_delete import bulk_delete
    from tasks.resources import HOLDERS

    runs = {}
    with get_client(sync_client=True) as client:
        for name, state in (("running", Running()), ("cancelled", Cancelled()), ("crashed", Crashed())):
            run = client.create_flow_run(bulk_delete, parameters={"creator_id": "creator-001"})
            client.set_flow_run_state(run.id, state, force=True)
            runs[name] = str(run.id)
    unknown = str(uuid.uuid4())
    ended = HOLDERS.finished([*runs.values(), unknown, "not-a-run-id"])
    assert ended == {runs["cancelled"], runs["crashed"]}


def test_flows_pickled_by_value_still_validate_their_parameters(tmp_path):
    """Prefect's serve() runner sends the flow to the run's process pickled by value:
    its parameter annotations must travel as objects (string annotations from
    `from __future__ import annotations` cannot be resolved there)."""
    import subprocess
    import sys

    import cloudpickle

    from flows import FLOWS

    path = tmp_path / "flows.pkl"
    path.write_bytes(cloudpickle.dumps({name: make() for name, make in FLOWS.items()}))
    check = (
        "import pickle, sys\n"
        f"flows = pickle.load(open({str(path)!r}, 'rb'))\n"
        "for name, flow in flows.items():\n"
        "    params = {'creator_id': 'creator-001', 'format': 'csv'} if 'export' in name else "
        "{'dry_run': True} if name == 'cleanup' else "
        "{'creator_id': 'creator-001', 'video_ids': ['x']} if name == 'bulk-restore' else "
        "{'parent_id': '8f0e9d2c-5b7a-4c1e-9f3d-2a6b8c4e1f70', 'share': 1} if name == 'bulk-share' else "
        "{'creator_id': 'creator-001', 'all_videos': True}\n"
        "    flow.validate_parameters(params)\n"
        "print(sorted(flows))\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bulk-delete" in proc.stdout and "bulk-reprocess" in proc.stdout


def test_no_wait_is_refused_when_nothing_would_execute_the_run(sqlite_library, monkeypatch):
    """`--no-wait` needs a named server with the deployment and a worker or runner."""
    from flows.runners import ready_deployment
    from service.launch import submit
    from service.requests import CommandLineIds, DeleteRequest
    from videolib.ids import RequestError

    request = DeleteRequest.build(creator_id="creator-001", selection=CommandLineIds((), (), True))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(RequestError) as refused:
        submit(request)
    assert refused.value.code == "no_runner" and "PREFECT_API_URL" in refused.value.message
    with pytest.raises(RequestError) as refused:  # the harness's server has no deployments
        ready_deployment("bulk-delete")
    assert refused.value.code == "no_runner" and "prefect deploy --all" in refused.value.message
