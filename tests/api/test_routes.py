"""The routes against a real Prefect server (the session's test harness) and a real
library: what each answers for the runs that exist, and every refusal a trigger can meet,
with the same codes the CLI gives (422, or 503 where the contract marks it). Runs are
executed in-process here (``service.launch.run``); `tests/e2e/test_serve.py` drives
them through `bulkops serve`'s runner."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def api_url_env(monkeypatch):
    """PREFECT_API_URL names the harness's server (as `serve` sets it): a trigger gets past
    the runner check to the deployment check."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())


def _run_delete(creator: str, ids: list[str]) -> dict:
    from service.launch import run
    from service.requests import DeleteRequest

    return run(DeleteRequest.build(creator_id=creator, video_ids=ids))


def test_status_is_the_owners_and_the_services_and_404_for_anyone_else(api):
    api.lib.seed(12, creators=2)
    document = _run_delete("creator-001", api.lib.ids("creator-001")[:2])
    path = f"/bulk/status/{document['operation_id']}"
    own = api.get(path, headers=api.bearer("creator-001"))
    assert own.status_code == 200
    body = own.json()
    assert body["status"] == "completed" and body["creator_id"] == "creator-001"
    assert body["result"]["succeeded"] == 2 and body["progress"]["percent"] == 100.0
    assert api.get(path, headers=api.bearer("backend", service=True)).json() == body
    other = api.get(path, headers=api.bearer("creator-002"))
    assert other.status_code == 404 and other.json()["error"] == "not_found"
    unknown = api.get("/bulk/status/0b0b0b0b-0000-4000-8000-000000000000", headers=api.bearer())
    assert unknown.status_code == 404 and unknown.json() == {**unknown.json(), "error": "not_found"}
    # Another creator cannot cancel it either, and cannot learn that it exists.
    assert api.post(f"/bulk/{document['operation_id']}/cancel", headers=api.bearer("creator-002")).status_code == 404


def test_cancel_of_a_finished_operation_is_409_with_its_status(api):
    api.lib.seed(6, creators=1)
    document = _run_delete("creator-001", api.lib.ids("creator-001")[:1] + ["not-an-id"])
    answer = api.post(f"/bulk/{document['operation_id']}/cancel", headers=api.bearer())
    assert answer.status_code == 409
    assert answer.json()["error"] == "already_finished" and answer.json()["status"] == "partial"


def test_a_trigger_with_nothing_to_execute_it_is_503_no_runner_and_starts_nothing(api, api_url_env):
    api.lib.seed(6, creators=1)
    before = api.lib.ids("creator-001")
    answer = api.post("/bulk/delete", json={"video_ids": before}, headers=api.bearer())
    assert answer.status_code == 503 and answer.json()["error"] == "no_runner"
    assert "prefect deploy" in answer.json()["message"] or "worker" in answer.json()["message"]
    assert api.lib.ids("creator-001") == before
    split = api.post("/bulk/delete", json={"video_ids": before, "split": 2}, headers=api.bearer())
    assert split.status_code == 503 and split.json()["error"] == "no_runner", split.text
    assert "--split 2" in split.json()["message"] and api.lib.ids("creator-001") == before


