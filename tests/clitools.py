"""Running the `bulkops` command as a user does, for the CLI tests: a real process with a
test library's settings, its exit status and its one JSON document."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from videolib.db.models import Video, VideoChunk

BULKOPS = str(Path(sys.executable).parent / "bulkops")


def run_cli(lib, *args, prefect=None, env_extra=None, timeout=300, check_json=True):
    env = dict(os.environ)
    env.update(lib.env())
    env.pop("PREFECT_API_URL", None)
    if prefect is not None:
        env["PREFECT_API_URL"] = prefect.api_url
    env.update(env_extra or {})
    proc = subprocess.run([BULKOPS, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    doc = None
    if "--json" in args and check_json:
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"--json must print exactly one document, got: {proc.stdout!r} / {proc.stderr[-2000:]}"
        doc = json.loads(lines[0])
    return proc, doc


def kill_after_first_batch(args, env) -> None:
    """Run `bulkops ARGS` and SIGKILL it once its first batch has finished: mid-run,
    with batches in flight (the plain progress lines on stderr say when)."""
    proc = subprocess.Popen([BULKOPS, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if " 1/" in line and "batches" in line or not line:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def counts(lib):
    with lib.engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(Video)).scalar_one(),
                conn.execute(select(func.count()).select_from(VideoChunk)).scalar_one())


def held_by(lib, operation_id: str) -> int:
    """Videos an operation holds claimed (``processing`` under its id)."""
    with lib.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Video)
                            .where(Video.processing_by == operation_id)).scalar_one()


# ----------------------------------------------------------------------------- no prefect


def ids_file(tmp_path, lines, name="ids.txt"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def create_deployment_run(api_url: str, deployment: str, parameters: dict) -> str:
    """A run of ``deployment`` (``flow/name``) created through Prefect's REST API, as the
    UI's Run button does; its id."""
    import requests

    def call(method: str, path: str, **kwargs):
        # A loaded server answers 503 for a moment (its database busy): retried, as
        # Prefect's own client retries 502/503 (PREFECT_CLIENT_MAX_RETRIES).
        for attempt in range(6):
            answer = requests.request(method, f"{api_url}{path}", timeout=30, **kwargs)
            if answer.status_code not in (502, 503):
                break
            time.sleep(1 + attempt)
        return answer

    found = call("GET", f"/deployments/name/{deployment}")
    assert found.status_code == 200, found.text
    created = call("POST", f"/deployments/{found.json()['id']}/create_flow_run", json={"parameters": parameters})
    assert created.status_code in (200, 201), created.text
    return created.json()["id"]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until ``url`` answers 200 (a server ``process`` starting; its ``log`` on failure)."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
