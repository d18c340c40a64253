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
from videolib.ids import RequestError
from videolib.operation import parse_video_ids
from videolib.selection import stage_invalid_ids

Listener = Callable[[Any], None]


def check(request: OperationRequest):
    """The checks a request passes against the library before it runs: the storage
    answers, the schema is current, a whole-library selection selects something. The store."""
    store = ready_store()
    request.check_library(ready_database())
    request.check_storage(store)
    return store


def upload_manifest_file(request: OperationRequest) -> OperationRequest:
    """A command line's ``--ids-file`` over ``BULKOPS_MAX_IDS``, uploaded as an id manifest
    (``manifests/{creator_id}/{sha256}.txt``): the request then names it."""
    if getattr(request, "manifest_file", None) is None:
        return request
    return request.upload_manifest_file(ready_store())


def prepare(request: OperationRequest, *, store=None) -> dict[str, Any]:
    """The flow parameters of a checked request, once :func:`check` has passed (or given
    its ``store``), its malformed ids set aside in storage."""
    store = store if store is not None else check(request)
    parameters = request.flow_parameters()
    if request.video_ids is not None:
        parsed = parse_video_ids(request.video_ids, max_ids=get_settings().max_ids)
        parameters["video_ids"] = parsed.ids
        parameters["invalid_ids_key"] = (
            stage_invalid_ids(store, request.creator_id, [e.video_id for e in parsed.errors]) if parsed.errors else None
        )
    return parameters


def confirm_whole_library_delete(request: OperationRequest, confirm: int | None) -> None:
    """A delete of a whole library over ``BULKOPS_CONFIRM_OVER`` videos names the count a
    dry run planned (``confirm``): nobody deletes a million videos by a typo. Refused with
    ``confirmation_required`` carrying the current count (``videos``)."""
    if not request.all_videos or getattr(request, "dry_run", False):
        return
    from videolib.selection import count_creator_videos

    limit = get_settings().confirm_over
    videos = count_creator_videos(ready_database(), request.creator_id)
    if videos > limit and confirm != videos:
        mismatch = f"; {confirm} does not match" if confirm is not None else ""
        raise RequestError("confirmation_required",
                           f"this deletes all {videos} videos of {request.creator_id!r} (over {limit}, "
                           f"BULKOPS_CONFIRM_OVER): send it with \"dry_run\": true first, then with \"confirm\": "
                           f"<plan.videos>{mismatch}", videos=videos)


def served_flows() -> list[str]:
    """The flows a runner serves as deployments (``{flow}/{flow}``)."""
    from flows import FLOWS

    return sorted(FLOWS)


def run_tags(request: OperationRequest, parameters: dict[str, Any]) -> list[str]:
    """The tags a run is created with: its creator's, and ``dry-run`` for a dry run."""
    from flows import creator_tag

    return ([creator_tag(request.creator_id)] if request.creator_id else []) + (
        ["dry-run"] if parameters.get("dry_run") else [])


def submit(request: OperationRequest) -> dict[str, Any]:
    """Create the operation's run on the named Prefect server, for its deployment's worker
    (or ``serve()`` runner) to execute, and return at once: ``{"operation_id", "status":
    "pending"}``. Refused with ``no_runner`` when nothing would execute it."""
    import os

    from service.environment import use_running_serve

    use_running_serve()
    if not os.environ.get("PREFECT_API_URL"):
        raise RequestError("no_runner", "--no-wait needs something that executes runs: start `bulkops serve`, or set "
                           "PREFECT_API_URL to a server with the bulkops deployments (prefect deploy --all) and a "
                           "worker (prefect worker start --pool bulkops); without one, run without --no-wait")
    prefect_defaults()
    store = check(request)  # what the request is refused for comes before what the set-up lacks
    check_split(request)
    from prefect.deployments import run_deployment

    from service.slots import admission

    # Counted and created under the creator's lock: concurrent requests start exactly
    # the limit (service/slots.py); a refusal touches nothing.
    with admission(request.creator_id):
        deployment = ready_deployment(request.flow_name)
        parameters = prepare(request, store=store)
        run = run_deployment(deployment, parameters=parameters, timeout=0, tags=run_tags(request, parameters))
    return {"operation_id": str(run.id), "status": "pending"}


def ready_deployment(flow_name: str) -> str:
    """The deployment of ``flow_name`` once something would execute its runs; else
    ``no_runner`` (``flows.runners.ready_deployment``)."""
    from flows.runners import ready_deployment as ready

    return ready(flow_name)


def check_split(request: OperationRequest) -> None:
    """A split operation (``--split N``, ``BULKOPS_SPLIT``) needs the ``bulk-share``
    deployment and a worker for it: ``no_runner`` before any run is created."""
    split = getattr(request, "split", None)
    if (split or get_settings().split) > 1:
        from flows.split import check_split as check_shares

        check_shares(split)


def run(request: OperationRequest, *, listener: Listener | None = None,
        parameters: dict[str, Any] | None = None, admitted: bool = False) -> dict[str, Any]:
    """Run the operation's flow in this process and wait for it; its result document.

    ``listener`` gets the flow's progress events as batches finish (the last one carries
    the result). ``parameters`` are :func:`prepare`'s, when the caller prepared already.
    Refused with ``too_many_running`` when the creator is at its limit (``service/slots.py``),
    unless the caller ``admitted`` it already.
    """
    prefect_defaults()
    from service.slots import admit

    if parameters is None:
        store = check(request)
        check_split(request)
        admit(request.creator_id)  # over the limit: refused before anything is staged
        parameters = prepare(request, store=store)
    elif not admitted:
        admit(request.creator_id)
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

    with listening(listen), tags(*run_tags(request, parameters)):
        state = flow(**parameters, return_state=True)
    if not final:  # the run ended before the operation started (Prefect refused its parameters)
        message = state.message or f"the flow run ended {state.name} without a result"
        final = {"status": "failed", "message": message, "operation": request.operation, "requested": 0,
                 "succeeded": 0, "failed": 0, "skipped": 0, "errors": []}
    return final
