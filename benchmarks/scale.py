"""Past one machine: the same delete and export in-process, on one pool worker, and split
over two workers, on PostgreSQL + the S3 endpoint with a PostgreSQL-backed Prefect server.

Everything runs on loopback as `tests/e2e/test_several_workers.py` starts it: PostgreSQL
(the library and, in a database of its own, the Prefect server's), SeaweedFS for S3,
`prefect server` (access log on: its requests are counted), the `bulkops` process work
pool with `prefect deploy --all`, and two `prefect worker` processes with `--limit 1`,
each with a working directory, a Prefect home and a data directory of its own.

Variants, each on a creator of its own with the same number of videos (a delete takes
the whole creator; the exports all read the first):

  (i) in-process   `service.launch.run()` in this process (the CLI's way), batches on the
                   flow's thread pool, against the same Prefect server
  (w) one worker   `service.launch.submit()` (the API's and `--no-wait`'s way): the run is
                   created for the deployment and one worker's flow-run process runs it
  (s) split 2      `--split 2`: the parent runs here, its two `bulk-share` children run one
                   on each worker; progress and results summed by the parent

Printed per variant: time and videos/s (from the request to the final state), the
pickup (run created -> running) inside it, CPU seconds per process group (this process,
each worker with its flow-run processes, the Prefect server, PostgreSQL, SeaweedFS),
the peak RSS of each process that ran batches, and the Prefect server's HTTP requests
(access log lines; events go over a websocket and are not counted) per batch, with the
workers' idle polling subtracted. Ratios: s/w (the split's cost over one worker; target
<= 1.10 at 100k) and w/i (a worker's cost over a run in this process).

    python benchmarks/scale.py                     # 100k videos per variant (~25 min here)
    python benchmarks/scale.py --videos 20000 --only delete
    python benchmarks/scale.py --smoke             # tiny, for tests/e2e/test_benchmarks.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    REPO,
    SEED,
    console,
    failures,
    human_count,
    load_servers_module,
    machine_info,
    machine_line,
    note,
    point_settings_at,
    reset_caches,
    results_table,
    tree_cpu_seconds,
    write_json,
)

BIN = Path(sys.executable).parent
VARIANTS = {"i": "in-process", "w": "one worker", "s": "split over two"}
TARGET_SPLIT = 1.10  # s/w: the split costs at most 10 % over one worker
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
ACCESS = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)')
UUID_PART = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Measurement:
    operation: str
    variant: str
    videos: int
    seconds: float = 0.0
    pickup_s: float = 0.0  # run created -> running (worker variants; the shares' for split)
    batches: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)  # process that ran batches -> bytes
    requests: int = 0
    requests_net: float = 0.0  # minus the workers' idle polling over the same time
    endpoints: Counter = field(default_factory=Counter)
    workers: list[str] = field(default_factory=list)
    verified: bool = False
    verify_detail: str = ""

    @property
    def label(self) -> str:
        return VARIANTS[self.variant]

    @property
    def rate(self) -> float:
        return self.videos / self.seconds if self.seconds else 0.0


class Stack:
    """PostgreSQL, SeaweedFS, the Prefect server on PostgreSQL, the pool, two workers."""

    def __init__(self, work: Path, query_seconds: float):
        self.work = work
        self.servers = load_servers_module()
        self.query_seconds = query_seconds
        self.workers: dict[str, subprocess.Popen] = {}
        note("starting PostgreSQL and SeaweedFS ...")
        self.pg = self.servers.start_postgres(work / "pg")
        self.s3 = self.servers.start_s3(work / "seaweedfs")
        os.environ["AWS_ACCESS_KEY_ID"] = self.s3.key
        os.environ["AWS_SECRET_ACCESS_KEY"] = self.s3.secret
        prefect_db = self.pg.create_database("prefect_scale")
        (work / "server").mkdir()
        note("starting prefect server on PostgreSQL ...")
        self.server = self.servers.start_prefect_server(
            work / "server", PREFECT_SERVER_LOGGING_LEVEL="INFO",
            PREFECT_SERVER_DATABASE_CONNECTION_URL=prefect_db.replace("postgresql+psycopg://", "postgresql+asyncpg://"))
        self.api = self.server.api_url
        self.database_url = self.pg.create_database("library")
        self.storage_url = f"s3://{self.s3.bucket}/scale"
        self.settings = {
            "BULKOPS_DATABASE_URL": self.database_url, "BULKOPS_STORAGE_URL": self.storage_url,
            "BULKOPS_S3_ENDPOINT_URL": self.s3.endpoint_url, "AWS_ACCESS_KEY_ID": self.s3.key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret, "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
            "BULKOPS_PROJECT_DIR": str(REPO), "BULKOPS_EMBEDDER": "hashing",
        }

    def env(self, machine: str) -> dict[str, str]:
        home = self.work / machine
        home.mkdir(exist_ok=True)
        return {**os.environ, **self.settings, "PREFECT_HOME": str(home / "prefect-home"),
                "BULKOPS_DATA_DIR": str(home / "data")}

    def prefect(self, *args: str) -> None:
        proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=REPO, env=self.env("operator"),
                              text=True, capture_output=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    def start_workers(self) -> None:
        note("creating the bulkops pool, deploying prefect.yaml, starting two workers ...")
        self.prefect("work-pool", "create", "bulkops", "--type", "process", "--overwrite")
        self.prefect("deploy", "--all")
        for name in ("worker-a", "worker-b"):
            env = {**self.env(name), "PREFECT_WORKER_QUERY_SECONDS": f"{self.query_seconds:g}"}
            self.workers[name] = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "bulkops", "--name", name, "--limit", "1"],
                cwd=self.work / name, env=env, stdout=(self.work / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def use_here(self) -> None:
        """This process is the operator's machine: the same library, the same server."""
        os.environ.update({k: v for k, v in self.settings.items() if k.startswith(("PREFECT_API", "BULKOPS_"))})
        point_settings_at(self.database_url, self.storage_url, self.work / "operator" / "data", self.s3.endpoint_url)

    def pg_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pg.base_dir / "data" / "postmaster.pid").read_text().split()[0])
        return None

    def groups(self) -> dict[str, list[int]]:
        """Process groups whose CPU is counted (each with its descendants)."""
        groups = {"this process": [], "prefect server": [self.server.process.pid],
                  "postgresql": [p for p in [self.pg_pid()] if p], "seaweedfs": [self.s3.process.pid]}
        groups.update({name: [proc.pid] for name, proc in self.workers.items()})
        return groups

    def cpu(self) -> dict[str, float]:
        t = os.times()
        out = {name: tree_cpu_seconds(pids) for name, pids in self.groups().items() if pids}
        out["this process"] = t.user + t.system
        return out

    def access_lines(self) -> list[str]:
        with (self.server.home / "server.log").open(errors="replace") as fh:
            return [line for line in fh if '"' in line and "HTTP/1.1" in line]

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.servers.stop_prefect_server(self.server)
        with contextlib.suppress(Exception):
            self.s3.stop()
        with contextlib.suppress(Exception):
            self.pg.stop()


