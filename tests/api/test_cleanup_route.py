"""``POST /bulk/cleanup`` in-process: a service token's, one at a time (409
``cleanup_running`` while one has not ended), refused before anything runs otherwise.
That it runs through `bulkops serve` is in tests/e2e/test_serve.py."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def api_url_env(monkeypatch):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())


def _running_cleanup() -> str:
    from prefect import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        flow_id = client.request("POST", "/flows/", json={"name": "cleanup"}).json()["id"]
        run_id = client.request("POST", "/flow_runs/", json={"flow_id": flow_id, "parameters": {}}).json()["id"]
        client.set_flow_run_state(uuid.UUID(run_id), Running(), force=True)
    return run_id


def _end(run_id: str) -> None:
    from prefect import get_client
    from prefect.states import Completed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(run_id), Completed(), force=True)


def test_cleanup_needs_a_service_token_and_a_valid_body(api, api_url_env):
    assert api.post("/bulk/cleanup").status_code == 401
    mine = api.post("/bulk/cleanup", json={}, headers=api.bearer("creator-001"))
    assert mine.status_code == 403 and mine.json()["error"] == "forbidden"
    for body, code in (({"dry_run": "maybe"}, "usage"), ({"creator_id": "creator-001"}, "usage"),
                       ({"batch_size": 0}, "usage"), ({"all": True}, "usage")):
        answer = api.post("/bulk/cleanup", json=body, headers=api.bearer("backend", service=True))
        assert answer.status_code == 422 and answer.json()["error"] == code, (body, answer.json())


def test_a_second_cleanup_is_409_and_nothing_to_run_it_is_503(api, api_url_env):
    service = api.bearer("backend", service=True)
    running = _running_cleanup()
    try:
        answer = api.post("/bulk/cleanup", json={"dry_run": True}, headers=service)
        assert answer.status_code == 409, answer.json()
        assert answer.json()["error"] == "cleanup_running" and running in answer.json()["message"]
    finally:
        _end(running)
    # Nothing serves the cleanup deployment on the harness's server: refused, nothing created.
    answer = api.post("/bulk/cleanup", headers=service)
    assert answer.status_code == 503 and answer.json()["error"] == "no_runner"
