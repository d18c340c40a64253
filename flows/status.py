"""The status document of an operation, read from its flow run's state and artifacts.

No table of our own holds status: the flow run is the operation (CONTRACT.md).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import Artifact
from prefect.exceptions import ObjectNotFound

from flows.operation import RESULT_ARTIFACT_DESCRIPTION, parse_result_markdown
from videolib.operation import OperationResult

FLOW_OPERATIONS = {"bulk-delete": "delete", "bulk-export": "export", "bulk-reprocess": "reprocess"}
_PROGRESS_RE = re.compile(r"^(\d+)/(\d+) ")
_ETA_RE = re.compile(r"ETA (\d+)s")
FINAL = {"completed", "partial", "failed", "cancelled"}


def _state_status(state_type: str, state_name: str | None) -> str:
    if state_type == "COMPLETED":
        return "partial" if state_name == "Partial" else "completed"
    if state_type in {"FAILED", "CRASHED"}:
        return "failed"
    if state_type == "CANCELLED":
        return "cancelled"
    if state_type in {"RUNNING", "CANCELLING", "PAUSED"}:
        return "in_progress"
    return "pending"  # SCHEDULED, PENDING


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
            return None
        flow = client.read_flow(run.flow_id)
        operation = FLOW_OPERATIONS.get(flow.name)
        if operation is None:
            return None
        # prefect 3.8.8's sync read_artifacts sends None for the filters it was not
        # given (422) and drops the flow-run filter when given empty ones, so post
        # the filter ourselves.
        response = client.request(
            "POST",
            "/artifacts/filter",
            json={
                "artifacts": {"flow_run_id": {"any_": [str(run_id)]}},
                "sort": "CREATED_DESC",
                "limit": 200,
                "offset": 0,
            },
        )
        artifacts = Artifact.model_validate_list(response.json())
    state_type = run.state.type.value if run.state else "PENDING"
    status = _state_status(state_type, run.state.name if run.state else None)
    result = None
    progress = None
    for artifact in artifacts:
        if artifact.type == "progress" and progress is None:
            progress = artifact
        if artifact.description == RESULT_ARTIFACT_DESCRIPTION and isinstance(artifact.data, str):
            result = parse_result_markdown(artifact.data)
    current = total = 0
    eta = None
    if progress is not None and progress.description:
        match = _PROGRESS_RE.match(progress.description)
        if match:
            current, total = int(match.group(1)), int(match.group(2))
        eta_match = _ETA_RE.search(progress.description)
        if eta_match:
            eta = float(eta_match.group(1))
    if result is None and progress is None and status in FINAL:
        # Ended before the operation started (Prefect refused its parameters, or it was
        # cancelled while scheduled): nothing was selected or touched, and the state's
        # message is the whole story. A crash after that has a progress artifact and
        # no result: how far it got is in the progress, not in invented counts.
        result = _not_started(run, operation, status)
    if result is not None:
        # The result is the final word (a Failed state carries no readable result).
        if status in FINAL:
            status = result["status"]
        current = result["succeeded"] + result["failed"] + result["skipped"]
        total = result["requested"]
    if status in FINAL:
        eta = None
    percent = 100.0 if total == 0 and status in FINAL else (round(100.0 * current / total, 2) if total else 0.0)
    return {
        "operation_id": str(run_id),
        "operation": operation,
        "creator_id": (run.parameters or {}).get("creator_id"),
        "status": status,
        "progress": {"current": current, "total": total, "percent": percent},
        "eta_seconds": eta,
        "result": result if status in FINAL else None,
    }



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