class PeakMemory:
    """Samples the peak RSS (VmHWM) of every process under the workers, and of this
    process, while a variant runs."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.peaks: dict[int, tuple[str, int]] = {}
        self.before: set[int] = set()  # processes that ran before the variant (not its own)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _hwm(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    @staticmethod
    def _cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def _sample(self, *, first: bool = False) -> None:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
        for name, proc in self.stack.workers.items():
            stack = list(children.get(proc.pid, []))
            while stack:  # the worker's flow-run processes (and what they start)
                pid = stack.pop()
                stack.extend(children.get(pid, []))
                if first:
                    self.before.add(pid)
                    continue
                hwm = self._hwm(pid)
                if pid not in self.before and hwm and "python" in self._cmdline(pid):
                    self.peaks[pid] = (f"{name} flow run", max(hwm, self.peaks.get(pid, ("", 0))[1]))
        hwm = self._hwm(os.getpid())
        if hwm:
            self.peaks[os.getpid()] = ("this process", hwm)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self) -> PeakMemory:
        with contextlib.suppress(OSError):  # this process's peak starts from now
            Path("/proc/self/clear_refs").write_text("5")
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sample()
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def by_process(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for label, peak in self.peaks.values():
            out[label] = max(out.get(label, 0), peak)
        return out


# --------------------------------------------------------------------------- the library


def seed(stack: Stack, creators: int, videos: int, chunks: int) -> dict[str, int]:
    """``creators`` x ``videos`` videos (their files and thumbnails on the S3 endpoint);
    the videos each creator got (the seed spreads them at random: about ``videos`` each)."""
    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade
    from videolib.seed import seed_library
    from videolib.storage import ObjectStore

    engine = create_db_engine(stack.database_url)
    upgrade(engine)
    store = ObjectStore.from_url(stack.storage_url, endpoint_url=stack.s3.endpoint_url)
    started, last = time.monotonic(), [time.monotonic()]

    def progress(_n: int) -> None:
        if time.monotonic() - last[0] > 20:
            last[0] = time.monotonic()
            note(f"  seeding ... {time.monotonic() - started:.0f} s")

    report = seed_library(engine, store, None, videos=creators * videos, creators=creators, seed=SEED,
                          chunks_per_video=chunks, transcript_ratio=1.0, status="ready", on_progress=progress)
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    note(f"seeded {report.videos:,} videos, {report.chunks:,} chunks, {report.objects:,} objects "
         f"in {time.monotonic() - started:.0f} s")
    return dict(report.creators)


def library_counts(stack: Stack, creator: str, sample: list[str] | None = None) -> tuple[int, int, int]:
    """Rows and chunks of one creator, and which of the ``sample`` object keys exist
    (a HEAD each; a listing of a creator SeaweedFS just emptied walks every folder left)."""
    from sqlalchemy import func, select

    from videolib.db.engine import create_db_engine
    from videolib.db.models import Video, VideoChunk
    from videolib.storage import ObjectStore

    engine = create_db_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(Video).where(Video.creator_id == creator)).scalar()
            chunks = conn.execute(select(func.count()).select_from(VideoChunk).join(Video, Video.id == VideoChunk.video_id)
                                  .where(Video.creator_id == creator)).scalar()
    finally:
        engine.dispose()
    store = ObjectStore.from_url(stack.storage_url, endpoint_url=stack.s3.endpoint_url)
    # A HEAD per key: the store's own read-back lists neighbouring folders, which SeaweedFS
    # answers by walking every folder a delete just emptied (minutes after 100k deletes).
    return int(rows or 0), int(chunks or 0), sum(1 for size in store.sizes(sample or []).values() if size is not None)


def object_sample(stack: Stack, creator: str, size: int = 500) -> list[str]:
    """``size`` random object keys (files and thumbnails) of one creator's videos."""
    import random

    from sqlalchemy import select

    from videolib.db.engine import create_db_engine
    from videolib.db.models import Video

    engine = create_db_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            keys = [k for row in conn.execute(select(Video.storage_key, Video.thumbnail_key)
                                              .where(Video.creator_id == creator)) for k in row if k]
    finally:
        engine.dispose()
    return random.Random(SEED).sample(keys, min(size, len(keys)))


