"""Tasks called as plain functions (``task.fn``), the S3 path of the flow, the flows' parameter bounds,
the heartbeat fix, the stop flag, and prefect.yaml."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_delete_task_fn_runs_without_a_flow(sqlite_library, prefect_harness):
    from tasks.delete import delete_video_batch

    lib = sqlite_library
    lib.seed(6, creators=1)
    ids = lib.ids("creator-001")
    op = "22222222-2222-4222-8222-222222222222"
    planned = delete_video_batch.fn(ids, 0, creator_id="creator-001", operation_id=op, dry_run=True)
    assert sorted(planned["succeeded"]) == sorted(ids) and planned["objects"] == 12
    assert lib.ids("creator-001") == ids
    done = delete_video_batch.fn(ids, 0, creator_id="creator-001", operation_id=op)
    assert sorted(done["succeeded"]) == sorted(ids) and lib.ids("creator-001") == []


def test_flow_on_postgres_and_s3(pg_url, s3_server, s3_prefix, monkeypatch, tmp_path, prefect_harness):
    from tests.conftest import _make_library

    lib = _make_library(monkeypatch, tmp_path, pg_url, s3_prefix, s3_server.endpoint_url)
    lib.seed(40, creators=2)
    ids = lib.ids("creator-001")
    keys = [f"videos/creator-001/{vid}/source.mp4" for vid in ids]
    assert all(lib.store.exists(k) for k in keys)
    from flows.bulk_delete import bulk_delete

    state = bulk_delete(creator_id="creator-001", video_ids=ids + ["bad"], batch_size=7, return_state=True)
    doc = state.result()
    assert state.name == "Partial" and doc["succeeded"] == len(ids) and doc["failed"] == 1
    assert not any(lib.store.exists(k) for k in keys)
    assert lib.ids("creator-001") == [] and lib.ids("creator-002")
    assert lib.store.exists(doc["report_path"]) and lib.store.exists(doc["manifest_path"])


def test_prefect_yaml_deployments_point_at_real_flows():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert "bulk-delete" in names
    for deployment in spec["deployments"]:
        path, func = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert flow.name == deployment["name"]
        # The UI's run form takes each parameter's description from the docstring's Args.
        for parameter in flow.parameters.properties:
            assert f"{parameter}:" in flow.__doc__ or f"{parameter}:" in (flow.fn.__doc__ or "")


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"batch_size": 10**9}, {"creator_id": "x" * 65}])
def test_flow_parameters_carry_bounds(bad):
    from prefect.exceptions import ParameterTypeError

    from flows.bulk_delete import bulk_delete

    params = {"creator_id": "creator-001", "video_ids": ["x"], **bad}
    with pytest.raises(ParameterTypeError):
        bulk_delete.validate_parameters(params)


class _FakeEngine:
    """What Prefect's flow engine gives the heartbeat context (see flows/engine_fixes.py)."""

    def __init__(self, heartbeat_seconds):
        import logging
        import threading

        self.heartbeat_seconds = heartbeat_seconds
        self.flow_run = None
        self.logger = logging.getLogger("test-heartbeats")
        self.beats = 0
        self.beat = threading.Event()

    def _build_heartbeat_event_template(self):
        return {"resource": 1}, []

    def _emit_flow_run_heartbeat(self, resource, related):
        assert resource == {"resource": 1} and related == []
        self.beats += 1
        self.beat.set()


def _heartbeat_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "bulkops-flow-heartbeat"]


def test_flow_engine_uses_the_prompt_heartbeat_on_the_pinned_prefect():
    import prefect
    from prefect import flow_engine

    from flows import engine_fixes

    assert prefect.__version__ == engine_fixes.FIXED_RELEASE  # pyproject pins it; revisit the fix on upgrades
    assert engine_fixes.INSTALLED
    assert flow_engine._send_heartbeats is engine_fixes.prompt_heartbeats


