"""An operation's status document (CONTRACT.md), read from its Prefect flow run: the
run's state, the progress artifact's counts and the result artifact's document, all
stored as JSON by the flow (``flows/progress.py``, ``flows/result.py``). No table of
our own holds status. Once Prefect no longer has the run (pruned), the record the
operation left in storage as it ended answers (``operations/{id}.json``).

The artifacts are read by ``tasks/history.py`` (which also reads their older, text form).
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import get_client
from prefect.client.schemas.objects import Artifact
from prefect.exceptions import ObjectNotFound

from flows import FLOW_OPERATIONS
from flows.slots import AWAITING
from tasks import webhook
from tasks.history import progress_of as _progress
from tasks.history import result_of as _result
from videolib.ids import RequestError
from videolib.operation import OperationResult, describe_not_selected

__all__ = ["FINAL", "build_status", "describe_not_selected", "read_status", "state_status", "status_of"]

FINAL = {"completed", "partial", "failed", "cancelled"}


def state_status(state_type: str, state_name: str | None) -> str:
    """The status of a run in a Prefect state; Crashed is ``failed``; a run waiting for
    its creator's slot is still ``pending``."""
    if state_type == "COMPLETED":
        return "partial" if state_name == "Partial" else "completed"
    if state_type in {"FAILED", "CRASHED"}:
        return "failed"
    if state_type == "CANCELLED":
        return "cancelled"
    if state_type == "RUNNING" and state_name == AWAITING:
        return "pending"  # started over its creator's limit, waiting for a slot (flows/slots.py)
    if state_type in {"RUNNING", "CANCELLING", "PAUSED"}:
        return "in_progress"
    return "pending"  # SCHEDULED, PENDING


def status_of(operation_id: str) -> dict[str, Any]:
    """The status document of an operation; ``unknown_operation`` when there is none."""
    try:
        uuid.UUID(operation_id)
    except (ValueError, AttributeError, TypeError):
        raise RequestError("unknown_operation",
                           f"{str(operation_id)[:80]!r} is not an operation id (a flow run UUID)") from None
    document = read_status(operation_id)
    if document is None:
        raise RequestError("unknown_operation", f"no bulkops operation with id {operation_id}")
    return document


def read_status(operation_id: str) -> dict[str, Any] | None:
    """The status document, or None when no bulkops operation has this id."""
    try:
        run_id = uuid.UUID(operation_id)
    except (ValueError, AttributeError, TypeError):
        return None
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return status_from_record(str(run_id))  # pruned from Prefect: its record in storage
        operation = FLOW_OPERATIONS.get(client.read_flow(run.flow_id).name)
        if operation is None:
            return None
        # prefect 3.8.8's sync read_artifacts sends None for the filters it was not
        # given (422) and drops the flow-run filter when given empty ones, so post the
        # filter ourselves.
        response = client.request("POST", "/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [str(run_id)]}}, "sort": "CREATED_DESC", "limit": 200, "offset": 0})
        artifacts = Artifact.model_validate_list(response.json())
    document = build_status(run, operation, artifacts)
    if document["status"] in FINAL and _result(artifacts) is None:
        # Ended without its result in Prefect: never started, crashed, or Prefect could
        # not take the result artifact; a run that wrote its record has it there.
        try:
            recorded = status_from_record(str(run_id))
        except Exception:  # noqa: BLE001 - storage unreachable: what Prefect knows stands
            recorded = None
        if recorded is not None:
            document.update({key: recorded[key] for key in ("status", "progress", "eta_seconds", "result")})
    return document


def build_status(run, operation: str, artifacts: list[Artifact]) -> dict[str, Any]:
    """The status document of a flow run of ``operation`` from its artifacts (newest first)."""
    state_type = run.state.type.value if run.state else "PENDING"
    status = state_status(state_type, run.state.name if run.state else None)
    result = _result(artifacts)
    progress = _progress(artifacts)
    if result is None and progress is None and status in FINAL:
        # Ended before the operation started (Prefect refused its parameters, or it was
        # cancelled while scheduled): nothing was selected or touched, and the state's
        # message is the whole story. A crash after that has a progress artifact and
        # no result: how far it got is in the progress, not in invented counts.
        result = _not_started(run, operation, status)
    current, total = (progress or {}).get("current", 0), (progress or {}).get("total", 0)
    eta = (progress or {}).get("eta_seconds")
    if result is not None:
        # The result is the final word (a Failed state carries no readable result).
        if status in FINAL:
            status = result["status"]
        # Done is what succeeded or failed: what a cancel left unstarted or rolled back
        # (`skipped`) was not done, and a cancelled run shows how far it really got.
        current = result["succeeded"] + result["failed"]
        total = result["requested"]
    if status in FINAL:
        eta = None
    percent = _percent(current, total, status)
    document = {
        "operation_id": str(run.id),
        "operation": operation,
        "creator_id": (run.parameters or {}).get("creator_id"),
        "status": status,
        "progress": {"current": current, "total": total, "percent": percent},
        "eta_seconds": eta,
        "result": result if status in FINAL else None,
    }
    if webhook.configured():
        state = webhook_state(artifacts) or {}
        document["webhook"] = {"attempts": int(state.get("attempts", 0)), "last_status": state.get("last_status"),
                               "delivered": bool(state.get("delivered", False))}
    return document


def _percent(current: int, total: int, status: str) -> float:
    """Done of all, in percent; an ended operation with nothing to do is 100."""
    if total == 0:
        return 100.0 if status in FINAL else 0.0
    return round(100.0 * current / total, 2)


def status_from_record(operation_id: str) -> dict[str, Any] | None:
    """The status document of an operation Prefect no longer has, from the record it
    left in storage as it ended (``videolib/records.py``); None without one."""
    from service.environment import ready_store
    from videolib.records import read_record

    result = read_record(ready_store(), operation_id)
    if result is None:
        return None
    total = int(result.get("requested", 0))
    current = int(result.get("succeeded", 0)) + int(result.get("failed", 0))
    return {
        "operation_id": result["operation_id"], "operation": result["operation"], "creator_id": result["creator_id"],
        "status": result["status"],
        "progress": {"current": current, "total": total, "percent": _percent(current, total, result["status"])},
        "eta_seconds": None,
        "result": result,
    }


def webhook_state(artifacts: list[Artifact]) -> dict[str, Any] | None:
    """How the run's webhook delivery went (``tasks/webhook.py``), if it was tried."""
    for artifact in artifacts:
        if artifact.type == webhook.WEBHOOK_ARTIFACT_TYPE and isinstance(artifact.data, dict):
            return artifact.data
    return None


def _not_started(run, operation: str, status: str) -> dict[str, Any]:
    parameters = run.parameters or {}
    state = run.state
    message = (state.message if state else None) or (
        f"the flow run ended {state.name if state else 'without a state'} before the {operation} started"
    )
    document = OperationResult(
        operation_id=str(run.id), operation=operation, creator_id=parameters.get("creator_id"),
        dry_run=parameters.get("dry_run") is True, message=message,
    ).to_dict()
    document["status"] = status
    return document