def vacuum(stack: Stack) -> None:
    """Between variants: what one delete left dead is not the next one's cost."""
    import psycopg

    with psycopg.connect(host=stack.pg.host, port=stack.pg.port, user=stack.pg.user, dbname="library",
                         autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


# --------------------------------------------------------------------------- the variants


def request_for(operation: str, creator: str, split: int | None, batch_size: dict[str, int]):
    from service.requests import DeleteRequest, ExportRequest

    sized = {"batch_size": batch_size[operation]} if operation in batch_size else {}
    if operation == "delete":
        return DeleteRequest.build(creator_id=creator, all_videos=True, split=split, **sized)
    return ExportRequest.build(creator_id=creator, all_videos=True, format="parquet", split=split, **sized)


def flow_run(stack: Stack, run_id: str) -> dict:
    import requests

    return requests.get(f"{stack.api}/flow_runs/{run_id}", timeout=30).json()


def share_runs(stack: Stack, parent: str) -> list[dict]:
    import requests

    body = {"flow_runs": {"tags": {"all_": [f"share-of:{parent}"]}}, "limit": 50}
    return requests.post(f"{stack.api}/flow_runs/filter", json=body, timeout=30).json()


def batches_of(operation_id: str) -> int:
    """The batch count the run's progress artifact shows."""
    from prefect import get_client

    from tasks.history import artifacts_of, progress_of

    with get_client(sync_client=True) as client:
        progress = progress_of(artifacts_of(client, [operation_id])[operation_id])
    return int((progress or {}).get("batches") or 0)


def pickup_seconds(run: dict) -> float:
    from datetime import datetime

    created, started = run.get("created"), run.get("start_time")
    if not created or not started:
        return 0.0
    return (datetime.fromisoformat(started) - datetime.fromisoformat(created)).total_seconds()


def run_variant(stack: Stack, operation: str, variant: str, creator: str, videos: int,
                idle_rps: float, batch_size: dict[str, int]) -> Measurement:
    from service import launch
    from service.status import read_status

    m = Measurement(operation, variant, videos)
    sample = object_sample(stack, creator) if operation == "delete" else []
    if sample:  # the sample means something only if it was there before
        from videolib.storage import ObjectStore

        sizes = ObjectStore.from_url(stack.storage_url, endpoint_url=stack.s3.endpoint_url).sizes(sample)
        if None in sizes.values():
            raise RuntimeError(f"sampled objects missing before the delete: {sum(v is None for v in sizes.values())}")
    request = request_for(operation, creator, 2 if variant == "s" else None, batch_size)
    reset_caches()
    lines_before = len(stack.access_lines())
    cpu_before = stack.cpu()
    with PeakMemory(stack) as memory:
        started = time.monotonic()
        polls = 0  # this benchmark's own requests, not counted as the variant's
        if variant == "w":
            operation_id = launch.submit(request)["operation_id"]
            while (run := flow_run(stack, operation_id))["state"]["type"] not in FINAL:
                polls += 1
                time.sleep(0.25)
            polls += 1
            m.seconds = time.monotonic() - started
            lines = stack.access_lines()[lines_before:]
            document = (read_status(operation_id) or {}).get("result") or {}
        else:
            document = launch.run(request)
            m.seconds = time.monotonic() - started
            lines = stack.access_lines()[lines_before:]
            operation_id = document.get("operation_id")
            run = flow_run(stack, operation_id) if operation_id else {}
    cpu_after = stack.cpu()
    m.cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    m.peak_rss = memory.by_process()
    m.endpoints = Counter(f"{match[1]} {UUID_PART.sub('/{id}', match[2])}"
                          for line in lines if (match := ACCESS.search(line)))
    if polls:
        m.endpoints["GET /api/flow_runs/{id}"] -= polls
    m.requests = len(lines) - polls
    m.requests_net = max(0.0, m.requests - idle_rps * m.seconds)
    m.batches = batches_of(operation_id) if operation_id else 0
    if variant == "w":
        m.pickup_s = pickup_seconds(run)
        m.workers = [run.get("labels", {}).get("prefect.worker.name", "?")]
        m.peak_rss.pop("this process", None)
    elif variant == "s":
        shares = share_runs(stack, operation_id)
        m.pickup_s = max((pickup_seconds(r) for r in shares), default=0.0)
        m.workers = sorted(r.get("labels", {}).get("prefect.worker.name", "?") for r in shares)
    verify(stack, m, document, creator, sample)
    return m


def verify(stack: Stack, m: Measurement, document: dict, creator: str, sample: list[str]) -> None:
    problems = []
    if document.get("status") != "completed" or document.get("succeeded") != m.videos:
        problems.append(f"status {document.get('status')}, succeeded {document.get('succeeded')}/{m.videos}")
    if m.operation == "delete":
        rows, chunks, objects = library_counts(stack, creator, sample)
        if rows or chunks or objects or not sample:
            problems.append(f"left: {rows} rows, {chunks} chunks, {objects} of {len(sample)} sampled objects")
    else:
        import pyarrow.parquet as pq

        from videolib.storage import ObjectStore

        output = document.get("output") or {}
        store = ObjectStore.from_url(stack.storage_url, endpoint_url=stack.s3.endpoint_url)
        try:
            with store.open(output["path"], "rb") as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - said, not raised: the variant fails to verify
            rows = None
            problems.append(f"export file unreadable: {exc!r}")
        if rows is not None and rows != m.videos:
            problems.append(f"export has {rows} rows, not {m.videos}")
    if m.variant == "s" and len(set(m.workers)) != 2:
        problems.append(f"shares ran on {m.workers}, not one on each worker")
    m.verified = not problems
    m.verify_detail = "; ".join(problems) or f"completed, {m.videos:,} videos"


def idle_requests_per_second(stack: Stack, seconds: float = 10.0) -> float:
    """The Prefect requests two idle workers make (their polling), per second."""
    before = len(stack.access_lines())
    time.sleep(seconds)
    return (len(stack.access_lines()) - before) / seconds


# --------------------------------------------------------------------------- report


def print_report(machine: dict, setup: dict, results: list[Measurement], idle_rps: float) -> list[dict]:
    console.print()
    console.rule("scale benchmark: in-process, one worker, split over two")
    console.print(machine_line(machine))
    console.print(f"library: PostgreSQL 15 + SeaweedFS on loopback, {setup['chunks']} chunks per video; "
                  f"Prefect server on PostgreSQL; two process-pool workers (--limit 1, polling every "
                  f"{setup['query_seconds']:g} s); seeded in {setup['seed_s']:.0f} s; idle polling "
                  f"{idle_rps:.2f} requests/s")
    groups = ["this process", "worker-a", "worker-b", "prefect server", "postgresql", "seaweedfs"]
    rows = []
    for m in results:
        cpu_total = sum(m.cpu.values())
        rss = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(m.peak_rss.items()))
        rows.append([m.operation, m.label, human_count(m.videos), f"{m.seconds:.2f}", f"{m.rate:,.0f}",
                     f"{m.pickup_s:.1f}", str(m.batches),
                     f"{cpu_total:.1f} = " + " + ".join(f"{m.cpu.get(g, 0.0):.1f}" for g in groups),
                     f"{cpu_total / m.seconds:.2f}" if m.seconds else "-", rss,
                     f"{m.requests} ({m.requests_net / m.batches:.1f}/batch)" if m.batches else str(m.requests),
                     "yes" if m.verified else f"NO: {m.verify_detail}"])
    console.print(results_table(
        "videos per second (higher is better); cpu s = " + " + ".join(groups),
        ["operation", "variant", "videos", "time s", "videos/s", "pickup s", "batches", "cpu s", "cores busy",
         "peak RSS", "prefect requests", "verified"], rows,
        left=("operation", "variant", "cpu s", "peak RSS", "prefect requests", "verified")))
    ratios = []
    for operation in ("delete", "export"):
        got = {m.variant: m for m in results if m.operation == operation}
        for name, (num, den) in {"s/w": ("s", "w"), "w/i": ("w", "i"), "s/i": ("s", "i")}.items():
            if num in got and den in got:
                value = got[den].rate / got[num].rate if got[num].rate else float("inf")  # time per video
                target = TARGET_SPLIT if name == "s/w" else None
                ratios.append({"operation": operation, "ratio": name, "value": value,
                               "target": f"<= {target:g}" if target else "(info)",
                               "met": None if target is None else value <= target})
    table = results_table("time per video ratios (s/w = split over two / one worker)",
                          ["operation", "ratio", "value", "target", "met"],
                          [[r["operation"], r["ratio"], f"{r['value']:.2f}", r["target"],
                            "-" if r["met"] is None else ("yes" if r["met"] else "NO")] for r in ratios],
                          left=("operation", "ratio", "target", "met"))
    console.print(table)
    for m in results:
        top = ", ".join(f"{k} x{v}" for k, v in m.endpoints.most_common(6))
        console.print(f"{m.operation} {m.label}: workers {m.workers or '-'}; requests: {top}")
    return ratios