def test_prompt_heartbeat_beats_at_start_and_stops_with_the_run():
    from flows.engine_fixes import prompt_heartbeats

    engine = _FakeEngine(heartbeat_seconds=30)
    with prompt_heartbeats(engine):
        assert engine.beat.wait(10), "no heartbeat at the start of the run"
        assert len(_heartbeat_threads()) == 1
    assert _heartbeat_threads() == []  # joined: nothing beats after the run
    assert engine.beats == 1  # the next beat is 30 s away (Prefect's minimum)

    quiet = _FakeEngine(heartbeat_seconds=None)  # heartbeats switched off: no thread at all
    with prompt_heartbeats(quiet):
        assert _heartbeat_threads() == []
    assert quiet.beats == 0


def test_prompt_heartbeat_is_silent_for_a_finished_run():
    from types import SimpleNamespace

    from flows.engine_fixes import prompt_heartbeats

    engine = _FakeEngine(heartbeat_seconds=30)
    engine.flow_run = SimpleNamespace(state=SimpleNamespace(is_final=lambda: True))
    with prompt_heartbeats(engine):
        pass
    assert engine.beats == 0 and _heartbeat_threads() == []


class _CountingVariable:
    """Prefect's Variable, counting reads (and optionally failing the first ones)."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0):
        import threading

        from prefect.variables import Variable

        self.real = Variable
        self.reads = 0
        self.fail_first = fail_first
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def get(self, name, default=None):
        import time

        with self.lock:
            self.reads += 1
            fail = self.reads <= self.fail_first
        time.sleep(self.delay_s)  # keep the read in flight while the other threads arrive
        if fail:
            raise ConnectionError("the Prefect API is unreachable")
        return self.real.get(name, default=default)

    def set(self, *args, **kwargs):
        return self.real.set(*args, **kwargs)

    def unset(self, *args, **kwargs):
        return self.real.unset(*args, **kwargs)


def test_stop_flag_is_read_once_by_batches_starting_together(prefect_harness, monkeypatch):
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from tasks import stop as common

    counting = _CountingVariable(delay_s=0.3)
    monkeypatch.setattr(common, "Variable", counting)
    operation_id = str(uuid.uuid4())
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: common.stop_requested(operation_id), range(8)))
    assert answers == [False] * 8
    assert counting.reads == 1

    # A stop requested elsewhere (another process sets the Variable) is seen once the
    # cached answer is stale; a stop is final.
    counting.real.set(common.stop_variable_name(operation_id), True, overwrite=True)
    try:
        with common._stop_lock:
            checked_at, _ = common._stop_cache[operation_id]
            common._stop_cache[operation_id] = (checked_at - 2 * common._STOP_TTL_S, False)
        assert common.stop_requested(operation_id) is True
        assert common.stop_requested(operation_id) is True
        assert counting.reads == 2
    finally:
        common.clear_stop(operation_id)


def test_a_failed_stop_read_lets_the_next_caller_read_again(prefect_harness, monkeypatch):
    import uuid

    from tasks import stop as common

    counting = _CountingVariable(fail_first=1)
    monkeypatch.setattr(common, "Variable", counting)
    operation_id = str(uuid.uuid4())
    with pytest.raises(ConnectionError):
        common.stop_requested(operation_id)
    assert common.stop_requested(operation_id) is False  # not stuck behind the failed read
    assert counting.reads == 2
    # The flow's prefetch seeds the cache for the batches.
    other = str(uuid.uuid4())
    common.prefetch_stop(other).join(timeout=30)
    assert common.stop_requested(other) is False and counting.reads == 3


def test_stop_prefetch_reads_in_the_callers_context(monkeypatch):
    """The prefetch thread sees what the flow's thread sees (Prefect keeps its settings,
    the API URL among them, in context variables)."""
    import contextvars

    from tasks import stop as common

    marker = contextvars.ContextVar("marker", default="unset")
    seen: list[str] = []
    monkeypatch.setattr(common, "stop_requested", lambda _op: seen.append(marker.get()) or False)
    token = marker.set("the flow's context")
    try:
        common.prefetch_stop("some-operation").join(timeout=30)
    finally:
        marker.reset(token)
    assert seen == ["the flow's context"]
