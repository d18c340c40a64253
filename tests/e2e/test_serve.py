"""`bulkops serve` as the app's backend meets it: one command on loopback starts a real
Prefect server, the heartbeat automation, a runner and the API; operations are triggered
over HTTP and followed by polling; the CLI uses the same Prefect server while `serve`
runs; SIGTERM cancels what it runs softly, writes their results and exits 0, leaving no
process behind. Refusals before anything starts: no JWT secret, a port in use."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from tests.clitools import BULKOPS, held_by, wait_healthy
from tests.conftest import Library
from tests.e2e import E2E
from tests.servers import free_port
from videolib.db.models import Video

# One stack of servers for the whole module (`served`): its tests stay on one pytest process.
pytestmark = [pytest.mark.slow, E2E]

SECRET = "e2e-secret-for-bulkops-serve-0123456789abcdef"
FINAL = {"completed", "partial", "failed", "cancelled"}


WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _env(lib: Library, home: Path, **extra) -> dict[str, str]:
    env = dict(os.environ, **lib.env(), PREFECT_HOME=str(home), BULKOPS_JWT_SECRET=SECRET,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    env.pop("PREFECT_API_URL", None)
    return env


class Served:
    def __init__(self, lib: Library, home: Path, port: int, prefect_port: int, webhook_url: str | None,
                 **settings: str):
        self.lib, self.home, self.port, self.prefect_port = lib, home, port, prefect_port
        self.url = f"http://127.0.0.1:{port}"
        self.log = lib.data_dir / "serve-stderr.txt"
        lib.data_dir.mkdir(parents=True, exist_ok=True)
        if webhook_url:
            settings.update(BULKOPS_WEBHOOK_URL=webhook_url, BULKOPS_WEBHOOK_SECRET=WEBHOOK_SECRET)
        self.process = subprocess.Popen(
            [BULKOPS, "serve", "--port", str(port), "--prefect-port", str(prefect_port), "--limit", "2"],
            # the product's limit (the suite's default is higher), and the shortest
            # lease Prefect takes, for the SIGKILL test
            env=_env(lib, home, **{"BULKOPS_MAX_RUNNING_PER_CREATOR": "2", "BULKOPS_SLOT_LEASE": "60s", **settings}),
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"), stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 240
        while True:
            assert self.process.poll() is None, f"serve exited {self.process.returncode}:\n{self.stderr()}"
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"serve did not answer:\n{self.stderr()}"
            time.sleep(0.5)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def token(self, creator: str = "creator-001", service: bool = False) -> str:
        args = [BULKOPS, "token", "--creator", creator] + (["--service"] if service else [])
        proc = subprocess.run(args, env=_env(self.lib, self.home), capture_output=True, text=True, check=True)
        return proc.stdout.strip()

    def call(self, method: str, path: str, body: dict | None = None, creator: str = "creator-001"):
        return requests.request(method, f"{self.url}{path}", json=body, timeout=60,
                                headers={"Authorization": f"Bearer {self.token(creator)}"})

    def wait_final(self, operation_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        token = self.token("backend", service=True)  # reads any creator's operation
        while time.monotonic() < deadline:
            answer = requests.get(f"{self.url}/bulk/status/{operation_id}", timeout=30,
                                  headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            document = answer.json()
            if document["status"] in FINAL:
                return document
            time.sleep(0.5)
        raise AssertionError(f"{operation_id} not final after {timeout}s\n{self.stderr()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    lib = Library(database_url=f"sqlite:///{root / 'bulkops.db'}", storage_url=str(root / "storage"),
                  endpoint_url=None, data_dir=root / "data")
    from videolib.db.migrate import upgrade

    upgrade(lib.engine)
    lib.seed(240, creators=2, transcript_ratio=1.0)
    from tests.api.test_webhooks import Receiver

    receiver = Receiver(fail_first=2)  # the first operation's webhook fails twice
    server = Served(lib, root / "prefect-home", free_port(), free_port(), receiver.url)
    server.receiver = receiver
    yield server
    server.stop()
    receiver.close()


def test_serve_refuses_to_start_without_a_secret_or_on_a_used_port(tmp_path):
    lib = Library(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", storage_url=str(tmp_path / "storage"),
                  endpoint_url=None, data_dir=tmp_path / "data")
    env = _env(lib, tmp_path / "home")
    env.pop("BULKOPS_JWT_SECRET")
    proc = subprocess.run([BULKOPS, "serve", "--port", str(free_port())], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "BULKOPS_JWT_SECRET" in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args in (["--port", str(port)], ["--port", str(free_port()), "--prefect-port", str(port)]):
            proc = subprocess.run([BULKOPS, "serve", *args], env=_env(lib, tmp_path / "home"), capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 2, proc.stderr
            assert f"port {port}" in proc.stderr and "in use" in proc.stderr
    assert not (lib.data_dir / "serve.json").exists()


def test_operations_triggered_over_http_run_on_the_runner(served):
    ids = served.lib.ids("creator-001")
    # delete: two of the creator's videos, one malformed id, one of another creator's
    foreign = served.lib.ids("creator-002")[0]
    answer = served.call("POST", "/bulk/delete", {"video_ids": ids[:2] + ["junk", foreign]})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert answer.headers["Location"] == body["status_url"].replace("localhost", "127.0.0.1")
    assert body["status_url"].endswith(f"/bulk/status/{body['operation_id']}")
    done = served.wait_final(body["operation_id"])
    result = done["result"]
    assert (done["status"], result["succeeded"], result["failed"]) == ("partial", 2, 2)
    assert {e["error"] for e in result["errors"]} == {"invalid_id", "not_found"}
    assert foreign in served.lib.ids("creator-002"), "another creator's video is untouched"
    # export: CSV of the rest, with a download link
    answer = served.call("POST", "/bulk/export", {"format": "csv", "columns": ["id", "title"]})
    assert answer.status_code == 202, answer.text
    exported = served.wait_final(answer.json()["operation_id"])
    assert exported["status"] == "completed"
    assert exported["result"]["output"]["rows"] == len(ids) - 2 and exported["result"]["output"]["url"]
    # reprocess: the whole library of the second creator, by a service token
    answer = requests.post(f"{served.url}/bulk/reprocess", json={"creator_id": "creator-002", "all": True},
                           headers={"Authorization": f"Bearer {served.token('backend', service=True)}"}, timeout=60)
    assert answer.status_code == 202, answer.text
    reprocessed = served.wait_final(answer.json()["operation_id"])
    assert reprocessed["status"] == "completed" and reprocessed["creator_id"] == "creator-002"
    assert reprocessed["result"]["succeeded"] > 0
    # its owner sees it; the other creator does not
    assert served.call("GET", f"/bulk/status/{reprocessed['operation_id']}", creator="creator-002").status_code == 200
    assert served.call("GET", f"/bulk/status/{reprocessed['operation_id']}").status_code == 404


def test_cleanup_over_http_is_the_services_and_the_cli_hands_it_to_serve(served):
    service = {"Authorization": f"Bearer {served.token('backend', service=True)}"}
    assert served.call("POST", "/bulk/cleanup", {}).status_code == 403  # a creator's token
    answer = requests.post(f"{served.url}/bulk/cleanup", json={"dry_run": True}, headers=service, timeout=60)
    assert answer.status_code == 202, answer.text
    done = served.wait_final(answer.json()["operation_id"])
    assert done["status"] == "completed" and done["operation"] == "cleanup" and done["creator_id"] is None
    assert done["result"]["dry_run"] is True and set(done["result"]["cleanup"]) >= {"tombstones_finished", "runs_pruned"}
    # A creator cannot see it (it is nobody's); the run waited for no creator's slot.
    assert served.call("GET", f"/bulk/status/{done['operation_id']}").status_code == 404
    proc = subprocess.run([BULKOPS, "cleanup", "--json"], env=_env(served.lib, served.home), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(proc.stdout)
    assert "Running on bulkops serve" in proc.stderr or document["operation_id"] in proc.stderr
    assert document == served.wait_final(document["operation_id"])["result"]


def test_the_cli_uses_the_served_prefect_server(served):
    answer = served.call("POST", "/bulk/delete", {"video_ids": served.lib.ids("creator-001")[:1], "dry_run": True})
    operation_id = answer.json()["operation_id"]
    served.wait_final(operation_id)
    env = _env(served.lib, served.home)
    proc = subprocess.run([BULKOPS, "status", operation_id, "--json"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["operation_id"] == operation_id
    # and an operation the CLI runs itself shows up on the served server (its UI)
    one = served.lib.ids("creator-001")[:1]
    proc = subprocess.run([BULKOPS, "delete", "--creator", "creator-001", "--ids", one[0]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"127.0.0.1:{served.prefect_port}" in proc.stderr
    assert not (served.home / "bulkops-temporary-server.log").exists(), "no temporary server was started"


def _flow_run(served, operation_id: str) -> dict:
    return requests.get(f"http://127.0.0.1:{served.prefect_port}/api/flow_runs/{operation_id}", timeout=30).json()


def test_the_cli_hands_its_runs_to_serve_which_runs_them_warm(served, tmp_path):
    """With serve running on the same library, `bulkops delete` is executed in serve's
    process (no deployment, no runner process): the same result document, exit codes and
    refusals as a run of its own, and the run on serve's Prefect server with its tags."""
    env = _env(served.lib, served.home)
    assert oct((served.lib.data_dir / "serve.json").stat().st_mode & 0o777) == "0o600"
    ids = served.lib.ids("creator-001")[:2]
    proc = subprocess.run([BULKOPS, "delete", "--creator", "creator-001", "--ids", ids[0], "--ids", "junk", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # partial: one malformed id
    document = json.loads(proc.stdout)
    assert (document["status"], document["succeeded"], document["failed"]) == ("partial", 1, 1)
    assert document["errors"][0]["error"] == "invalid_id" and document["report_path"]
    assert ids[0] not in served.lib.ids("creator-001")
    run = _flow_run(served, document["operation_id"])
    assert run["deployment_id"] is None, "executed by serve itself, not by its runner"
    assert "creator:creator-001" in run["tags"]
    status = served.call("GET", f"/bulk/status/{document['operation_id']}").json()
    assert status["result"] == document
    # Human output: where it runs, the operation line, the summary.
    human = subprocess.run([BULKOPS, "delete", "--creator", "creator-001", "--ids", ids[1], "--dry-run"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and "Running on bulkops serve" in human.stderr and "Operation " in human.stderr
    # A refusal of serve's is the CLI's exit 2 with the same code.
    refused = subprocess.run([BULKOPS, "delete", "--creator", "creator-nobody", "--all", "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and json.loads(refused.stdout)["error"] == "empty_selection", refused.stdout
    # Another library (another database): not handed to serve; it runs here, on serve's Prefect server.
    other = Library(database_url=f"sqlite:///{tmp_path / 'other.db'}", storage_url=str(tmp_path / "storage"),
                    endpoint_url=None, data_dir=served.lib.data_dir)
    from videolib.db.migrate import upgrade

    upgrade(other.engine)
    other.seed(3, creators=1, files=False)
    mine = subprocess.run([BULKOPS, "delete", "--creator", "creator-001", "--ids", other.ids("creator-001")[0],
                           "--json"], env=_env(other, served.home), capture_output=True, text=True, timeout=180)
    assert mine.returncode == 0, mine.stderr
    assert _flow_run(served, json.loads(mine.stdout)["operation_id"])["deployment_id"] is None
    assert len(other.ids("creator-001")) == 2 and ids[1] in served.lib.ids("creator-001")


def test_ctrl_c_on_a_run_handed_to_serve_stops_it_softly(served):
    lib = served.lib
    env = _env(lib, served.home)
    log = lib.data_dir / "ctrl-c-stderr.txt"
    proc = subprocess.Popen([BULKOPS, "reprocess", "--creator", "creator-001", "--all", "--embedder", "minilm",
                             "--batch-size", "20", "--json"], env=env, stdout=subprocess.PIPE, stderr=log.open("w"),
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    operation_id = None
    while operation_id is None:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        for line in log.read_text().splitlines():
            if line.startswith("Operation ") and " started" in line:
                operation_id = line.split()[1]
        time.sleep(0.1)
    while not held_by(lib, operation_id):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, log.read_text()
    document = json.loads(out)
    assert document["operation_id"] == operation_id and document["status"] == "cancelled"
    assert document["requested"] == document["succeeded"] + document["failed"] + document["skipped"]
    assert held_by(lib, operation_id) == 0 and _flow_run(served, operation_id)["deployment_id"] is None
    # the heartbeat automation was created on the served server
    found = requests.post(f"http://127.0.0.1:{served.prefect_port}/api/automations/filter", json={}, timeout=30)
    assert "bulkops-crash-silent-runs" in {a["name"] for a in found.json()}


def test_repeated_posts_with_one_idempotency_key_start_one_run_and_events_follow_it(served):
    from concurrent.futures import ThreadPoolExecutor

    ids = served.lib.ids("creator-001")[-2:]
    headers = {"Authorization": f"Bearer {served.token()}", "Idempotency-Key": "nightly-2026-12-05"}
    body = {"video_ids": ids, "dry_run": True}

    def post(_):
        return requests.post(f"{served.url}/bulk/delete", json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(post, range(10)))
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    assert len({a.json()["operation_id"] for a in answers}) == 1
    first = answers[0].json()
    conflict = requests.post(f"{served.url}/bulk/delete", json={**body, "dry_run": False}, headers=headers,
                             timeout=60)
    assert conflict.status_code == 422 and conflict.json()["error"] == "idempotency_conflict"
    # Follow it over Server-Sent Events until its result.
    names, last = [], None
    with requests.get(first["events_url"], headers={"Authorization": headers["Authorization"]}, stream=True,
                      timeout=120) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                names.append(line[len("event: "):])
            elif line.startswith("data: "):
                last = json.loads(line[len("data: "):])
    assert names and names[-1] == "result", names
    assert last["operation_id"] == first["operation_id"] and last["result"]["dry_run"] is True
    # One run was made for the ten requests.
    listed = served.call("GET", "/bulk/operations?limit=100").json()["items"]
    assert sum(1 for item in listed if item["operation_id"] == first["operation_id"]) == 1
    assert sum(1 for item in listed if item["result"] and item["result"].get("dry_run")
               and item["result"]["requested"] == 2) == 1


def test_retry_over_http_and_from_the_cli_takes_the_retryable_failures_again(served):
    lib = served.lib
    with lib.engine.connect() as conn:
        busy = conn.execute(select(Video.id).where(Video.creator_id == "creator-001", Video.status == "processing",
                                                   Video.processing_by.is_(None))).scalars().all()
        free = conn.execute(select(Video.id).where(Video.creator_id == "creator-001",
                                                   Video.status == "ready")).scalars().all()
    assert busy, "the seed leaves some videos held by another pipeline"
    answer = served.call("POST", "/bulk/reprocess", {"video_ids": busy + free[:3]})
    first = served.wait_final(answer.json()["operation_id"])
    assert first["status"] == "partial" and "busy" in {e["error"] for e in first["result"]["errors"]}
    retried = served.call("POST", f"/bulk/{first['operation_id']}/retry")
    assert retried.status_code == 202, retried.text
    second = served.wait_final(retried.json()["operation_id"])
    assert second["result"]["retry_of"] == first["operation_id"]
    assert second["result"]["requested"] == len(busy)  # exactly the busy ones, not the three that succeeded
    # From the CLI (on serve's Prefect server), the same: still busy, so busy again.
    proc = subprocess.run([BULKOPS, "retry", second["operation_id"], "--json"], env=_env(lib, served.home),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    third = json.loads(proc.stdout)
    assert third["retry_of"] == second["operation_id"] and third["requested"] == len(busy)
    # Nothing to retry: a completed export over HTTP, and an unknown id from the CLI.
    export = served.call("POST", "/bulk/export", {"format": "parquet", "video_ids": free[:2]})
    done = served.wait_final(export.json()["operation_id"])
    refused = served.call("POST", f"/bulk/{done['operation_id']}/retry")
    assert refused.status_code == 409 and refused.json()["error"] == "nothing_to_retry"
    proc = subprocess.run([BULKOPS, "retry", "0b0b0b0b-0000-4000-8000-000000000000", "--json"],
                          env=_env(lib, served.home), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"] == "unknown_operation"
    # Another creator's operation is not even there for them.
    assert served.call("POST", f"/bulk/{first['operation_id']}/retry", creator="creator-002").status_code == 404


def test_every_finished_operation_is_posted_signed_and_a_failing_receiver_gets_it_later(served):
    """The first operation's webhook met a receiver that failed twice: serve's delivery
    loop sent it again (same webhook-id) until it took it; every other operation's came
    at once. Each verifies with the standardwebhooks package."""
    from standardwebhooks.webhooks import Webhook

    receiver = served.receiver
    listed = served.call("GET", "/bulk/operations?limit=100").json()["items"]
    listed += requests.get(f"{served.url}/bulk/operations?limit=100&creator_id=creator-002", timeout=60,
                           headers={"Authorization": f"Bearer {served.token('backend', service=True)}"}).json()["items"]
    finished = {item["operation_id"] for item in listed if item["status"] in FINAL}
    deadline = time.monotonic() + 120
    while True:
        first = receiver.received[0][1]["operation_id"] if receiver.received else None
        tries = [body["operation_id"] for _h, body in receiver.received]
        delivered = {op for op in tries if op != first or tries.count(first) > receiver.fail_first}
        if finished <= delivered or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert finished <= delivered, (finished - delivered, served.stderr())
    hook = Webhook(WEBHOOK_SECRET)
    for (headers, _body), raw in zip(receiver.received, receiver.raw):
        payload = hook.verify(raw, {k.lower(): v for k, v in headers.items()})
        assert headers["webhook-id"] == f"msg_{payload['operation_id']}"
    first = receiver.received[0][1]["operation_id"]
    assert [body["operation_id"] for _h, body in receiver.received].count(first) == 3
    # The first operation may be either creator's: read it as the backend. serve records
    # the delivery just after the receiver answered: wait for the record.
    token = served.token("backend", service=True)
    deadline = time.monotonic() + 60
    while True:
        answer = requests.get(f"{served.url}/bulk/status/{first}", timeout=60,
                              headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        status = answer.json()
        if status["webhook"]["delivered"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["webhook"] == {"attempts": 3, "last_status": 200, "delivered": True}
    assert status["status"] in FINAL


def test_twenty_concurrent_posts_for_one_creator_start_exactly_the_limit(served):
    from concurrent.futures import ThreadPoolExecutor

    headers = {"Authorization": f"Bearer {served.token('creator-002')}"}

    def post(_):  # long enough that none ends while the twenty are answered
        return requests.post(f"{served.url}/bulk/reprocess", json={"all": True, "embedder": "minilm",
                                                                    "batch_size": 20}, headers=headers, timeout=120)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 2 + [429] * 18, (codes, served.stderr())
    for answer in answers:
        if answer.status_code == 429:
            assert answer.json()["error"] == "too_many_running"
            assert 5 <= int(answer.headers["Retry-After"]) <= 300
    started = [a.json()["operation_id"] for a in answers if a.status_code == 202]
    for operation_id in started:
        assert requests.post(f"{served.url}/bulk/{operation_id}/cancel", headers=headers, timeout=60).status_code \
            in (202, 409)
    for operation_id in started:
        assert served.wait_final(operation_id)["status"] in FINAL
    # Both ended: the creator may start again at once.
    again = requests.post(f"{served.url}/bulk/delete", json={"all": True, "dry_run": True}, headers=headers,
                          timeout=120)
    assert again.status_code == 202, again.text
    served.wait_final(again.json()["operation_id"])


def _kill_run(operation_id: str) -> int:
    """SIGKILL every process of a run (its flow process and what it started)."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"PREFECT__FLOW_RUN_ID={operation_id}".encode() in (entry / "environ").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
            except OSError:
                continue
    return killed


def test_a_killed_run_does_not_lock_its_creator_out(served):
    """A run SIGKILLed while it holds its creator's slot: the runner marks it Crashed, so
    the count lets new operations in at once; the slot its lease still holds (60 s here,
    BULKOPS_SLOT_LEASE) makes one of the next two wait, saying so, until the Prefect server
    revokes the lease; then it runs. Nobody is locked out."""
    lib = served.lib
    answer = served.call("POST", "/bulk/reprocess", {"all": True, "embedder": "minilm", "batch_size": 20},
                         creator="creator-002")
    assert answer.status_code == 202, answer.text
    victim = answer.json()["operation_id"]
    deadline = time.monotonic() + 240
    while not held_by(lib, victim):
        assert time.monotonic() < deadline, served.stderr()
        time.sleep(0.2)
    assert _kill_run(victim) >= 1
    killed_at = time.monotonic()
    assert served.wait_final(victim, timeout=120)["status"] == "failed"  # Crashed
    limit = requests.get(f"http://127.0.0.1:{served.prefect_port}/api/v2/concurrency_limits/"
                         "bulkops-creator-creator-002", timeout=30).json()
    assert (limit["limit"], limit["active_slots"]) == (2, 1), limit  # the dead run's lease
    started = []
    for _ in range(2):  # each long enough to hold its slot while the other asks
        answer = served.call("POST", "/bulk/reprocess", {"all": True, "embedder": "minilm", "batch_size": 20},
                             creator="creator-002")
        assert answer.status_code == 202, answer.text
        started.append(answer.json()["operation_id"])
    # One of them waits for the dead run's slot, and its state says so.
    waiting = None
    deadline = time.monotonic() + 60
    while waiting is None and time.monotonic() < deadline:
        for operation_id in started:
            run = requests.get(f"http://127.0.0.1:{served.prefect_port}/api/flow_runs/{operation_id}",
                               timeout=30).json()
            if (run.get("state") or {}).get("name") == "AwaitingConcurrencySlot":
                waiting = operation_id
                assert "creator-002" in run["state"]["message"]
                assert served.call("GET", f"/bulk/status/{operation_id}", creator="creator-002").json()["status"] \
                    == "pending"
        time.sleep(0.5)
    assert waiting is not None, served.stderr()
    deadline = time.monotonic() + 180
    while not held_by(lib, waiting):  # it got the slot and works
        assert time.monotonic() < deadline, served.stderr()
        time.sleep(0.5)
    # The lease (60 s) and the server's check for expired ones (every 15 s) bound the wait.
    assert time.monotonic() - killed_at < 60 + 15 + 45
    for operation_id in started:
        served.call("POST", f"/bulk/{operation_id}/cancel", creator="creator-002")
    for operation_id in started:
        assert served.wait_final(operation_id, timeout=180)["status"] in FINAL


def test_no_request_the_schema_allows_gets_a_server_error(served):
    """Property-based (schemathesis strategies from /openapi.json, run by Hypothesis)
    with a valid token of a creator who has no videos: whatever the bodies, ids,
    cursors and headers, no route answers 5xx. (Driven here rather than through
    schemathesis' pytest plugin, whose fixture loader does not run under pytest 9.)"""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    headers = {"Authorization": f"Bearer {served.token('creator-fuzz')}"}
    checked, codes = [], []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def no_server_error(case):
            response = case.call(headers=headers, timeout=60)
            codes.append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.status_code,
                                                response.text[:500])

        no_server_error()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 10, checked
    assert len(codes) >= 5 * len(checked) and any(code < 300 for code in codes), sorted(set(codes))


def test_sigterm_cancels_the_runs_softly_and_leaves_nothing_running(served):
    """Last in this module: it stops the served process tree."""
    lib = served.lib
    answer = served.call("POST", "/bulk/reprocess", {"all": True, "embedder": "minilm", "batch_size": 20})
    assert answer.status_code == 202, answer.text
    operation_id = answer.json()["operation_id"]
    # and one the CLI handed to serve, running in serve's own process
    log = lib.data_dir / "handed-stderr.txt"
    cli = subprocess.Popen([BULKOPS, "reprocess", "--creator", "creator-002", "--all", "--embedder", "minilm",
                            "--batch-size", "20", "--json"], env=_env(lib, served.home), stdout=subprocess.DEVNULL,
                           stderr=log.open("w"), start_new_session=True)
    deadline = time.monotonic() + 240
    handed = None
    while handed is None or not held_by(lib, operation_id) or not held_by(lib, handed):
        assert time.monotonic() < deadline, (served.stderr(), log.read_text())
        handed = handed or next((line.split()[1] for line in log.read_text().splitlines()
                                 if line.startswith("Operation ") and " started" in line), None)
        time.sleep(0.2)
    assert served.stop() == 0, served.stderr()
    assert "cancelling" in served.stderr() and operation_id in served.stderr() and handed in served.stderr()
    cli.kill()
    cli.wait()
    assert held_by(lib, handed) == 0
    assert not (lib.data_dir / "serve.json").exists()
    assert held_by(lib, operation_id) == 0, "every claim was given back"
    with lib.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Video)
                            .where(Video.processing_by == operation_id)).scalar_one() == 0
    # Nothing of the tree is left: no Prefect server on its port, no runner, no run.
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{served.prefect_port}/api/health", timeout=5)
    leftovers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"PREFECT__FLOW_RUN_ID={operation_id}".encode() in (entry / "environ").read_bytes():
                    leftovers.append(entry.name)
            except OSError:
                continue
    assert leftovers == []
    # The result document was written: read back with the CLI (a temporary server on the
    # same Prefect database, now that serve is gone).
    proc = subprocess.run([BULKOPS, "status", operation_id, "--json"], env=_env(lib, served.home),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["status"] == "cancelled", status
    handed_status = subprocess.run([BULKOPS, "status", handed, "--json"], env=_env(lib, served.home),
                                   capture_output=True, text=True, timeout=180)
    assert json.loads(handed_status.stdout)["status"] == "cancelled", handed_status.stdout
    result = status["result"]
    assert result["requested"] == result["succeeded"] + result["failed"] + result["skipped"] and result["skipped"] > 0


def test_serve_without_a_runner_hands_the_runs_to_the_pools_workers(sqlite_library, prefect_server, tmp_path):
    """A separate Prefect server with a work pool, the deployments and a worker (the
    README's steps), and `bulkops serve --no-runner` on it: an operation triggered over
    HTTP is executed by the worker."""
    from tests.e2e.test_cancel_worker import BIN, Operators

    sqlite_library.seed(20, creators=1, files=False)
    ops = Operators(sqlite_library, prefect_server, tmp_path)
    ops.prefect("work-pool", "create", "bulkops", "--type", "process", "--overwrite")
    ops.prefect("deploy", "--all")
    ops.start(str(BIN / "prefect"), "worker", "start", "--pool", "bulkops", "--limit", "1", name="worker")
    port = free_port()
    env = {**ops.env, "BULKOPS_JWT_SECRET": SECRET}
    log = tmp_path / "serve.txt"
    serve = subprocess.Popen([BULKOPS, "serve", "--port", str(port), "--no-runner"], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", serve, log)
        token = subprocess.run([BULKOPS, "token", "--creator", "creator-001"], env=env, capture_output=True,
                               text=True, check=True).stdout.strip()
        ids = sqlite_library.ids("creator-001")[:3]
        answer = requests.post(f"http://127.0.0.1:{port}/bulk/delete", json={"video_ids": ids}, timeout=60,
                               headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 202, answer.text
        state = ops.wait_final(answer.json()["operation_id"], timeout=180)
        assert state["type"] == "COMPLETED", state
        assert not set(ids) & set(sqlite_library.ids("creator-001"))
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
        ops.stop()


def test_delete_and_restore_over_http_under_the_undo_window(tmp_path):
    """The app's backend takes a delete back: with `BULKOPS_DELETE_GRACE` on the server,
    `POST /bulk/delete` trashes (202, then `trashed` and `purge_after` in its status),
    `POST /bulk/restore` with that delete's id gives every video back (202, then
    completed); asked again, nothing is left to restore (422 `empty_selection`), and
    another creator cannot name that delete (422 `bad_selection`)."""
    lib = Library(database_url=f"sqlite:///{tmp_path / 'bulkops.db'}", storage_url=str(tmp_path / "storage"),
                  endpoint_url=None, data_dir=tmp_path / "data")
    from videolib.db.migrate import upgrade

    upgrade(lib.engine)
    lib.seed(12, creators=2)
    mine, theirs = lib.ids("creator-001"), lib.ids("creator-002")
    server = Served(lib, tmp_path / "prefect-home", free_port(), free_port(), None, BULKOPS_DELETE_GRACE="1h")
    try:
        answer = server.call("POST", "/bulk/delete", {"video_ids": mine[:3] + [theirs[0]]})
        assert answer.status_code == 202, answer.text
        deleted = server.wait_final(answer.json()["operation_id"])
        assert deleted["status"] == "partial", deleted  # the other creator's id is not_found
        assert deleted["result"]["trashed"] == 3 and deleted["result"]["purge_after"]
        assert lib.ids("creator-001") == mine[3:] and lib.ids("creator-002") == theirs
        with lib.engine.connect() as conn:
            keys = conn.execute(select(Video.storage_key).where(Video.id.in_(mine[:3]))).scalars().all()
        assert len(keys) == 3 and all(lib.store.exists(key) for key in keys), "nothing removed yet"
        answer = server.call("POST", "/bulk/restore", {"operation": deleted["operation_id"]})
        assert answer.status_code == 202, answer.text
        restored = server.wait_final(answer.json()["operation_id"])
        assert restored["operation"] == "restore" and restored["status"] == "completed", restored
        assert restored["result"]["succeeded"] == 3 and lib.ids("creator-001") == mine
        again = server.call("POST", "/bulk/restore", {"operation": deleted["operation_id"]})
        assert again.status_code == 422 and again.json()["error"] == "empty_selection", again.text
        foreign = server.call("POST", "/bulk/restore", {"operation": deleted["operation_id"]}, creator="creator-002")
        assert foreign.status_code == 422 and foreign.json()["error"] == "bad_selection", foreign.text
    finally:
        assert server.stop() == 0, server.stderr()
