#!/usr/bin/env python
"""The HTTP API against the same work done in-process, side by side, on one `bulkops serve`.

trigger   (a) POST /bulk/delete (a one-id dry run) over HTTP, against
          (b) the same ``service/`` calls in this process (``DeleteRequest.build`` +
          ``service.launch.submit``: the same checks, the same run created);
          target a/b <= 1.3
status    (a) GET /bulk/status/{id} over HTTP, against (b) ``service.status.read_status``
          in this process; target a/b <= 1.2 (the API's shared cache may make it faster)
pollers   50 clients, each polling the status of a running operation once a second for
          a minute: errors (target none) and p50/p99 latency
SSE       GET /bulk/{id}/events on a delete of many small batches: the delay from each
          progress write (the progress artifact's `updated` time in Prefect) to the event
          reaching the client; target p95 <= 1 s
CLI       `bulkops delete --ids ONE` with `serve` running (the CLI hands the run to serve,
          which runs it warm) against without it (a temporary server each time); target
          >= 4x faster

    python benchmarks/api.py              # ~3 min here
    python benchmarks/api.py --smoke      # ~1 min: fewer calls, 10 pollers for 10 s
    python benchmarks/api.py --json api.json
"""

from __future__ import annotations

import _common as common  # first: Prefect's settings before anything imports prefect
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import requests

