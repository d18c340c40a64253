"""``GET /bulk/{id}/events``: Server-Sent Events of a run as it goes (a real run in this
process, slowed by a slower real delete), each ``data:`` a status document; the stream
ends with the result; ``Last-Event-ID`` resumes without repeating what was seen."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _read(api, operation_id: str, headers: dict) -> list[tuple[str | None, str, dict]]:
    events, current = [], {}
    with api.stream("GET", f"/bulk/{operation_id}/events", headers=headers) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if not line:
                if "event" in current:
                    events.append((current.get("id"), current["event"], json.loads(current["data"])))
                current = {}
                continue
            field, _, value = line.partition(": ")
            current[field] = value
    return events


def test_events_follow_a_run_to_its_result_and_resume(api, monkeypatch):
    import tasks.delete
    from flows.progress import add_progress_listener, remove_progress_listener
    from service.launch import run
    from service.requests import DeleteRequest

    api.lib.seed(120, creators=1, files=False)
    ids = api.lib.ids("creator-001")
    real = tasks.delete.delete_batch

    def slower(*args, **kwargs):  # a slower disk: ~3 s for the run
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.delete, "delete_batch", slower)
    created = threading.Event()
    started: dict[str, str] = {}

    def on_event(event):
        if event.phase == "created":
            started["id"] = event.operation_id
            created.set()

    add_progress_listener(on_event)
    worker = threading.Thread(target=run, args=(DeleteRequest.build(creator_id="creator-001", video_ids=ids,
                                                                    batch_size=1),))
    try:
        worker.start()
        assert created.wait(60)
        operation_id = started["id"]
        events = _read(api, operation_id, api.bearer())
    finally:
        worker.join(120)
        remove_progress_listener(on_event)
    names = [name for _id, name, _doc in events]
    assert names[-1] == "result" and names.count("result") == 1
    assert "progress" in names, names
    final = events[-1][2]
    assert final["status"] == "completed" and final["result"]["succeeded"] == len(ids)
    currents = [doc["progress"]["current"] for _id, _name, doc in events]
    assert currents == sorted(currents)
    event_ids = [eid for eid, _name, _doc in events]
    assert len(set(event_ids)) == len(event_ids), "no event is sent twice"
    # Resuming after the result: nothing more. Resuming mid-way: straight to the result.
    assert _read(api, operation_id, {**api.bearer(), "Last-Event-ID": event_ids[-1]}) == []
    resumed = _read(api, operation_id, {**api.bearer(), "Last-Event-ID": event_ids[0]})
    assert [name for _id, name, _doc in resumed] == ["result"]
    # Not the caller's, or unknown: 404 before any stream.
    assert api.get(f"/bulk/{operation_id}/events", headers=api.bearer("creator-002")).status_code == 404
    assert api.get("/bulk/0b0b0b0b-0000-4000-8000-000000000000/events", headers=api.bearer()).status_code == 404
