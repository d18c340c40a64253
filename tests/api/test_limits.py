"""The per-creator limit at the front doors, against the session's real Prefect server
(the test harness): over ``BULKOPS_MAX_RUNNING_PER_CREATOR`` a trigger is 429 with
``Retry-After`` and touches nothing, a retry of the same ``Idempotency-Key`` is refused
again (a refusal is not remembered), and the CLI exits 2 ``too_many_running``; the
creator's runs count however they were started, and only while they have not ended.
(The limit under twenty concurrent POSTs and after a SIGKILL: ``tests/e2e/test_serve.py``.)"""

from __future__ import annotations

import types
import uuid

import pytest
from sqlalchemy import update

from tests.clitools import run_cli
from videolib.db.models import Video

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def busy_creator(api, monkeypatch):
    """A creator of the test's own with 6 videos and two runs going (as the Prefect UI or
    another front door left them), the limit at 2; PREFECT_API_URL names the harness."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Pending, Running

    from config import get_settings
    from flows import FLOWS, creator_tag

    name = f"limit-{uuid.uuid4().hex[:10]}"
    api.lib.seed(6, creators=1, files=False)
    with api.lib.engine.begin() as conn:
        conn.execute(update(Video).values(creator_id=name))
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    monkeypatch.setenv("BULKOPS_MAX_RUNNING_PER_CREATOR", "2")
    get_settings.cache_clear()
    with get_client(sync_client=True) as client:
        runs = [client.create_flow_run(FLOWS[flow](), parameters={"creator_id": name}, tags=[creator_tag(name)],
                                       state=state)
                for flow, state in (("bulk-export", Running()), ("bulk-reprocess", Pending()))]
    return types.SimpleNamespace(name=name, runs=runs, api_url=PREFECT_API_URL.value())


def test_over_the_limit_a_trigger_is_429_with_retry_after_and_touches_nothing(api, busy_creator):
    creator = busy_creator.name
    before = api.lib.ids(creator)
    headers = {**api.bearer(creator), "Idempotency-Key": "limit-key-1"}
    for _ in range(2):  # the same key again: refused again, not an earlier answer
        answer = api.post("/bulk/delete", json={"video_ids": before[:2]}, headers=headers)
        assert answer.status_code == 429, answer.text
        body = answer.json()
        assert body["error"] == "too_many_running" and creator in body["message"]
        assert int(answer.headers["Retry-After"]) == body["retry_after"] and 5 <= body["retry_after"] <= 300
        assert sorted(body["running"]) == sorted(str(run.id) for run in busy_creator.runs)
    for route, body in (("/bulk/export", {"format": "csv"}), ("/bulk/reprocess", {"all": True})):
        assert api.post(route, json=body, headers=api.bearer(creator)).status_code == 429
    assert api.lib.ids(creator) == before
    # The backend's service token meets the same limit for that creator.
    service = api.post("/bulk/delete", json={"creator_id": creator, "video_ids": before[:1]},
                       headers=api.bearer("backend", service=True))
    assert service.status_code == 429
    # Another creator is not held back by this one's runs (here: no runner, 503).
    other = api.post("/bulk/delete", json={"video_ids": before[:1]}, headers=api.bearer(f"{creator}-x"))
    assert other.status_code == 503 and other.json()["error"] == "no_runner"


def test_once_a_run_ends_the_creator_gets_past_the_limit(api, busy_creator):
    from prefect import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(busy_creator.runs[1].id, Cancelled(), force=True)
    answer = api.post("/bulk/delete", json={"video_ids": api.lib.ids(busy_creator.name)[:1]},
                      headers=api.bearer(busy_creator.name))
    assert answer.status_code == 503 and answer.json()["error"] == "no_runner"  # past the count: no runner here


def test_the_cli_refuses_with_exit_2_too_many_running(api, busy_creator):
    creator = busy_creator.name
    ids = api.lib.ids(creator)
    prefect = types.SimpleNamespace(api_url=busy_creator.api_url)
    limit = {"BULKOPS_MAX_RUNNING_PER_CREATOR": "2"}
    for args in (["delete", "--creator", creator, "--ids", ids[0], "--json"],
                 ["export", "--creator", creator, "--format", "csv", "--json"],
                 ["reprocess", "--creator", creator, "--all", "--no-wait", "--json"]):
        proc, doc = run_cli(api.lib, *args, prefect=prefect, env_extra=limit)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert set(doc) == {"error", "message"} and doc["error"] == "too_many_running", doc
    proc, _ = run_cli(api.lib, "delete", "--creator", creator, "--ids", ids[0], prefect=prefect, env_extra=limit)
    assert proc.returncode == 2 and "BULKOPS_MAX_RUNNING_PER_CREATOR" in proc.stderr
    assert api.lib.ids(creator) == ids
