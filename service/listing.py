"""A creator's operations, newest first, read from Prefect: the bulkops flows' runs that
carry the creator's tag (``flows.creator_tag``), each as its status document.

    page = list_operations(creator_id="creator-001", status="failed", limit=20)
    page = list_operations(creator_id="creator-001", cursor=page["next_cursor"])

Pages are cut by the runs' expected start time (keyset, not offsets), so runs created
while someone pages through never repeat or shift an item. The cursor is opaque.
Past the oldest run Prefect still has, the list goes on with the runs cleanup pruned,
from their records (``videolib/records.py``'s index; ``tasks/history.py``).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from flows import FLOW_OPERATIONS, creator_tag
from service.status import build_status, state_status
from tasks.history import artifacts_of
from videolib.ids import RequestError

STATES = {  # status -> the Prefect state types it comes from (Crashed is failed)
    "pending": ["SCHEDULED", "PENDING", "RUNNING"],  # Running "AwaitingConcurrencySlot" is pending
    "in_progress": ["RUNNING", "CANCELLING", "PAUSED"],
    "completed": ["COMPLETED"],
    "partial": ["COMPLETED"],
    "failed": ["FAILED", "CRASHED"],
    "cancelled": ["CANCELLED"],
}
OPERATIONS = sorted(set(FLOW_OPERATIONS.values()))
MAX_LIMIT = 100
_PAGE = 200  # Prefect's own most per filter call


def check_listing(*, status: str | None, operation: str | None, limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise RequestError("bad_limit", f"`limit` must be a whole number from 1 to {MAX_LIMIT}; got {str(limit)[:40]!r}")
    if status is not None and status not in STATES:
        raise RequestError("bad_filter", f"`status` must be one of {', '.join(STATES)}; got {status[:40]!r}")
    if operation is not None and operation not in OPERATIONS:
        raise RequestError("bad_filter", f"`operation` must be one of {', '.join(OPERATIONS)}; "
                                         f"got {operation[:40]!r}")
    return limit


def _encode(before: str, seen: list[str]) -> str:
    return base64.urlsafe_b64encode(json.dumps({"b": before, "s": seen}).encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[str, set[str]]:
    """``(before, seen)`` of a page in Prefect's runs; ``("", {entry})`` of a page in the
    index of pruned runs."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if set(data) == {"a"} and isinstance(data["a"], str) and len(data["a"]) <= 200:
            return "", {data["a"]}
        before, seen = data["b"], data["s"]
        datetime.fromisoformat(before)
        if not isinstance(seen, list) or not all(isinstance(i, str) for i in seen) or len(seen) > _PAGE:
            raise ValueError
        return before, set(seen)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise RequestError("bad_cursor", "`cursor` is not one this API gave: pass `next_cursor` as it came") from None


def list_operations(*, creator_id: str | None, status: str | None = None, operation: str | None = None,
                    limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
    """``{"items": [status documents], "next_cursor": str | None}``, newest first."""
    from prefect import get_client
    from prefect.client.schemas.objects import FlowRun

    limit = check_listing(status=status, operation=operation, limit=limit)
    before, seen = _decode(cursor) if cursor else (None, set())
    if before == "":  # the page goes on in the index of pruned runs
        return _archived(creator_id, status, operation, limit, after=next(iter(seen)))
    flows = [name for name, op in FLOW_OPERATIONS.items() if operation in (None, op)]
    runs_filter: dict[str, Any] = {}
    if creator_id is not None:
        runs_filter["tags"] = {"all_": [creator_tag(creator_id)]}
    if status is not None:
        runs_filter["state"] = {"type": {"any_": STATES[status]}}
    items: list[dict[str, Any]] = []
    with get_client(sync_client=True) as client:
        names = {flow["id"]: flow["name"] for flow in client.request(
            "POST", "/flows/filter", json={"flows": {"name": {"any_": flows}}, "limit": _PAGE}).json()}
        while len(items) <= limit:  # one more than asked: whether there is a next page
            window = dict(runs_filter)
            if before is not None:
                window["expected_start_time"] = {"before_": before}  # inclusive: `seen` drops the ties
            # Completed and partial share a state type, and so do pending and in progress
            # (the name tells them apart): read
            # wider windows for those; otherwise exactly what the page still needs.
            # (plus the ties at the window's edge that were listed already, which come back)
            size = _PAGE if status in ("completed", "partial", "pending") else min(_PAGE, limit + 1 - len(items) + len(seen))
            batch = FlowRun.model_validate_list(client.request("POST", "/flow_runs/filter", json={
                "flows": {"name": {"any_": flows}}, "flow_runs": window, "sort": "EXPECTED_START_TIME_DESC",
                "limit": size}).json())
            fresh = [run for run in batch if str(run.id) not in seen]
            kept = [run for run in fresh if status is None or _state_status(run) == status]
            items.extend(_documents(client, kept[: limit + 1 - len(items)], names))
            if len(batch) < size or not fresh:
                break
            last = _when(fresh[-1])
            seen = ({i for i in seen if before == last} | {str(run.id) for run in fresh if _when(run) == last})
            before = last
    if len(items) <= limit:  # Prefect's runs are all listed: older ones were pruned to records
        more = _archived(creator_id, status, operation, limit - len(items))
        for document in more["items"]:
            document["_expected"] = ""
        items.extend(more["items"])
        if more["next_cursor"] is not None:
            for document in items:
                document.pop("_expected", None)
            return {"items": items, "next_cursor": more["next_cursor"]}
    page = items[:limit]
    next_cursor = None
    if len(items) > limit:
        when = page[-1]["_expected"]
        next_cursor = _encode(when, [d["operation_id"] for d in page if d["_expected"] == when])
    for document in page:
        document.pop("_expected", None)
    return {"items": page, "next_cursor": next_cursor}


def _archived(creator_id: str | None, status: str | None, operation: str | None, limit: int,
              after: str | None = None) -> dict[str, Any]:
    """A page of the operations cleanup pruned from Prefect, from their records."""
    from service.environment import ready_store
    from service.status import status_from_record
    from videolib.records import list_index

    if status in ("pending", "in_progress"):
        return {"items": [], "next_cursor": None}
    entries = list_index(ready_store(), creator_id, status=status, operation=operation, after=after, limit=limit + 1)
    items = [document for document in (status_from_record(operation_id) for _, operation_id in entries[:limit])
             if document is not None]
    if len(entries) <= limit:
        return {"items": items, "next_cursor": None}
    last = entries[limit - 1][0] if limit > 0 else (after or "")  # (limit 0: whether there is more)
    return {"items": items, "next_cursor": base64.urlsafe_b64encode(json.dumps({"a": last}).encode()).decode().rstrip("=")}


def _when(run) -> str:
    return (run.expected_start_time or run.created).isoformat()


def _state_status(run) -> str:
    return state_status(run.state.type.value, run.state.name) if run.state else "pending"


def _documents(client, runs, names) -> list[dict[str, Any]]:
    """The runs' status documents, in their order, with all their artifacts read in a
    few calls (not one per run)."""
    if not runs:
        return []
    artifacts = artifacts_of(client, [str(run.id) for run in runs])
    documents = []
    for run in runs:
        document = build_status(run, FLOW_OPERATIONS[names[str(run.flow_id)]], artifacts[str(run.id)])
        document["_expected"] = _when(run)
        documents.append(document)
    return documents
