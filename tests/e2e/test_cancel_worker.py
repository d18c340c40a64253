"""Cancel and takeover for runs a worker or a `serve()` runner executes, as operators meet
them: a real `prefect server`, `prefect deploy --all` from prefect.yaml, a process work
pool and `prefect worker start` (or a script calling `serve()`), runs created from the
deployments, the Prefect UI's Cancel (the run set Cancelling through the REST API) and
`bulkops cancel`; then processes killed without a word, and the next run taking over
what they held. Slow for real: reprocess with the `minilm` model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from tests.clitools import create_deployment_run, held_by, run_cli
from tests.e2e import E2E, early_library
from videolib.db.models import Video

pytestmark = E2E


ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
PARAMETERS = {"creator_id": "creator-001", "all_videos": True, "embedder": "minilm", "batch_size": 40}


class Operators:
    """A test library served by a real Prefect server, deployments and one executor."""

    def __init__(self, lib, server, tmp_path: Path):
        self.lib, self.api = lib, server.api_url
        self.env = dict(os.environ, **lib.env(), PREFECT_API_URL=server.api_url, PREFECT_HOME=str(tmp_path / "home"),
                        PREFECT_SERVER_ANALYTICS_ENABLED="false", BULKOPS_PROJECT_DIR=str(ROOT),
                        PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
        self.logs = tmp_path
        self.executor: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def prefect(self, *args, timeout=180) -> str:
        proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=self.env, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def start(self, *command: str, name: str) -> None:
        self.log_path = self.logs / f"{name}.log"
        self.executor = subprocess.Popen(list(command), cwd=ROOT, env=self.env, stdout=self.log_path.open("wb"),
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.executor is not None and self.executor.poll() is None:
            os.killpg(self.executor.pid, signal.SIGTERM)
            try:
                self.executor.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.executor.pid, signal.SIGKILL)
                self.executor.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def create_run(self, deployment: str, parameters: dict) -> str:
        return create_deployment_run(self.api, deployment, parameters)

    def state(self, run_id: str) -> dict:
        return requests.get(f"{self.api}/flow_runs/{run_id}", timeout=30).json()["state"]

    def cancel_as_the_ui_does(self, run_id: str) -> None:
        answer = requests.post(f"{self.api}/flow_runs/{run_id}/set_state",
                               json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}, timeout=30)
        assert answer.status_code in (200, 201), answer.text

    def wait_final(self, run_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(run_id)
            if state and state["type"] in FINAL:
                return state
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} not final after {timeout}s: {self.state(run_id)}\n{self.log()[-3000:]}")

    def wait_working(self, run_id: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if held_by(self.lib, run_id):
                return
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} never claimed a video: {self.state(run_id)}\n{self.log()[-3000:]}")



def run_processes(run_id: str) -> list[int]:
    """Pids of the processes executing this flow run (the runner sets its id in their env)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


KILLED_TEST = "test_what_a_killed_run_held_is_taken_over_once_it_has_ended"


@pytest.fixture(scope="module", autouse=True)
def machine_lost_before_the_rest(request, prefect_server, tmp_path_factory):
    """For test_what_a_killed_run_held_is_taken_over_once_it_has_ended (last in this
    module): a worker and the run it executes are SIGKILLed together, as when a machine
    is lost, before the module's other tests, on a library and Prefect home of their own;
    the 90 s the heartbeat automation waits pass while those tests run. Nothing when that
    test is not selected."""
    lib = early_library(request, tmp_path_factory, KILLED_TEST, "lost-machine")
    if lib is None:
        yield None
        return
    base = lib.data_dir.parent
    ops = Operators(lib, prefect_server, base)
    ops.prefect("work-pool", "create", "bulkops", "--type", "process", "--overwrite")
    ops.prefect("deploy", "--all")
    ops.prefect("automation", "create", "--from-file", str(ROOT / "prefect-automations.yaml"))
    ops.start(str(BIN / "prefect"), "worker", "start", "--pool", "bulkops", "--limit", "1", name="lost-worker")
    try:
        run_id = ops.create_run("bulk-reprocess/bulk-reprocess", PARAMETERS)
        ops.wait_working(run_id)
        os.killpg(ops.executor.pid, signal.SIGKILL)
        for pid in run_processes(run_id):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert held_by(lib, run_id) > 0, "the killed run left claims behind"
        assert ops.state(run_id)["type"] == "RUNNING"
        yield {"ops": ops, "run_id": run_id}
    finally:
        ops.stop()
        lib.engine.dispose()