REFUSALS = [
    # (route, body, code): what the CLI refuses with exit 2, over HTTP
    ("/bulk/delete", {}, "bad_selection"),
    ("/bulk/delete", {"video_ids": ["a"], "all": True}, "bad_selection"),
    ("/bulk/delete", {"video_ids": []}, "empty_selection"),
    ("/bulk/reprocess", {}, "bad_selection"),
    ("/bulk/export", {"format": "xml"}, "unknown_format"),
    ("/bulk/export", {}, "unknown_format"),
    ("/bulk/export", {"format": "csv", "columns": ["id", "password"]}, "unknown_column"),
    ("/bulk/export", {"format": "csv", "columns": "id,title;DROP TABLE videos"}, "unknown_column"),
    ("/bulk/export", {"format": "csv", "status": "x' OR '1'='1"}, "bad_filter"),
    ("/bulk/export", {"format": "csv", "created_after": "yesterday"}, "bad_filter"),
    ("/bulk/export", {"format": "parquet", "created_after": "2026-02-01T00:00:00Z",
                      "created_before": "2026-01-01T00:00:00Z"}, "bad_filter"),
    ("/bulk/reprocess", {"all": True, "chunk_target": 0}, "bad_chunking"),
    ("/bulk/reprocess", {"all": True, "chunk_overlap": 500}, "bad_chunking"),
    ("/bulk/reprocess", {"all": True, "chunk_unit": "bytes"}, "bad_chunking"),
    ("/bulk/reprocess", {"all": True, "embedder": "gpt-9"}, "unknown_embedder"),
    ("/bulk/export", {"format": "csv", "status": "trashed"}, "bad_filter"),
    ("/bulk/restore", {}, "bad_selection"),
    ("/bulk/restore", {"all": True}, "bad_selection"),
    ("/bulk/restore", {"video_ids": ["a"], "operation": "8f0e9d2c-5b7a-4c1e-9f3d-2a6b8c4e1f70"}, "bad_selection"),
    ("/bulk/restore", {"operation": "x' OR '1'='1"}, "bad_selection"),
    ("/bulk/restore", {"operation": "8f0e9d2c-5b7a-4c1e-9f3d-2a6b8c4e1f70"}, "bad_selection"),  # no such delete
    ("/bulk/restore", {"video_ids": []}, "empty_selection"),
    ("/bulk/delete", {"all": True, "split": 0}, "usage"),
    ("/bulk/export", {"format": "csv", "split": 17}, "usage"),
    ("/bulk/reprocess", {"all": True, "split": "two"}, "usage"),
    ("/bulk/restore", {"video_ids": ["a"], "split": 2}, "usage"),  # a restore is not split
    ("/bulk/delete", {"manifest": "manifests/creator-002/ids.txt"}, "bad_manifest"),  # another creator's
    ("/bulk/delete", {"manifest": "manifests/creator-001/../creator-002/ids.txt"}, "bad_manifest"),
    ("/bulk/reprocess", {"manifest": "/etc/passwd"}, "bad_manifest"),
    ("/bulk/export", {"format": "csv", "manifest": "manifests/creator-001/x.txt' OR '1'='1"}, "bad_manifest"),
    ("/bulk/delete", {"manifest": "manifests/creator-001/none.txt"}, "manifest_not_found"),
    ("/bulk/delete", {"manifest": "manifests/creator-001/x.txt", "all": True}, "bad_selection"),
    ("/bulk/delete", {"manifest": "manifests/creator-001/x.txt", "video_ids": ["a"]}, "bad_selection"),
    ("/bulk/export", {"format": "csv", "manifest": "manifests/creator-001/x.txt", "status": "ready"}, "bad_selection"),
    ("/bulk/delete", {"manifest": ["manifests/creator-001/x.txt"]}, "usage"),
    ("/bulk/restore", {"manifest": "manifests/creator-001/x.txt"}, "usage"),  # a restore takes ids or operation
]


@pytest.mark.parametrize("route,body,code", REFUSALS)
def test_what_the_cli_refuses_is_422_with_the_same_code(api, api_url_env, route, body, code):
    api.lib.seed(6, creators=1)
    before = api.lib.ids("creator-001")
    answer = api.post(route, json=body, headers=api.bearer())
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == code, answer.json()
    assert answer.json()["message"]
    assert api.lib.ids("creator-001") == before


