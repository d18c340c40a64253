"""Tasks called as plain functions (``task.fn``), the S3 path of the flow, and prefect.yaml."""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]


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


def test_deployments_deploy_and_run_through_a_worker(sqlite_library, prefect_server, tmp_path):
    """The way operators use it: `prefect deploy --all` from prefect.yaml, a process
    worker, runs created from a deployment (as the UI's Run button and the API do).
    Also guards the FastAPI pin: with FastAPI >= 0.151 Prefect 3.8.8's server answers
    its own CLI's filter requests (`limit: null`) with 422, and `prefect deploy` fails."""
    import json
    import re
    import subprocess

    lib = sqlite_library
    lib.seed(12, creators=2)
    mine, theirs = lib.ids("creator-001"), lib.ids("creator-002")
    bin_dir = Path(sys.executable).parent
    # The forms' bounds follow the settings at deploy time.
    env = dict(os.environ, **lib.env(), PREFECT_API_URL=prefect_server.api_url, PREFECT_HOME=str(tmp_path / "home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", BULKOPS_PROJECT_DIR=str(ROOT), BULKOPS_MAX_IDS="500")

    def prefect(*args, timeout=180):
        proc = subprocess.run([str(bin_dir / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    prefect("work-pool", "create", "bulkops", "--type", "process", "--overwrite")
    prefect("deploy", "--all")
    listing = prefect("deployment", "ls")
    for name in ("bulk-delete/bulk-delete", "bulk-export/bulk-export", "bulk-reprocess/bulk-reprocess"):
        assert name in listing
    _check_deployment_forms(prefect_server.api_url, max_ids=500)

    def run_deployment(*params):
        out = prefect("deployment", "run", "bulk-delete/bulk-delete", *[p for kv in params for p in ("--param", kv)])
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
        prefect("worker", "start", "--pool", "bulkops", "--run-once", timeout=300)
        proc = subprocess.run([str(bin_dir / "bulkops"), "status", run_id, "--json"], env=env, text=True,
                              capture_output=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    # The deployment's default is a dry run: triggering it without thinking deletes nothing,
    # and the UI's run list shows it as one.
    status = run_deployment("creator_id=creator-001", "all_videos=true")
    assert status["status"] == "completed" and status["result"]["dry_run"] is True
    assert status["result"]["plan"]["videos"] == len(mine) and lib.ids("creator-001") == mine
    run = requests.get(f"{prefect_server.api_url}/flow_runs/{status['operation_id']}", timeout=30).json()
    assert run["name"] == "delete-creator-001-dry-run" and "dry-run" in run["tags"], (run["name"], run["tags"])

    status = run_deployment("creator_id=creator-001", f"video_ids={json.dumps(mine[:3])}", "dry_run=false")
    assert status["status"] == "completed" and status["result"]["succeeded"] == 3
    assert status["progress"] == {"current": 3, "total": 3, "percent": 100.0}
    assert lib.ids("creator-001") == mine[3:] and lib.ids("creator-002") == theirs


def _check_deployment_forms(api_url: str, *, max_ids: int) -> None:
    """Each deployment's parameter schema, as the Prefect server holds it after `prefect
    deploy --all`: choices where there are choices, bounds from the settings, and the
    server refuses a run that breaks them."""
    def schema(name: str) -> tuple[str, dict]:
        deployment = requests.get(f"{api_url}/deployments/name/{name}", timeout=30).json()
        return deployment["id"], deployment["parameter_openapi_schema"]["properties"]

    def options(prop: dict) -> dict:
        return next(o for o in prop.get("anyOf", [prop]) if o.get("type") != "null")

    from videolib.export import DEFAULT_COLUMNS

    export_id, export = schema("bulk-export/bulk-export")
    assert options(export["format"])["enum"] == ["parquet", "csv"]
    assert options(export["status"])["enum"] == ["uploaded", "processing", "ready", "failed"]
    assert options(export["columns"])["items"]["enum"] == list(DEFAULT_COLUMNS)
    reprocess_id, reprocess = schema("bulk-reprocess/bulk-reprocess")
    assert options(reprocess["embedder"])["enum"] == ["hashing", "minilm"]
    assert options(reprocess["chunk_unit"])["enum"] == ["words", "tokens"]
    delete_id, delete = schema("bulk-delete/bulk-delete")
    for props in (export, reprocess, delete):
        assert options(props["video_ids"])["maxItems"] == max_ids
        assert props["creator_id"]["maxLength"] == 64 and props["creator_id"]["description"]

    ids = [str(uuid.UUID(int=i)) for i in range(max_ids + 1)]
    for deployment_id, parameters in [
        (export_id, {"creator_id": "creator-001", "format": "xlsx"}),
        (export_id, {"creator_id": "creator-001", "columns": ["id", "password"]}),
        (export_id, {"creator_id": "creator-001", "status": "deleting"}),
        (delete_id, {"creator_id": "creator-001", "video_ids": ids}),
        (reprocess_id, {"creator_id": "creator-001", "embedder": "gpt-9"}),
    ]:
        answer = requests.post(f"{api_url}/deployments/{deployment_id}/create_flow_run",
                               json={"parameters": parameters}, timeout=30)
        assert answer.status_code in (409, 422), (parameters.keys(), answer.status_code, answer.text[:300])