@pytest.fixture
def operators(sqlite_library, prefect_server, tmp_path):
    sqlite_library.seed(400, creators=1, transcript_ratio=1.0, files=False)
    ops = Operators(sqlite_library, prefect_server, tmp_path)
    ops.prefect("work-pool", "create", "bulkops", "--type", "process", "--overwrite")
    yield ops
    ops.stop()


def _check_cancelled_result(ops: Operators, run_id: str) -> dict:
    proc, status = run_cli(ops.lib, "status", run_id, "--json", env_extra={"PREFECT_API_URL": ops.api})
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = status["result"]
    assert status["status"] == doc["status"] == "cancelled", status
    assert doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"] and doc["skipped"] > 0
    assert held_by(ops.lib, run_id) == 0, "every claim of the run was released"
    assert status["progress"]["current"] == doc["succeeded"] + doc["failed"]
    assert status["progress"]["total"] == doc["requested"]
    return doc


def test_cancel_of_worker_runs_from_the_ui_and_from_bulkops_cancel(operators):
    ops = operators
    ops.prefect("deploy", "--all")
    ops.start(str(BIN / "prefect"), "worker", "start", "--pool", "bulkops", "--limit", "1", name="worker")

    # 1. The UI's Cancel: the worker SIGTERMs the run's process; the flow drains its batches,
    # writes its result and ends Cancelled well within Prefect's 30 s grace (no SIGKILL).
    run_id = ops.create_run("bulk-reprocess/bulk-reprocess", PARAMETERS)
    ops.wait_working(run_id)
    asked = time.monotonic()
    ops.cancel_as_the_ui_does(run_id)
    state = ops.wait_final(run_id, timeout=90)
    assert state["type"] == "CANCELLED", state
    assert time.monotonic() - asked < 30
    doc = _check_cancelled_result(ops, run_id)
    assert "SIGTERM" in doc["message"] or "cancelled from Prefect" in doc["message"], doc["message"]

    # 2. `bulkops cancel` from a terminal, for a run the worker executes.
    run_id = ops.create_run("bulk-reprocess/bulk-reprocess", PARAMETERS)
    ops.wait_working(run_id)
    proc, answer = run_cli(ops.lib, "cancel", run_id, "--json", env_extra={"PREFECT_API_URL": ops.api})
    assert proc.returncode == 0 and answer["cancel_requested"] is True, proc.stderr[-3000:]
    assert ops.wait_final(run_id, timeout=90)["type"] == "CANCELLED"
    _check_cancelled_result(ops, run_id)

    # 3. `--no-wait`: the CLI creates the run for the worker and leaves at once.
    proc, answer = run_cli(ops.lib, "reprocess", "--creator", "creator-001", "--all", "--embedder", "minilm",
                           "--batch-size", "40", "--no-wait", "--json", env_extra={"PREFECT_API_URL": ops.api})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert answer["status"] == "pending" and set(answer) == {"operation_id", "status"}
    assert f"Operation {answer['operation_id']} created" in proc.stderr
    ops.wait_working(answer["operation_id"])
    run_cli(ops.lib, "cancel", answer["operation_id"], "--json", env_extra={"PREFECT_API_URL": ops.api})
    assert ops.wait_final(answer["operation_id"], timeout=90)["type"] == "CANCELLED"
    _check_cancelled_result(ops, answer["operation_id"])

    # 4. Cancelled while still scheduled (no worker has it): cancelled at once, zero counts.
    ops.stop()
    run_id = ops.create_run("bulk-reprocess/bulk-reprocess", PARAMETERS)
    proc, answer = run_cli(ops.lib, "cancel", run_id, "--json", env_extra={"PREFECT_API_URL": ops.api})
    assert answer == {"operation_id": run_id, "status": "cancelled", "cancel_requested": True}
    proc, status = run_cli(ops.lib, "status", run_id, "--json", env_extra={"PREFECT_API_URL": ops.api})
    result = status["result"]
    assert (result["status"], result["requested"], result["succeeded"], result["skipped"]) == ("cancelled", 0, 0, 0)

    log = ops.log()
    assert "exited with status code: -9" not in log and "SIGKILL" not in log, log[-3000:]


