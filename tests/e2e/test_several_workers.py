"""Past one machine, as a platform that outgrew one runs it: `prefect server` on
PostgreSQL, the `bulkops` process work pool, two `prefect worker` processes that each
have a working directory, a Prefect home and a bulkops data directory of their own
(their "machines"), and PostgreSQL + the S3 endpoint for the library. The deployments
from prefect.yaml run every operation; status, progress, cancel, retry and the HTTP API
work across the workers with no code change, and nothing an operation leaves behind
is on a worker's disk."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from sqlalchemy import func, select, update

from tests.clitools import BULKOPS, create_deployment_run, held_by, wait_healthy
from tests.e2e.test_cancel_worker import run_processes
from tests.conftest import Library
from tests.e2e import E2E
from tests.servers import free_port, start_prefect_server, stop_prefect_server
from videolib.db.models import Video

# One stack of servers for the whole module: its tests stay on one pytest process.
pytestmark = [pytest.mark.slow, E2E]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
SECRET = "several-workers-test-secret-0123456789abcdef"


class Cluster:
    """The Prefect server on PostgreSQL, the library, the pool and its workers."""

    def __init__(self, root: Path, pg_server, s3_server):
        self.root = root
        prefect_db = pg_server.create_database(f"prefect_{uuid.uuid4().hex[:12]}")
        (root / "server").mkdir()
        self.server = start_prefect_server(
            root / "server",
            PREFECT_SERVER_DATABASE_CONNECTION_URL=prefect_db.replace("postgresql+psycopg://", "postgresql+asyncpg://"))
        self.api = self.server.api_url
        self.lib = Library(pg_server.create_database(), f"s3://{s3_server.bucket}/cluster-{uuid.uuid4().hex[:10]}",
                           s3_server.endpoint_url, root / "operator" / "data")
        from videolib.db.migrate import upgrade

        upgrade(self.lib.engine)
        self.workers: dict[str, subprocess.Popen] = {}

    def env(self, machine: str) -> dict[str, str]:
        """The environment of one "machine": the shared settings, its own disk."""
        home = self.root / machine
        home.mkdir(exist_ok=True)
        return {**os.environ, **self.lib.env(), "PREFECT_API_URL": self.api,
                "PREFECT_HOME": str(home / "prefect-home"), "BULKOPS_DATA_DIR": str(home / "data"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "BULKOPS_PROJECT_DIR": str(ROOT),
                "BULKOPS_JWT_SECRET": SECRET, "PREFECT_LOGGING_LEVEL": "WARNING"}

    def prefect(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=self.env("operator"),
                              text=True, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def bulkops(self, *args: str, timeout: float = 300, env_extra: dict[str, str] | None = None
                ) -> tuple[subprocess.CompletedProcess, dict | None]:
        proc = subprocess.run([BULKOPS, *args], cwd=self.root / "operator", env={**self.env("operator"), **(env_extra or {})},
                              text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        return proc, (json.loads(lines[-1]) if "--json" in args and lines else None)

    def start_worker(self, name: str) -> None:
        env = {**self.env(name), "PREFECT_WORKER_QUERY_SECONDS": "2"}  # pick runs up within 2 s
        self.workers[name] = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "bulkops", "--name", name, "--limit", "1"],
            cwd=self.root / name, env=env, stdout=(self.root / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)

    def worker_log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def create_run(self, deployment: str, parameters: dict) -> str:
        return create_deployment_run(self.api, deployment, parameters)

    def run(self, run_id: str) -> dict:
        return requests.get(f"{self.api}/flow_runs/{run_id}", timeout=30).json()

    def wait_final(self, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["state"] and run["state"]["type"] in FINAL:
                return run
            time.sleep(0.5)
        logs = "\n".join(f"--- {name}\n{self.worker_log(name)}" for name in self.workers)
        raise AssertionError(f"run {run_id} not final after {timeout}s: {self.run(run_id)['state']}\n{logs}")

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stop_prefect_server(self.server)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_server, s3_server):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), pg_server, s3_server)
    try:
        cluster.prefect("work-pool", "create", "bulkops", "--type", "process", "--overwrite")
        cluster.prefect("deploy", "--all")
        cluster.start_worker("worker-a")
        cluster.start_worker("worker-b")
        yield cluster
    finally:
        cluster.stop()


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_every_operation_runs_on_the_pools_workers_and_leaves_nothing_on_their_disks(cluster):
    lib = cluster.lib
    lib.seed(60, creators=2, transcript_ratio=1.0)
    mine, theirs = lib.ids("creator-001"), lib.ids("creator-002")
    runs = {
        "reprocess": cluster.create_run("bulk-reprocess/bulk-reprocess",
                                        {"creator_id": "creator-001", "all_videos": True, "batch_size": 10}),
        "export": cluster.create_run("bulk-export/bulk-export", {"creator_id": "creator-002", "format": "parquet"}),
        "delete": cluster.create_run("bulk-delete/bulk-delete",
                                     {"creator_id": "creator-002", "video_ids": theirs[:5], "dry_run": False}),
    }
    ended = {name: cluster.wait_final(run_id) for name, run_id in runs.items()}
    for name, run in ended.items():
        assert run["state"]["type"] == "COMPLETED", (name, run["state"])
    workers = {name: run["labels"].get("prefect.worker.name") for name, run in ended.items()}
    assert set(workers.values()) == {"worker-a", "worker-b"}, workers  # limit 1 each: both took runs
    # Status, progress and results, read from a third machine.
    documents = {}
    for name, run_id in runs.items():
        proc, status = cluster.bulkops("status", run_id, "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert status["status"] == "completed" and status["operation"] == name, status
        assert status["progress"]["current"] == status["progress"]["total"] == status["result"]["requested"]
        documents[name] = status["result"]
    assert documents["reprocess"]["succeeded"] == documents["reprocess"]["requested"] > len(mine) // 2
    assert documents["delete"]["succeeded"] == 5 and documents["delete"]["verified"]["objects_absent"] > 0
    assert lib.ids("creator-002") == theirs[5:]
    # The export and the delete of the same creator ran side by side: before or after it.
    assert documents["export"]["output"]["rows"] in (len(theirs), len(theirs) - 5), documents["export"]
    link = documents["export"]["output"]["url"]
    table = pq.read_table(io.BytesIO(requests.get(link, timeout=60).content))
    assert table.num_rows == documents["export"]["output"]["rows"]
    # What the operations leave is in the shared storage; the workers' disks hold none of it.
    for worker in ("worker-a", "worker-b"):
        machine = cluster.root / worker
        assert _files_under(machine / "data") == [], _files_under(machine / "data")
        assert _files_under(machine / "prefect-home" / "storage") == []
        leftovers = [f for f in _files_under(machine) if not f.startswith("prefect-home/")]
        assert leftovers == [], leftovers


def test_cancel_retry_and_the_api_across_the_workers(cluster):
    lib = cluster.lib
    lib.seed(400, creators=1, seed=11, transcript_ratio=1.0, files=False)
    # Over HTTP: `bulkops serve --no-runner` hands the runs to the pool; its status is the workers'.
    port = free_port()
    log = cluster.root / "serve.txt"
    serve = subprocess.Popen([BULKOPS, "serve", "--port", str(port), "--no-runner"], cwd=cluster.root / "operator",
                             env=cluster.env("operator"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=log.open("w"), start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(f"{base}/healthz", serve, log)
        token = subprocess.run([BULKOPS, "token", "--creator", "creator-001"], env=cluster.env("operator"),
                               capture_output=True, text=True, check=True).stdout.strip()
        auth = {"Authorization": f"Bearer {token}"}
        # A slow reprocess (the real model), cancelled over HTTP while a worker runs it.
        answer = requests.post(f"{base}/bulk/reprocess", json={"all": True, "embedder": "minilm", "batch_size": 40},
                               headers=auth, timeout=60)
        assert answer.status_code == 202, answer.text
        slow = answer.json()["operation_id"]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = requests.get(f"{base}/bulk/status/{slow}", headers=auth, timeout=30).json()
            if status["status"] == "in_progress" and status["progress"]["current"] > 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no progress from the worker: {status}")
        cancelled = requests.post(f"{base}/bulk/{slow}/cancel", headers=auth, timeout=60)
        assert cancelled.status_code == 202, cancelled.text
        run = cluster.wait_final(slow, timeout=180)
        assert run["state"]["type"] == "CANCELLED", run["state"]
        status = requests.get(f"{base}/bulk/status/{slow}", headers=auth, timeout=30).json()
        assert status["status"] == "cancelled" and status["result"]["skipped"] > 0, status
        assert held_by(lib, slow) == 0, "the cancelled run let go of every video"
        # Retry reads the first run's report from the shared storage, whichever worker
        # wrote it: videos another pipeline held (busy), once that pipeline let them go.
        with lib.engine.connect() as conn:
            mine = [Video.creator_id == "creator-001"]
            busy = conn.execute(select(Video.id).where(*mine, Video.status == "processing",
                                                       Video.processing_by.is_(None))).scalars().all()
            free = conn.execute(select(Video.id).where(*mine, Video.status == "ready").limit(3)).scalars().all()
        assert busy, "the seed leaves some videos held by another pipeline"
        answer = requests.post(f"{base}/bulk/reprocess", json={"video_ids": busy + free}, headers=auth,
                               timeout=60)
        first = answer.json()["operation_id"]
        assert cluster.wait_final(first)["state"]["name"] == "Partial"
        with lib.engine.begin() as conn:
            conn.execute(update(Video).where(Video.id.in_(busy)).values(status="ready"))
        retried = requests.post(f"{base}/bulk/{first}/retry", headers=auth, timeout=60)
        assert retried.status_code == 202, retried.text
        again = retried.json()["operation_id"]
        assert cluster.wait_final(again)["state"]["type"] == "COMPLETED"
        status = requests.get(f"{base}/bulk/status/{again}", headers=auth, timeout=30).json()
        assert status["result"]["retry_of"] == first and status["result"]["succeeded"] == len(busy), status
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, log.read_text()[-3000:]


def _own_creator(lib, name: str, videos: int, seed: int) -> list[str]:
    """``videos`` seeded videos moved to creator ``name`` (the module's library is shared:
    a whole-library selection of its own must not take the other tests' videos)."""
    before = set(lib.ids("creator-001"))
    lib.seed(videos, creators=1, seed=seed, transcript_ratio=1.0, files=False)
    with lib.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id.in_(set(lib.ids("creator-001")) - before)).values(
            creator_id=name,  # and their keys (no files: files=False) into the creator's folder
            storage_key=func.replace(Video.storage_key, "videos/creator-001/", f"videos/{name}/"),
            thumbnail_key=func.replace(Video.thumbnail_key, "videos/creator-001/", f"videos/{name}/")))
    return lib.ids(name)