# --------------------------------------------------------------------------- main


def import_library() -> None:
    """Import what this process runs now: the in-process variants then run the code that
    was there when the benchmark started, even if the sources change while it seeds."""
    import flows.bulk_delete  # noqa: F401
    import flows.bulk_export  # noqa: F401
    import flows.bulk_share  # noqa: F401
    import flows.split  # noqa: F401
    import service.launch  # noqa: F401
    import service.requests  # noqa: F401
    import service.status  # noqa: F401
    import tasks.delete  # noqa: F401
    import tasks.export  # noqa: F401
    import tasks.history  # noqa: F401
    import videolib.seed  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=100_000, help="videos per variant (default 100,000)")
    parser.add_argument("--chunks", type=int, default=2, help="transcript chunks per video (default 2)")
    parser.add_argument("--only", choices=("delete", "export"))
    parser.add_argument("--variants", default="iws", help=(
        "any of i (in-process), w (one worker), s (split 2), run in this order: the variants share one S3 "
        "endpoint, and SeaweedFS slows as the folders earlier deletes emptied pile up (compare 'iws' with 'swi')"))
    parser.add_argument("--query-seconds", type=float, default=2.0,
                        help="the workers' PREFECT_WORKER_QUERY_SECONDS (default 2; Prefect's own is 10)")
    parser.add_argument("--delete-batch", type=int, help="delete's batch size (default: as the flow plans it)")
    parser.add_argument("--export-batch", type=int, help="export's batch size (default: the flow's 20,000)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (300 videos a variant, batches of 50/100)")
    parser.add_argument("--work-dir", type=Path, help="keep the servers' files here (default: a temporary directory)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    variants = list(dict.fromkeys(args.variants))  # the order given
    if not variants or set(args.variants) - set("iws"):
        parser.error("--variants takes letters of 'iws'")
    if args.smoke:
        args.videos, args.chunks = 300, 1
        args.delete_batch, args.export_batch = args.delete_batch or 50, args.export_batch or 100
    if args.videos < 10:
        parser.error("--videos must be at least 10")
    operations = [op for op in ("export", "delete") if args.only in (None, op)]
    batch_size = {op: size for op, size in (("delete", args.delete_batch), ("export", args.export_batch)) if size}

    import tempfile

    # SIGTERM (a timeout, a kill) unwinds like Ctrl-C: the servers and workers stop with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.ExitStack() as cleanup:
        work = args.work_dir or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bulkops-scale-")))
        work.mkdir(parents=True, exist_ok=True)
        stack = Stack(work, args.query_seconds)
        cleanup.callback(stack.stop)
        stack.use_here()
        import_library()  # after: Prefect reads its settings (PREFECT_API_URL) when imported
        creators_needed = max(len(variants) if "delete" in operations else 1, 1)
        started = time.monotonic()
        counts = seed(stack, creators_needed, args.videos, args.chunks)
        seed_s = time.monotonic() - started
        stack.start_workers()
        machine = machine_info(postgresql="15", s3="SeaweedFS")
        idle = idle_requests_per_second(stack, 3.0 if args.smoke else 10.0)
        creators = sorted(counts)
        results: list[Measurement] = []
        warm = not args.smoke  # the smoke run checks that everything runs, not how fast
        for operation in operations:
            for index, variant in enumerate(variants):
                creator = creators[0] if operation == "export" else creators[index]
                if warm:  # one untimed run first: imports, the server's caches, a worker's first run
                    note("warm-up: an export on one worker, untimed ...")
                    run_variant(stack, "export", "w", creators[0], counts[creators[0]], 0.0, batch_size)
                    warm = False
                vacuum(stack)
                note(f"{operation} {VARIANTS[variant]} ({counts[creator]:,} videos of {creator}) ...")
                m = run_variant(stack, operation, variant, creator, counts[creator], idle, batch_size)
                note(f"  {m.seconds:.2f} s, {m.rate:,.0f} videos/s, verified: {m.verify_detail}")
                results.append(m)
        ratios = print_report(machine, {"chunks": args.chunks, "query_seconds": args.query_seconds,
                                        "seed_s": seed_s}, results, idle)
        write_json(args.json, {
            "benchmark": "scale", "machine": machine, "videos": args.videos, "chunks": args.chunks,
            "idle_requests_per_s": idle, "ratios": ratios,
            "results": [{**{k: v for k, v in m.__dict__.items() if k != "endpoints"},
                         "endpoints": dict(m.endpoints), "rate": m.rate} for m in results],
        })
        return 1 if failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