def test_cancel_of_a_run_the_serve_runner_executes(operators):
    ops = operators
    ops.start(sys.executable, "-c", SERVE, name="serve")
    deadline = time.monotonic() + 120
    while requests.get(f"{ops.api}/deployments/name/bulk-reprocess/served", timeout=30).status_code != 200:
        assert time.monotonic() < deadline and ops.executor.poll() is None, ops.log()[-3000:]
        time.sleep(0.5)
    run_id = ops.create_run("bulk-reprocess/served", PARAMETERS)
    ops.wait_working(run_id)
    asked = time.monotonic()
    ops.cancel_as_the_ui_does(run_id)
    assert ops.wait_final(run_id, timeout=90)["type"] == "CANCELLED"
    assert time.monotonic() - asked < 30
    _check_cancelled_result(ops, run_id)


SERVE = """
from flows.bulk_reprocess import bulk_reprocess
bulk_reprocess.serve(name="served", limit=1)
"""


def test_what_a_killed_run_held_is_taken_over_once_it_has_ended(operators, machine_lost_before_the_rest):
    """SIGKILL of a run's process: the worker reports it Crashed, and the next run takes
    its claims at once (not after the hour-long lease). Then a worker and its run killed
    together, as when a machine is lost (done before this module's other tests: see the
    fixture): the heartbeat automation marks the run Crashed, and again the next run
    takes over."""
    ops = operators
    ops.prefect("deploy", "--all")
    ops.start(str(BIN / "prefect"), "worker", "start", "--pool", "bulkops", "--limit", "1", name="worker")

    def busy_elsewhere(lib) -> int:
        with lib.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Video).where(
                Video.status == "processing", Video.processing_by.is_(None))).scalar_one()

    def next_run_takes_over(lib, run_id: str, others: int) -> None:
        proc, doc = run_cli(lib, "reprocess", "--creator", "creator-001", "--all", "--json",
                            env_extra={"PREFECT_API_URL": ops.api})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (doc.get("not_selected") or {}).get("busy", 0) == others, "only other pipelines' videos are busy"
        assert held_by(lib, run_id) == 0

    others = busy_elsewhere(ops.lib)
    run_id = ops.create_run("bulk-reprocess/bulk-reprocess", PARAMETERS)
    ops.wait_working(run_id)
    for pid in run_processes(run_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert held_by(ops.lib, run_id) > 0, "the killed run left claims behind"
    assert ops.wait_final(run_id, timeout=120)["type"] == "CRASHED"
    next_run_takes_over(ops.lib, run_id, others)

    lost = machine_lost_before_the_rest
    lost_ops, run_id = lost["ops"], lost["run_id"]
    state = lost_ops.wait_final(run_id, timeout=240)  # last heartbeat + 90 s + the trigger's evaluation
    assert state["type"] == "CRASHED" and "heartbeat" in (state.get("message") or ""), state
    next_run_takes_over(lost_ops.lib, run_id, busy_elsewhere(lost_ops.lib))


