"""Operations over HTTP: trigger, status, cancel. Each route parses one typed request,
calls one ``service/`` function, and returns its document; auth is a dependency.

    POST /bulk/delete|export|reprocess   202 {"operation_id", "status_url", "events_url"} + Location
    GET  /bulk/status/{id}               the status document (CONTRACT.md)
    POST /bulk/{id}/cancel               202 {"operation_id", "status", "cancel_requested"}; finished: 409
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from api.bodies import DeleteBody, ExportBody, ReprocessBody
from api.deps import principal
from api.errors import error_responses
from service.launch import confirm_whole_library_delete
from service.requests import DeleteRequest, ExportRequest, OperationRequest, ReprocessRequest
from service.tokens import Principal
from service.requests import RequestError

router = APIRouter(prefix="/bulk", tags=["operations"])

TRIGGER_ERRORS = error_responses(401, 403, 413, 422, 429, 503)


def _launch(kind: type[OperationRequest], body, who: Principal, request: Request,
            response: Response) -> dict[str, Any]:
    from service.launch import submit

    creator_id = who.creator_for(body.creator_id)
    body.check_selection()
    try:
        operation = kind.build(creator_id=creator_id, **body.options())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise RequestError("usage", f"the request does not validate: {problems}") from None
    if isinstance(operation, DeleteRequest) and isinstance(body, DeleteBody):
        confirm_whole_library_delete(operation, body.confirm)
    answer = submit(operation)
    operation_id = answer["operation_id"]
    status_url = str(request.url_for("operation_status", operation_id=operation_id))
    response.headers["Location"] = status_url
    return {"operation_id": operation_id, "status_url": status_url,
            "events_url": status_url.replace(f"/status/{operation_id}", f"/{operation_id}/events")}


@router.post("/delete", status_code=202, responses=TRIGGER_ERRORS,
             summary="Delete videos: rows, files, thumbnails and chunks (tombstone first)")
def trigger_delete(body: DeleteBody, request: Request, response: Response,
                   who: Principal = Depends(principal)) -> dict[str, Any]:
    return _launch(DeleteRequest, body, who, request, response)


@router.post("/export", status_code=202, responses=TRIGGER_ERRORS,
             summary="Export video metadata to Parquet or CSV, with an expiring download link")
def trigger_export(body: ExportBody, request: Request, response: Response,
                   who: Principal = Depends(principal)) -> dict[str, Any]:
    return _launch(ExportRequest, body, who, request, response)


@router.post("/reprocess", status_code=202, responses=TRIGGER_ERRORS,
             summary="Re-chunk transcripts and recompute embeddings")
def trigger_reprocess(body: ReprocessBody, request: Request, response: Response,
                      who: Principal = Depends(principal)) -> dict[str, Any]:
    return _launch(ReprocessRequest, body, who, request, response)


def visible_status(operation_id: str, who: Principal) -> dict[str, Any]:
    """The operation's status document, if the caller may see it; else ``not_found``
    (an unknown id and another creator's operation answer the same)."""
    from service.status import read_status

    try:
        uuid.UUID(operation_id)
    except ValueError:
        raise RequestError("not_found", f"{operation_id[:80]!r} is not an operation id (a UUID)") from None
    document = read_status(operation_id)
    if document is None or not who.may_see(document.get("creator_id")):
        raise RequestError("not_found", f"no operation {operation_id}")
    return document


@router.get("/status/{operation_id}", name="operation_status", responses=error_responses(401, 404, 503),
            summary="The status document: state, progress, ETA, and the result once it ends")
def operation_status(operation_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
    return visible_status(operation_id, who)


@router.post("/{operation_id}/cancel", status_code=202, responses=error_responses(401, 404, 409, 503),
             summary="Stop an operation softly: batches in flight finish or roll back, the result is kept")
def cancel_operation(operation_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
    from service.control import cancel
    from service.status import FINAL

    document = visible_status(operation_id, who)
    if document["status"] not in FINAL:
        answer = cancel(operation_id, by="the HTTP API")
        if answer["cancel_requested"]:
            return answer
        document = visible_status(operation_id, who)
    raise RequestError("already_finished", f"operation {operation_id} has already ended {document['status']}",
                   status=document["status"])
