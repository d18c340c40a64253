"""The scheduled cleanup as operators run it: `prefect deploy --all` from prefect.yaml on
a `prefect server` (its own here: a cron of every minute must not reach other tests'
libraries), a process worker of the bulkops pool, and a run the server's scheduler
created. It cleans the library the worker's settings name, and `bulkops status` reads
its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import update

from tests.e2e import E2E
from videolib.db.models import Video

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, E2E]


def test_a_scheduled_cleanup_runs_on_a_worker(sqlite_library, tmp_path):
    from tests.servers import start_prefect_server, stop_prefect_server

    lib = sqlite_library
    lib.seed(6, creators=1)
    doomed = lib.ids("creator-001")[0]
    with lib.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id == doomed).values(
            status="deleting", updated_at=datetime.now(UTC) - timedelta(hours=2)))
    lib.store.put("reports/0b0b0b0b-0000-4000-8000-000000000000.csv", b"video_id,error,detail\r\n")
    (tmp_path / "home").mkdir()
    server = start_prefect_server(tmp_path / "home", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, **lib.env(), PREFECT_API_URL=server.api_url, PREFECT_HOME=str(tmp_path / "home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", BULKOPS_PROJECT_DIR=str(ROOT),
               BULKOPS_CLEANUP_REPORT_RETENTION="0")

    def prefect(*args, timeout=180):
        proc = subprocess.run([str(bin_dir / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    try:
        prefect("work-pool", "create", "bulkops", "--type", "process", "--overwrite")
        prefect("deploy", "--all")
        deployment = requests.get(f"{server.api_url}/deployments/name/cleanup/cleanup", timeout=30).json()
        crons = [s["schedule"] for s in deployment["schedules"]]
        assert crons == [{**crons[0], "cron": "0 3 * * *", "timezone": "UTC"}], crons  # prefect.yaml's daily run
        # A run due within seconds (an every-minute cron waited for the minute's turn).
        prefect("deployment", "schedule", "create", "cleanup/cleanup", "--interval", "10", "--replace", "-y")
        due = _wait_for_a_due_run(server.api_url, deployment["id"])
        prefect("worker", "start", "--pool", "bulkops", "--run-once", timeout=300)
        proc = subprocess.run([str(bin_dir / "bulkops"), "status", due, "--json"], env=env, text=True,
                              capture_output=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        status = json.loads(proc.stdout)
        assert status["status"] == "completed" and status["operation"] == "cleanup", status
        counts = status["result"]["cleanup"]
        assert counts["tombstones_finished"] == 1 and counts["reports_expired"] == 1, counts
        assert doomed not in lib.ids("creator-001") and lib.store.list_keys("reports") == []
        run = requests.get(f"{server.api_url}/flow_runs/{due}", timeout=30).json()
        assert run["deployment_id"] == deployment["id"] and run["auto_scheduled"] is True, run
    finally:
        stop_prefect_server(server)


def _wait_for_a_due_run(api_url: str, deployment_id: str) -> str:
    """The first run the scheduler made for the deployment, once it is due (the worker's
    --run-once takes only runs due now)."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        runs = requests.post(f"{api_url}/flow_runs/filter", json={
            "deployments": {"id": {"any_": [deployment_id]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "EXPECTED_START_TIME_ASC", "limit": 1}, timeout=30).json()
        if runs:
            when = datetime.fromisoformat(runs[0]["expected_start_time"].replace("Z", "+00:00"))
            if when <= datetime.now(UTC) + timedelta(seconds=5):
                time.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()) + 1)
                return runs[0]["id"]
        time.sleep(2)
    raise AssertionError("the scheduler made no cleanup run within 150 s")
