"""Start an operation: the checks that need the storage and the database, then its flow
run, in this process, with progress events for the caller.

    document = run(DeleteRequest.build(creator_id="creator-001", video_ids=[...]))

Malformed ids never travel as flow-run parameters (a list of long junk could pass
Prefect's 512 KiB limit while valid ids fit): they are set aside in storage and the run
reports each as ``invalid_id`` (``videolib.selection.stage_invalid_ids``). A dry run is
tagged ``dry-run`` when its run is created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from config import get_settings
from service.environment import prefect_defaults, ready_database, ready_store
from service.requests import OperationRequest
from videolib.operation import parse_video_ids
from videolib.selection import stage_invalid_ids

Listener = Callable[[Any], None]


def prepare(request: OperationRequest) -> dict[str, Any]:
    """The flow parameters of a checked request, once its storage answers, its schema is
    current and its whole-library selection selects something."""
    store = ready_store()
    engine = ready_database()
    request.check_library(engine)
    parameters = request.flow_parameters()
    if request.video_ids is not None:
        parsed = parse_video_ids(request.video_ids, max_ids=get_settings().max_ids)
        parameters["video_ids"] = parsed.ids
        parameters["invalid_ids_key"] = (
            stage_invalid_ids(store, request.creator_id, [e.video_id for e in parsed.errors]) if parsed.errors else None
        )
    return parameters


def run(request: OperationRequest, *, listener: Listener | None = None,
        parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the operation's flow in this process and wait for it; its result document.

    ``listener`` gets the flow's progress events as batches finish (the last one carries
    the result). ``parameters`` are :func:`prepare`'s, when the caller prepared already.
    """
    parameters = prepare(request) if parameters is None else parameters
    prefect_defaults()
    from prefect import tags

    from flows import FLOWS
    from flows.progress import listening

    flow = FLOWS[request.flow_name]()
    final: dict[str, Any] = {}

    def listen(event) -> None:
        if event.result is not None:
            final.update(event.result)
        if listener is not None:
            listener(event)

    with listening(listen), tags(*(["dry-run"] if parameters.get("dry_run") else [])):
        state = flow(**parameters, return_state=True)
    if not final:  # the run ended before the operation started (Prefect refused its parameters)
        message = state.message or f"the flow run ended {state.name} without a result"
        final = {"status": "failed", "message": message, "operation": request.operation, "requested": 0,
                 "succeeded": 0, "failed": 0, "skipped": 0, "errors": []}
    return final
