"""Stopping an operation, from any process: ``bulkops cancel`` (and the API's cancel
route next), and the mark a CLI leaves when it has to leave at once.

A cancel sets the run Cancelling and raises its stop flag. However the run is executed,
that reaches it: a worker or ``serve()`` runner SIGTERMs the run's process, a run
executed in-process by a CLI reads its own state (``flows.operation``), and batches in
other processes read the flag. The run then stops starting batches, lets the ones in
flight finish or roll back, writes its result document with exact counts and ends
Cancelled. A run still scheduled never starts: it ends Cancelled at once, and its
status shows a result with zero counts.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from service.status import FINAL, status_of

log = logging.getLogger(__name__)

NOT_STARTED = {"SCHEDULED", "PENDING", "PAUSED"}


def cancel(operation_id: str, *, by: str = "bulkops cancel") -> dict[str, Any]:
    """Ask an operation to stop. ``{"operation_id", "status", "cancel_requested"}``:
    ``cancel_requested`` is false when the run had already ended. An unknown id is
    ``unknown_operation`` (``RequestError``)."""
    from prefect import get_client
    from prefect.states import Cancelled, Cancelling

    from tasks.stop import VARIABLES

    document = status_of(operation_id)
    if document["status"] in FINAL:
        return {"operation_id": document["operation_id"], "status": document["status"], "cancel_requested": False}
    run_id = uuid.UUID(document["operation_id"])
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        state_type = run.state.type.value if run.state else "PENDING"
        if state_type in NOT_STARTED:
            client.set_flow_run_state(run_id, Cancelled(message=f"cancelled before it started ({by})"), force=True)
        else:
            # The flag first: batches in other processes read it; then the state, which
            # the run's runner (or the run itself) acts on.
            VARIABLES.request(str(run_id))
            if state_type not in {"CANCELLING", "CANCELLED"}:
                client.set_flow_run_state(run_id, Cancelling(message=f"cancel requested ({by})"), force=True)
    after = status_of(str(run_id))
    return {"operation_id": str(run_id), "status": after["status"], "cancel_requested": True}


def mark_cancelled(operation_id: str, message: str) -> None:
    """End a run Cancelled now, without waiting for it (a CLI leaving at once: its
    process is going away, and the claims it held are free to take over because the
    run has ended, ``videolib.takeover``)."""
    from prefect import get_client
    from prefect.states import Cancelled

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(uuid.UUID(operation_id), Cancelled(message=message), force=True)
    except Exception as exc:  # noqa: BLE001 - leaving anyway; the lease frees the claims later
        log.warning("could not mark %s cancelled: %s", operation_id, exc)


RETRIED = {"delete": "DeleteRequest", "reprocess": "ReprocessRequest"}
# What a retry keeps of the run it retries (the same model, the same chunking).
KEPT_PARAMETERS = {"delete": ("batch_size",),
                   "reprocess": ("embedder", "batch_size", "chunk_target", "chunk_overlap", "chunk_unit")}


def retry_request(operation_id: str, document: dict[str, Any] | None = None):
    """The request that takes again exactly the retryable failed items of a finished
    delete or reprocess (its run reads them from the earlier report in storage, never
    as a list of ids): ``nothing_to_retry`` for an export, a run not yet ended, or one
    with no retryable failure. ``unknown_operation`` for an unknown id."""
    import service.requests as requests
    from prefect import get_client
    from videolib.ids import RequestError
    from videolib.report import RETRYABLE

    document = document or status_of(operation_id)
    operation = document["operation"]
    if operation not in RETRIED:
        raise RequestError("nothing_to_retry", f"an {operation} is not retried: run it again instead")
    if document["status"] not in FINAL:
        raise RequestError("nothing_to_retry", f"operation {operation_id} has not ended ({document['status']}): "
                                               "retry it once it has")
    result = document.get("result") or {}
    codes = {error.get("error") for error in result.get("errors") or []}
    if not result.get("report_path") or not (result.get("errors_truncated") or codes & RETRYABLE):
        raise RequestError("nothing_to_retry", f"operation {operation_id} has no retryable failed items "
                                               f"({', '.join(sorted(RETRYABLE))})")
    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(uuid.UUID(document["operation_id"])).parameters or {}
    kept = {name: parameters[name] for name in KEPT_PARAMETERS[operation] if parameters.get(name) is not None}
    kind = getattr(requests, RETRIED[operation])
    return kind.build(creator_id=document["creator_id"], retry_of=document["operation_id"], **kept)
