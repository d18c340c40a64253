"""Batches on a Dask cluster (`BULKOPS_TASK_RUNNER=dask`, prefect-dask): reprocess with
the real model on a cluster of two single-threaded worker processes, the model loaded
once per Dask worker and not per batch, progress from inside the batches reaching the
flow through Prefect, and the result exact. Also a cancel that reaches the batches
there, and the default (a LocalCluster started for the run)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from videolib.db.models import Video, VideoChunk

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]  # Dask worker processes: ~10 s


@pytest.fixture
def dask_settings(monkeypatch):
    from config import get_settings

    def use(**env: str) -> None:
        monkeypatch.setenv("BULKOPS_TASK_RUNNER", "dask")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


@pytest.fixture
def cluster():
    """A Dask cluster of our own, so that the test can ask its workers what they hold."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local, \
            Client(local) as client:
        yield local, client


def _reprocess(**params):
    from flows.bulk_reprocess import bulk_reprocess
    from flows.runners import task_runner

    # The flow's runner was built from the settings at import: build one from today's.
    return bulk_reprocess.with_options(task_runner=task_runner())(return_state=True, **params)


def _embedder_loads():
    """In a Dask worker: how often its process built an embedder, and kept it."""
    from tasks.resources import embedder_for

    info = embedder_for.cache_info()
    return {"loads": info.misses, "reuses": info.hits}


def test_reprocess_on_dask_loads_the_model_once_per_worker_and_reports_progress(sqlite_library, dask_settings,
                                                                               cluster):
    from flows.progress import listening
    from tests.flows.test_control import _status

    from videolib.embedders.minilm import MODEL_ID
    local, client = cluster
    lib = sqlite_library
    lib.seed(48, creators=1, transcript_ratio=1.0, files=False)
    dask_settings(BULKOPS_DASK_ADDRESS=local.scheduler_address)
    events = []
    with listening(lambda e: events.append((e.current, e.batches, e.phase, e.result))):
        state = _reprocess(creator_id="creator-001", all_videos=True, embedder="minilm", batch_size=4)
    assert state.is_completed(), state.message
    doc = state.result()
    batches = max(count for _current, count, _phase, _result in events)
    assert doc["status"] == "completed" and doc["succeeded"] == doc["requested"] > 0 and batches >= 6, (doc, batches)
    with lib.engine.connect() as conn:
        written = conn.execute(select(func.count()).select_from(VideoChunk).where(
            VideoChunk.model == MODEL_ID)).scalar_one()
        ready = conn.execute(select(func.count()).where(Video.status == "ready",
                                                        Video.embedding_model == MODEL_ID)).scalar_one()
    assert written > 0 and ready == doc["succeeded"]
    # Every batch ran in the cluster; each worker built the model once and kept it.
    loads = client.run(_embedder_loads)
    assert len(loads) == 2
    assert all(seen["loads"] <= 1 for seen in loads.values()), loads
    assert sum(seen["loads"] + seen["reuses"] for seen in loads.values()) == batches, loads
    # Progress moved while batches ran elsewhere, only up, to exactly what was requested.
    currents = [current for current, _batches, phase, result in events if result is None and phase == "running"]
    assert currents == sorted(currents) and currents[-1] == doc["requested"], currents
    status = _status(doc["operation_id"])
    assert status["progress"]["current"] == status["progress"]["total"] == doc["requested"]


def test_delete_on_a_local_cluster_started_for_the_run(sqlite_library, dask_settings):
    lib = sqlite_library
    lib.seed(30, creators=2)
    mine, theirs = lib.ids("creator-001"), lib.ids("creator-002")
    dask_settings()
    from flows.bulk_delete import bulk_delete
    from flows.runners import task_runner

    state = bulk_delete.with_options(task_runner=task_runner())(
        creator_id="creator-001", video_ids=mine[:10] + theirs[:1], batch_size=3, return_state=True)
    doc = state.result()
    assert doc["status"] == "partial" and doc["succeeded"] == 10, doc
    assert [e["error"] for e in doc["errors"]] == ["not_found"]
    assert doc["verified"]["rows_absent"] == 10
    assert lib.ids("creator-001") == mine[10:] and lib.ids("creator-002") == theirs


def test_a_cancel_reaches_the_batches_on_the_cluster(sqlite_library, dask_settings, cluster, monkeypatch):
    """The UI's Cancel (the run's state only) while the batches run on Dask: the stop
    flag reaches them there; what had not started is skipped, claims all given back."""
    import threading
    import uuid

    from prefect import get_client
    from prefect.states import Cancelling

    import flows.operation
    from flows.progress import add_progress_listener, remove_progress_listener
    from tests.clitools import held_by
    from tests.flows.test_control import _status

    local, _client = cluster
    lib = sqlite_library
    lib.seed(120, creators=1, transcript_ratio=1.0, files=False)
    dask_settings(BULKOPS_DASK_ADDRESS=local.scheduler_address)
    monkeypatch.setattr(flows.operation, "STATE_POLL_S", 0.2)
    cancelled = threading.Event()

    def cancel_once_working(event) -> None:
        if not cancelled.is_set() and event.result is None and event.phase == "running" and event.current > 0:
            cancelled.set()
            with get_client(sync_client=True) as prefect:
                prefect.set_flow_run_state(uuid.UUID(event.operation_id), Cancelling(), force=True)

    add_progress_listener(cancel_once_working)
    try:
        state = _reprocess(creator_id="creator-001", all_videos=True, embedder="minilm", batch_size=5)
    finally:
        remove_progress_listener(cancel_once_working)
    assert cancelled.is_set() and state.is_cancelled()
    doc = _status(str(state.state_details.flow_run_id))["result"]
    assert doc["status"] == "cancelled" and doc["skipped"] > 0, doc
    assert doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"]
    assert held_by(lib, doc["operation_id"]) == 0