SECRET = "benchmark-secret-for-bulkops-api-0123456789abcdef"
BULKOPS = str(Path(sys.executable).parent / "bulkops")
TARGETS = {"trigger": ("<=", 1.3), "status": ("<=", 1.2), "cli": (">=", 4.0), "sse_p95_s": ("<=", 1.0)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Serve:
    def __init__(self, root: Path, env: dict[str, str]):
        servers = common.load_servers_module()
        self.port, self.prefect_port = servers.free_port(), servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log = root / "serve.txt"
        self.process = subprocess.Popen(
            [BULKOPS, "serve", "--port", str(self.port), "--prefect-port", str(self.prefect_port), "--limit", "2"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
            start_new_session=True)
        deadline = time.monotonic() + 240
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not answer:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        self.prefect_api = f"http://127.0.0.1:{self.prefect_port}/api"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=120)


def token(env: dict[str, str], creator: str = common.CREATOR) -> str:
    return subprocess.run([BULKOPS, "token", "--creator", creator, "--ttl", "2h"], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def wait_final(session: requests.Session, url: str, operation_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            document = session.get(f"{url}/bulk/status/{operation_id}", timeout=60).json()
        except requests.Timeout:  # a busy 2-core machine (the test suite beside it): ask again
            common.note(f"status of {operation_id}: no answer in 60 s, asking again")
            continue
        if document["status"] in ("completed", "partial", "failed", "cancelled"):
            return document
        time.sleep(0.3)
    raise RuntimeError(f"{operation_id} did not end")


def measure_trigger(session, url: str, ids: list[str], calls: int) -> dict:
    from service.launch import submit
    from service.requests import DeleteRequest

    from service.control import cancel

    http, local = [], []
    for i in range(calls):
        one = [ids[i % len(ids)]]
        for variant in (("a", "b") if i % 2 == 0 else ("b", "a")):  # alternate who goes first
            began = time.perf_counter()
            if variant == "a":
                answer = session.post(f"{url}/bulk/delete", json={"video_ids": one, "dry_run": True}, timeout=60)
                assert answer.status_code == 202, answer.text
                http.append(time.perf_counter() - began)
                made = answer.json()["operation_id"]
            else:
                made = submit(DeleteRequest.build(creator_id=common.CREATOR, video_ids=one, dry_run=True))["operation_id"]
                local.append(time.perf_counter() - began)
            cancel(made, by="the benchmark")  # (untimed) the runner is not left with a queue of them
    return {"a_median_s": statistics.median(http), "b_median_s": statistics.median(local),
            "ratio": statistics.median(http) / statistics.median(local), "calls": calls,
            "a_max_s": max(http), "b_max_s": max(local)}


def wait_idle(session, url: str, timeout: float = 600) -> None:
    """Until no operation is pending or running (the runs the measurements queued)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [item for status in ("pending", "in_progress")
                for item in session.get(f"{url}/bulk/operations", params={"status": status, "limit": 1},
                                        timeout=30).json()["items"]]
        if not busy:
            return
        time.sleep(1)
    raise RuntimeError("operations still running")


def measure_status(session, url: str, operation_id: str, calls: int) -> dict:
    from service.status import read_status

    http, local = [], []
    for _ in range(calls):
        began = time.perf_counter()
        assert session.get(f"{url}/bulk/status/{operation_id}", timeout=30).status_code == 200
        http.append(time.perf_counter() - began)
        began = time.perf_counter()
        assert read_status(operation_id) is not None
        local.append(time.perf_counter() - began)
    return {"a_median_s": statistics.median(http), "b_median_s": statistics.median(local),
            "ratio": statistics.median(http) / statistics.median(local), "calls": calls}


def measure_pollers(url: str, bearer: str, operation_id: str, pollers: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def poll(offset: float) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {bearer}"
        time.sleep(offset)
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                answer = session.get(f"{url}/bulk/status/{operation_id}", timeout=30)
                ok = answer.status_code == 200
                detail = f"HTTP {answer.status_code}"
            except requests.RequestException as exc:
                ok, detail = False, type(exc).__name__
            took = time.perf_counter() - began
            with lock:
                (latencies.append(took) if ok else errors.append(detail))
            time.sleep(max(0.0, 1.0 - took))

    threads = [threading.Thread(target=poll, args=(i / pollers,)) for i in range(pollers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"pollers": pollers, "seconds": seconds, "requests": len(latencies) + len(errors), "errors": len(errors),
            "p50_s": percentile(latencies, 0.5) if latencies else None,
            "p99_s": percentile(latencies, 0.99) if latencies else None}


def measure_sse(url: str, bearer: str, prefect_api: str, operation_id: str) -> dict:
    """Delay from each progress write (the artifact's `updated`) to the event here."""
    delays: list[float] = []
    with requests.get(f"{url}/bulk/{operation_id}/events", headers={"Authorization": f"Bearer {bearer}"},
                      stream=True, timeout=300) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if not line.startswith("data: "):
                continue
            received = time.time()
            document = json.loads(line[len("data: "):])
            if document["status"] != "in_progress":
                if document.get("result") is not None:
                    break
                continue
            artifacts = requests.post(f"{prefect_api}/artifacts/filter", timeout=30, json={
                "artifacts": {"flow_run_id": {"any_": [operation_id]}, "type": {"any_": ["progress"]}},
                "limit": 1}).json()
            if not artifacts:
                continue
            written = artifacts[0]
            shown = json.loads((written.get("metadata_") or {}).get("bulkops_progress", "{}") or "{}")
            if shown.get("current") != document["progress"]["current"]:
                continue  # written again since: not this event's write
            updated = datetime.fromisoformat(written["updated"].replace("Z", "+00:00")).timestamp()
            delays.append(received - updated)
    return {"events": len(delays), "p50_s": percentile(delays, 0.5) if delays else None,
            "p95_s": percentile(delays, 0.95) if delays else None}


def cli_delete(env: dict[str, str], video_id: str) -> float:
    began = time.perf_counter()
    proc = subprocess.run([BULKOPS, "delete", "--creator", common.CREATOR, "--ids", video_id, "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"bulkops delete: {proc.stderr[-2000:]}")
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="fewer calls; 10 pollers for 10 s")
    parser.add_argument("--videos", type=int, default=3000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    calls, pollers, seconds, cli_runs = (6, 10, 10.0, 1) if args.smoke else (30, 50, 60.0, 3)
    machine = common.machine_info()
    common.note(common.machine_line(machine))
    with tempfile.TemporaryDirectory(prefix="bulkops-api-bench-") as tmp:
        root = Path(tmp)
        database = common.sqlite_url(root / "bulkops.db")
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(BULKOPS_DATABASE_URL=database, BULKOPS_STORAGE_URL=str(root / "storage"),
                   BULKOPS_DATA_DIR=str(root / "data"), BULKOPS_JWT_SECRET=SECRET, PREFECT_HOME=str(root / "home"))
        common.point_settings_at(database, str(root / "storage"), root / "data")
        os.environ.update({k: env[k] for k in ("BULKOPS_JWT_SECRET", "PREFECT_HOME")})
        subprocess.run([BULKOPS, "seed", "--videos", str(args.videos), "--creators", "1", "--no-files", "--json"],
                       env=env, check=True, capture_output=True)
        common.note(f"seeded {args.videos} videos; starting bulkops serve ...")
        serve = Serve(root, env)
        results: dict = {}
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # (prefect was imported already: its settings take the URL from here, not from os.environ)
        pointed = temporary_settings(updates={PREFECT_API_URL: serve.prefect_api})
        try:
            pointed.__enter__()
            os.environ["PREFECT_API_URL"] = serve.prefect_api
            bearer = token(env)
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {bearer}"
            from videolib.db.engine import get_engine
            from videolib.selection import iter_creator_video_ids

            ids = list(iter_creator_video_ids(get_engine(database), common.CREATOR))
            common.note(f"trigger: {calls} one-id dry runs each way ...")
            results["trigger"] = measure_trigger(session, serve.url, ids, calls)
            finished = session.post(f"{serve.url}/bulk/delete", json={"video_ids": ids[:1], "dry_run": True}).json()
            wait_final(session, serve.url, finished["operation_id"])
            common.note(f"status: {calls * 3} reads each way ...")
            results["status"] = measure_status(session, serve.url, finished["operation_id"], calls * 3)
            wait_idle(session, serve.url)
            # A long operation for the pollers and the events: a reprocess with the real
            # model (about 1.5 videos/s here), its progress moving inside batches.
            model_videos = max(10, int(seconds * 2))
            running = session.post(f"{serve.url}/bulk/reprocess", json={
                "video_ids": ids[-model_videos:], "embedder": "minilm", "batch_size": 10}, timeout=60).json()
            running = running["operation_id"]
            common.note(f"SSE on a reprocess of {model_videos} videos with minilm, and {pollers} pollers for "
                        f"{seconds:.0f} s ...")
            sse: dict = {}
            follower = threading.Thread(target=lambda: sse.update(measure_sse(serve.url, bearer, serve.prefect_api,
                                                                              running)))
            follower.start()
            results["pollers"] = measure_pollers(serve.url, bearer, running, pollers, seconds)
            follower.join(timeout=900)
            results["sse"] = sse
            wait_final(session, serve.url, running, timeout=900)
            wait_idle(session, serve.url)
            common.note(f"CLI: {cli_runs} one-id deletes with serve running ...")
            cli_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
            with_serve = [cli_delete(cli_env, ids[i]) for i in range(cli_runs)]
        finally:
            pointed.__exit__(None, None, None)
            serve.stop()
            os.environ.pop("PREFECT_API_URL", None)
        common.note(f"CLI: {cli_runs} one-id deletes without serve (a temporary Prefect server each) ...")
        without = [cli_delete(cli_env, ids[cli_runs + i]) for i in range(cli_runs)]
        results["cli"] = {"with_serve_s": statistics.median(with_serve), "without_s": statistics.median(without),
                          "ratio": statistics.median(without) / statistics.median(with_serve)}
    trigger, status, poll, sse, cli = (results[k] for k in ("trigger", "status", "pollers", "sse", "cli"))
    rows = [
        ["trigger a/b", f"{trigger['a_median_s'] * 1000:.0f} ms / {trigger['b_median_s'] * 1000:.0f} ms",
         f"{trigger['ratio']:.2f}", "<= 1.3", "yes" if trigger["ratio"] <= 1.3 else "NO"],
        ["status a/b", f"{status['a_median_s'] * 1000:.1f} ms / {status['b_median_s'] * 1000:.1f} ms",
         f"{status['ratio']:.2f}", "<= 1.2", "yes" if status["ratio"] <= 1.2 else "NO"],
        [f"{poll['pollers']} pollers, {poll['seconds']:.0f} s", f"{poll['requests']} requests, {poll['errors']} errors",
         f"p50 {poll['p50_s'] * 1000:.0f} ms, p99 {poll['p99_s'] * 1000:.0f} ms", "no errors",
         "yes" if poll["errors"] == 0 else "NO"],
        ["SSE delay", f"{sse.get('events', 0)} events", f"p50 {sse.get('p50_s') or 0:.2f} s, p95 "
                                                          f"{sse.get('p95_s') or 0:.2f} s", "p95 <= 1 s",
         "yes" if sse.get("p95_s") is not None and sse["p95_s"] <= 1.0 else "NO"],
        ["CLI one-id delete", f"{cli['without_s']:.1f} s without serve / {cli['with_serve_s']:.1f} s with",
         f"{cli['ratio']:.1f}x", ">= 4x", "yes" if cli["ratio"] >= 4 else "NO"],
    ]
    common.console.print(common.results_table("the HTTP API (bulkops serve) against in-process", [
        "measure", "values", "result", "target", "met"], rows, left=("measure", "values", "result", "target", "met")))
    common.write_json(args.json, {"machine": machine, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