def test_a_restore_whose_window_has_closed_is_422_and_touches_nothing(api, api_url_env, monkeypatch):
    """Over HTTP as from the CLI: `operation` past its undo window is refused before a run;
    within it, a valid restore with nothing to execute it is 503 no_runner."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from config import get_settings
    from videolib.db.models import Video
    from videolib.trash import trash_batch

    monkeypatch.setenv("BULKOPS_DELETE_GRACE", "1h")
    get_settings.cache_clear()
    api.lib.seed(6, creators=1)
    mine = api.lib.ids("creator-001")
    delete_id = "3c9f1d7e-2a4b-4f6c-8e1d-5b7a9c0e2f41"
    trash_batch(api.lib.engine, creator_id="creator-001", video_ids=mine[:2], operation_id=delete_id)
    waiting = api.post("/bulk/restore", json={"operation": delete_id}, headers=api.bearer())
    assert waiting.status_code == 503 and waiting.json()["error"] == "no_runner", waiting.json()
    with api.lib.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id.in_(mine[:2])).values(
            trashed_at=datetime.now(UTC) - timedelta(hours=2)))
    closed = api.post("/bulk/restore", json={"operation": delete_id}, headers=api.bearer())
    assert closed.status_code == 422 and closed.json()["error"] == "window_closed", closed.json()
    theirs = api.post("/bulk/restore", json={"operation": delete_id}, headers=api.bearer("creator-002"))
    assert theirs.status_code == 422 and theirs.json()["error"] == "bad_selection"  # not another's to name
    assert api.lib.ids("creator-001") == mine[2:]


def test_too_many_ids_and_an_empty_library_are_refused(api, api_url_env, monkeypatch):
    from config import get_settings

    monkeypatch.setenv("BULKOPS_MAX_IDS", "5")
    get_settings.cache_clear()
    ids = [f"0b0b0b0b-0000-4000-8000-00000000000{i}" for i in range(6)]
    answer = api.post("/bulk/delete", json={"video_ids": ids}, headers=api.bearer())
    assert answer.status_code == 422 and answer.json()["error"] == "too_many_ids"
    empty = api.post("/bulk/delete", json={"all": True}, headers=api.bearer("creator-nobody"))
    assert empty.status_code == 422 and empty.json()["error"] == "empty_selection"
    export = api.post("/bulk/export", json={"format": "csv"}, headers=api.bearer("creator-nobody"))
    assert export.status_code == 422 and export.json()["error"] == "empty_selection"


def test_a_whole_library_delete_over_the_bound_needs_the_dry_runs_count(api, api_url_env, monkeypatch):
    from config import get_settings

    api.lib.seed(12, creators=1)
    monkeypatch.setenv("BULKOPS_CONFIRM_OVER", "5")
    get_settings.cache_clear()
    videos = len(api.lib.ids("creator-001"))
    answer = api.post("/bulk/delete", json={"all": True}, headers=api.bearer())
    assert answer.status_code == 422 and answer.json()["error"] == "confirmation_required"
    assert answer.json()["videos"] == videos
    wrong = api.post("/bulk/delete", json={"all": True, "confirm": videos - 1}, headers=api.bearer())
    assert wrong.status_code == 422 and wrong.json()["error"] == "confirmation_required"
    # The right count (or a dry run) passes the check and meets the next one: no runner here.
    for body in ({"all": True, "confirm": videos}, {"all": True, "dry_run": True}):
        answer = api.post("/bulk/delete", json=body, headers=api.bearer())
        assert answer.status_code == 503 and answer.json()["error"] == "no_runner", answer.json()
    assert len(api.lib.ids("creator-001")) == videos


def test_unreachable_dependencies_are_503_and_readyz_names_them(api, api_url_env, monkeypatch, tmp_path):
    from config import get_settings
    from tests.servers import free_port

    assert api.get("/readyz").json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok",
                                                                        "prefect": "ok"}}
    monkeypatch.setenv("BULKOPS_DATABASE_URL", f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    get_settings.cache_clear()
    answer = api.post("/bulk/delete", json={"all": True}, headers=api.bearer())
    assert answer.status_code == 503 and answer.json()["error"] == "database_unavailable"
    ready = api.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"] == "not_ready"
    assert ready.json()["checks"]["database"] != "ok" and ready.json()["checks"]["storage"] == "ok"
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("BULKOPS_DATABASE_URL", api.lib.database_url)
    monkeypatch.setenv("BULKOPS_STORAGE_URL", str(tmp_path / "a-file" / "storage"))
    get_settings.cache_clear()
    answer = api.post("/bulk/delete", json={"all": True}, headers=api.bearer())
    assert answer.status_code == 503 and answer.json()["error"] == "storage_unavailable"


def test_the_operations_list_is_the_callers_newest_first_filtered_and_paged(api):
    from service.launch import run
    from service.requests import DeleteRequest, ExportRequest

    api.lib.seed(20, creators=2)
    mine = api.lib.ids("creator-001")
    made = [
        run(DeleteRequest.build(creator_id="creator-001", video_ids=mine[:1] + ["junk"]))["operation_id"],  # partial
        run(ExportRequest.build(creator_id="creator-001", format="csv"))["operation_id"],
        run(DeleteRequest.build(creator_id="creator-001", video_ids=mine[1:3], dry_run=True))["operation_id"],
    ]
    theirs = run(ExportRequest.build(creator_id="creator-002", format="parquet"))["operation_id"]

    def listed(headers=None, **params):
        answer = api.get("/bulk/operations", params=params, headers=headers or api.bearer())
        assert answer.status_code == 200, answer.text
        return answer.json()

    def ours(page, among=made):  # (the session's harness keeps earlier tests' runs of creator-001)
        return [d["operation_id"] for d in page["items"] if d["operation_id"] in among]

    page = listed(limit=100)
    assert ours(page) == made[::-1] and page["items"][0]["operation_id"] == made[-1]
    assert all(d["creator_id"] == "creator-001" for d in page["items"])
    assert theirs not in {d["operation_id"] for d in page["items"]}
    assert ours(listed(status="partial", limit=100)) == [made[0]]
    assert ours(listed(status="completed", limit=100)) == [made[2], made[1]]
    assert ours(listed(operation="export", limit=100)) == [made[1]]
    assert all(d["status"] == "partial" for d in listed(status="partial", limit=100)["items"])
    assert all(d["operation"] == "export" for d in listed(operation="export", limit=100)["items"])
    def every_page(limit):  # the ids of every page, following the cursor
        ids, cursor = [], None
        while True:
            page = listed(limit=limit, **({"cursor": cursor} if cursor else {}))
            ids += [d["operation_id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return ids

    # one at a time, by the cursor: every run once, newest first (the harness may hold
    # over a hundred: compared with pages of 100)
    seen, everything = every_page(1), every_page(100)
    assert len(seen) == len(set(seen)) == len(everything) and seen == everything
    assert [i for i in seen if i in made] == made[::-1]
    # the other creator sees only theirs; the service names whose
    assert ours(listed(api.bearer("creator-002"), limit=100), [theirs]) == [theirs]
    assert all(d["creator_id"] == "creator-002" for d in listed(api.bearer("creator-002"), limit=100)["items"])
    service = api.bearer("backend", service=True)
    assert ours(listed(service, creator_id="creator-002", limit=100), [theirs]) == [theirs]
    for params, code, status in (({}, "creator_required", 422), ({"creator_id": "bad/creator"}, "invalid_creator", 422)):
        answer = api.get("/bulk/operations", params=params, headers=service)
        assert (answer.status_code, answer.json()["error"]) == (status, code)
    answer = api.get("/bulk/operations", params={"creator_id": "creator-002"}, headers=api.bearer())
    assert answer.status_code == 403
    for params, code in (({"limit": "0"}, "bad_limit"), ({"limit": "101"}, "bad_limit"), ({"limit": "ten"}, "bad_limit"),
                         ({"status": "done"}, "bad_filter"), ({"operation": "purge"}, "bad_filter"),
                         ({"cursor": "garbage"}, "bad_cursor"), ({"cursor": "eyJiIjogMX0"}, "bad_cursor")):
        answer = api.get("/bulk/operations", params=params, headers=api.bearer())
        assert (answer.status_code, answer.json()["error"]) == (422, code), (params, answer.text)