def _children(cluster: Cluster, parent: str) -> list[dict]:
    """The share runs a split operation started (tagged with their parent)."""
    answer = requests.post(f"{cluster.api}/flow_runs/filter", json={
        "flow_runs": {"tags": {"all_": [f"share-of:{parent}"]}}, "limit": 50}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _wait_children_final(cluster: Cluster, parent: str, count: int, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = _children(cluster, parent)
        if len(children) >= count and all(c["state"]["type"] in FINAL for c in children):
            return children
        time.sleep(1)
    raise AssertionError(f"the shares of {parent} did not end: {[c['state'] for c in _children(cluster, parent)]}")


def _wait_workers_idle(cluster: Cluster, timeout: float = 180) -> None:
    """Until no flow-run process of either worker is left (an earlier test's run is final
    in Prefect a moment before its process exits and the worker's slot is free), and the
    server counts both workers online and the pool ready (a worker busy killing a
    cancelled run, on a loaded machine, can miss heartbeats for long enough that the
    server marks it offline until its next one)."""
    homes = [f"PREFECT_HOME={cluster.root / name / 'prefect-home'}".encode() for name in cluster.workers]
    deadline = time.monotonic() + timeout
    while True:
        pool = requests.get(f"{cluster.api}/work_pools/bulkops", timeout=30).json()
        online = {w["name"] for w in requests.post(f"{cluster.api}/work_pools/bulkops/workers/filter", json={},
                                                   timeout=30).json() if w.get("status") == "ONLINE"}
        if pool.get("status") == "READY" and set(cluster.workers) <= online:
            break
        assert time.monotonic() < deadline, f"pool {pool.get('status')}, workers online {online}\n" + "\n".join(
            f"--- {name}\n{cluster.worker_log(name)}" for name in cluster.workers)
        time.sleep(1)
    while True:
        busy = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    environ = (entry / "environ").read_bytes()
                except OSError:
                    continue
                if b"PREFECT__FLOW_RUN_ID=" in environ and any(home in environ for home in homes):
                    busy.append(int(entry.name))
        if not busy:
            return
        assert time.monotonic() < deadline, f"flow-run processes still running on the workers: {busy}"
        time.sleep(0.5)


def test_one_operation_split_across_the_two_workers(cluster):
    """`--split 2` from a terminal (the parent runs in the CLI's process): two share runs,
    one on each worker (limit 1 each, and shares long enough that both poll), one result
    with every item counted once; then an export and a delete split the same way."""
    lib = cluster.lib
    creator = "creator-split"
    _own_creator(lib, creator, 160, seed=31)
    _wait_workers_idle(cluster)  # both free to take a share
    proc, doc = cluster.bulkops("reprocess", "--creator", creator, "--all", "--embedder", "minilm",
                                "--batch-size", "20", "--split", "2", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["status"] == "completed" and doc["succeeded"] == doc["requested"] > 100, doc
    children = _wait_children_final(cluster, doc["operation_id"], 2)
    assert sorted(c["state"]["type"] for c in children) == ["COMPLETED", "COMPLETED"]
    assert {c["labels"].get("prefect.worker.name") for c in children} == {"worker-a", "worker-b"}, \
        [c["labels"] for c in children]
    assert held_by(lib, doc["operation_id"]) == 0
    proc, status = cluster.bulkops("status", doc["operation_id"], "--json")
    assert status["progress"]["current"] == status["progress"]["total"] == doc["requested"]
    assert lib.store.list_keys(f"operations/{doc['operation_id']}/shares") == []  # the parent cleared them
    # An export in two shares: every row once, in order.
    with lib.engine.connect() as conn:
        expected = conn.execute(select(Video.id).where(Video.creator_id == creator,
                                                       Video.status.not_in(("deleting", "trashed")))
                                .order_by(Video.id)).scalars().all()
    proc, exported = cluster.bulkops("export", "--creator", creator, "--format", "parquet", "--batch-size", "100",
                                     "--split", "2", "--json")
    assert proc.returncode == 0 and exported["status"] == "completed", (exported, proc.stderr[-3000:])
    table = pq.read_table(io.BytesIO(requests.get(exported["output"]["url"], timeout=60).content))
    assert table.column("id").to_pylist() == expected
    assert len(_children(cluster, exported["operation_id"])) == 2
    # A delete in two shares, its ids from a file over BULKOPS_MAX_IDS (an id manifest in
    # S3, staged in PostgreSQL, each share reading its ranges): one audit manifest,
    # everything read back as gone.
    doomed = expected[:40]
    ids_file = cluster.root / "doomed.txt"
    ids_file.write_text("\n".join(doomed) + "\n")
    proc, deleted = cluster.bulkops("delete", "--creator", creator, "--ids-file", str(ids_file), "--batch-size", "5",
                                    "--split", "2", "--json", env_extra={"BULKOPS_MAX_IDS": "10"})
    assert proc.returncode == 0 and deleted["succeeded"] == 40, (deleted, proc.stderr[-3000:])
    assert deleted["manifest"]["lines"] == 40 and deleted["manifest"]["key"].startswith(f"manifests/{creator}/")
    assert deleted["verified"]["rows_absent"] == 40 and deleted["manifest_path"]
    assert not set(doomed) & set(lib.ids(creator))
    assert len(_children(cluster, deleted["operation_id"])) == 2


def test_a_share_killed_mid_run_is_run_again_and_the_operation_converges(cluster):
    """SIGKILL to the process group of one share's flow-run process while it embeds: the
    worker reports it Crashed, the parent starts its missing batches once more, and the
    operation ends completed with every video reprocessed once and nothing held."""
    lib = cluster.lib
    creator = "creator-kill"
    _own_creator(lib, creator, 100, seed=41)
    with lib.engine.connect() as conn:  # the other creators' videos, as they are before
        others = conn.execute(select(Video.id, Video.status, Video.updated_at, Video.embedding_model).where(
            Video.creator_id != creator).order_by(Video.id)).all()
    out, err = cluster.root / "killed-split.json", cluster.root / "killed-split.txt"
    parent = subprocess.Popen([BULKOPS, "reprocess", "--creator", creator, "--all", "--embedder", "minilm",
                               "--batch-size", "10", "--split", "2", "--json"], cwd=cluster.root / "operator",
                              env=cluster.env("operator"), stdout=out.open("w"), stderr=err.open("w"),
                              stdin=subprocess.DEVNULL)
    try:
        victim, operation = None, None
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline:
            assert parent.poll() is None, err.read_text()[-3000:]
            operation = operation or next((line.split()[1] for line in err.read_text().splitlines()
                                           if line.startswith("Operation ") and " started" in line), None)
            if operation and held_by(lib, operation):
                for child in _children(cluster, operation):
                    pids = run_processes(child["id"]) if child["state"]["type"] == "RUNNING" else []
                    if pids:
                        victim = child
                        group = os.getpgid(pids[0])
                        if group not in {os.getpgid(w.pid) for w in cluster.workers.values()}:
                            os.killpg(group, signal.SIGKILL)  # the flow-run process and its children
                        else:  # (a worker that keeps its runs in its own group: the run's processes)
                            for pid in pids:
                                os.kill(pid, signal.SIGKILL)
                        break
            time.sleep(0.3)
        assert victim is not None, f"no share ever ran\n{err.read_text()[-3000:]}"
        parent.wait(timeout=600)
    finally:
        if parent.poll() is None:
            parent.kill()
    doc = json.loads(out.read_text().strip().splitlines()[-1])
    assert parent.returncode == 0 and doc["status"] == "completed", doc
    assert doc["succeeded"] == doc["requested"] and doc["failed"] == 0
    crashed = cluster.wait_final(victim["id"])
    assert crashed["state"]["type"] in {"CRASHED", "FAILED"}, crashed["state"]
    children = _children(cluster, doc["operation_id"])
    assert len(children) == 3, [c["state"]["type"] for c in children]  # two shares, one of them again
    assert held_by(lib, doc["operation_id"]) == 0
    with lib.engine.connect() as conn:  # nothing held, and the other creator untouched
        assert conn.execute(select(func.count()).where(Video.processing_by.is_not(None))).scalar_one() == 0
        assert conn.execute(select(Video.id, Video.status, Video.updated_at, Video.embedding_model).where(
            Video.creator_id != creator).order_by(Video.id)).all() == others


def test_a_cancel_of_a_split_operation_reaches_every_share(cluster):
    """`bulkops cancel` of the parent while both shares embed: the stop flag stops every
    share's batches (in flight ones roll back whole), the shares end Cancelled, the parent
    ends cancelled with exact counts, nothing is held."""
    lib = cluster.lib
    _own_creator(lib, "creator-cancel", 200, seed=53)
    out, err = cluster.root / "cancelled-split.json", cluster.root / "cancelled-split.txt"
    parent = subprocess.Popen([BULKOPS, "reprocess", "--creator", "creator-cancel", "--all", "--embedder", "minilm",
                               "--batch-size", "10", "--split", "2", "--json"], cwd=cluster.root / "operator",
                              env=cluster.env("operator"), stdout=out.open("w"), stderr=err.open("w"),
                              stdin=subprocess.DEVNULL)
    try:
        operation, deadline = None, time.monotonic() + 240
        while time.monotonic() < deadline:
            assert parent.poll() is None, err.read_text()[-3000:]
            operation = operation or next((line.split()[1] for line in err.read_text().splitlines()
                                           if line.startswith("Operation ") and " started" in line), None)
            running = [c for c in _children(cluster, operation)] if operation else []
            if len(running) == 2 and all(c["state"]["type"] == "RUNNING" for c in running) and held_by(lib, operation):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"the shares never both ran\n{err.read_text()[-3000:]}")
        proc, answer = cluster.bulkops("cancel", operation, "--json")
        assert proc.returncode == 0 and answer["cancel_requested"] is True, (answer, proc.stderr[-2000:])
        parent.wait(timeout=180)
    finally:
        if parent.poll() is None:
            parent.kill()
    doc = json.loads(out.read_text().strip().splitlines()[-1])
    assert parent.returncode == 1 and doc["status"] == "cancelled", doc
    assert doc["skipped"] > 0 and doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"], doc
    children = _wait_children_final(cluster, operation, 2)
    assert {c["state"]["type"] for c in children} == {"CANCELLED"}, [c["state"] for c in children]
    assert held_by(lib, operation) == 0
