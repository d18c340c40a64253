"""The deployments as operators use them: `prefect deploy --all` from prefect.yaml, a process
worker, runs created from a deployment, and the forms' schemas on the server."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import requests

from tests.e2e import E2E

pytestmark = E2E

ROOT = Path(__file__).resolve().parents[2]


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
