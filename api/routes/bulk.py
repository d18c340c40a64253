"""Operations over HTTP: trigger, status, cancel. Each route parses one typed request,
calls one ``service/`` function, and returns its document; auth is a dependency.

    POST /bulk/delete|export|reprocess   202 {"operation_id", "status_url", "events_url"} + Location
    GET  /bulk/status/{id}               the status document (CONTRACT.md)
    POST /bulk/{id}/cancel               202 {"operation_id", "status", "cancel_requested"}; finished: 409
    POST /bulk/cleanup                   202 as the triggers (a service token); one running already: 409
    POST /bulk/manifests                 201 {"key", "sha256", "lines"}: an id manifest, streamed to storage
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from api.bodies import CleanupBody, DeleteBody, ExportBody, ReprocessBody, RestoreBody
from api.deps import principal
from api.errors import error_responses
from api.watch import events, shared_status
from service.inline import HEADER as INLINE_HEADER
from service.launch import confirm_whole_library_delete
from service.requests import (
    CleanupRequest,
    DeleteRequest,
    ExportRequest,
    OperationRequest,
    ReprocessRequest,
    RestoreRequest,
)
from service.tokens import Principal
from service.requests import RequestError

router = APIRouter(prefix="/bulk", tags=["operations"])

TRIGGER_ERRORS = error_responses(401, 403, 413, 422, 429, 503)


def _launch(kind: type[OperationRequest], body, who: Principal, request: Request, response: Response,
            idempotency_key: str | None) -> dict[str, Any]:
    from service.idempotency import fingerprint, idempotent

    creator_id = who.creator_for(body.creator_id)
    # The CLI on serve's machine asks serve to run it here, warm (service/inline.py).
    here = who.service and request.headers.get(INLINE_HEADER) == "1"
    if idempotency_key is None:
        answer = _start(kind, body, creator_id, request, here=here)
    else:
        with idempotent(creator_id, idempotency_key,
                        fingerprint(request.url.path, body.model_dump(mode="json"))) as memo:
            if memo.answer is None:
                memo.answer = _start(kind, body, creator_id, request, here=here)
            answer = memo.answer
    response.headers["Location"] = answer["status_url"]
    return answer


def _start(kind: type[OperationRequest], body, creator_id: str, request: Request, *, here: bool = False
           ) -> dict[str, Any]:
    from service.inline import executor
    from service.launch import submit

    body.check_selection()
    try:
        operation = kind.build(creator_id=creator_id, **body.options())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise RequestError("usage", f"the request does not validate: {problems}") from None
    inline = executor() if here else None
    if inline is not None:  # the CLI's own request: it keeps its --dry-run habit, no `confirm`
        operation_id = inline.start(operation)
        if operation_id is not None:
            return _started(request, operation_id)
    elif isinstance(operation, DeleteRequest) and isinstance(body, DeleteBody):
        confirm_whole_library_delete(operation, body.confirm)
    return _started(request, submit(operation)["operation_id"])


def _started(request: Request, operation_id: str) -> dict[str, Any]:
    """What a POST that started an operation answers (its ``status_url`` is the Location)."""
    return {"operation_id": operation_id,
            "status_url": str(request.url_for("operation_status", operation_id=operation_id)),
            "events_url": str(request.url_for("operation_events", operation_id=operation_id))}


IdempotencyKey = Header(None, alias="Idempotency-Key", description=(
    "the same key and body within 24 h answer the first request's operation (no second run)"))


@router.post("/delete", status_code=202, responses=TRIGGER_ERRORS,
             summary="Delete videos: rows, files, thumbnails and chunks (tombstone first)")
def trigger_delete(body: DeleteBody, request: Request, response: Response,
                   who: Principal = Depends(principal),
                   idempotency_key: str | None = IdempotencyKey) -> dict[str, Any]:
    return _launch(DeleteRequest, body, who, request, response, idempotency_key)


@router.post("/export", status_code=202, responses=TRIGGER_ERRORS,
             summary="Export video metadata to Parquet or CSV, with an expiring download link")
def trigger_export(body: ExportBody, request: Request, response: Response,
                   who: Principal = Depends(principal),
                   idempotency_key: str | None = IdempotencyKey) -> dict[str, Any]:
    return _launch(ExportRequest, body, who, request, response, idempotency_key)


@router.post("/reprocess", status_code=202, responses=TRIGGER_ERRORS,
             summary="Re-chunk transcripts and recompute embeddings")
def trigger_reprocess(body: ReprocessBody, request: Request, response: Response,
                      who: Principal = Depends(principal),
                   idempotency_key: str | None = IdempotencyKey) -> dict[str, Any]:
    return _launch(ReprocessRequest, body, who, request, response, idempotency_key)


@router.post("/restore", status_code=202, responses=TRIGGER_ERRORS,
             summary="Bring back videos a delete trashed, while its undo window (BULKOPS_DELETE_GRACE) is open")
def trigger_restore(body: RestoreBody, request: Request, response: Response,
                    who: Principal = Depends(principal),
                    idempotency_key: str | None = IdempotencyKey) -> dict[str, Any]:
    return _launch(RestoreRequest, body, who, request, response, idempotency_key)


@router.post("/cleanup", status_code=202, responses=error_responses(401, 403, 409, 413, 422, 503),
             summary="Clean the whole library now (as the daily cleanup): a service token; one at a time")
def trigger_cleanup(request: Request, response: Response, body: CleanupBody | None = None,
                    who: Principal = Depends(principal)) -> dict[str, Any]:
    from service.inline import executor
    from service.launch import submit

    if not who.service:
        raise RequestError("forbidden", "cleanup acts on every creator's library: it needs a service token "
                                        "(bulkops token --service)")
    operation = CleanupRequest.build(**(body or CleanupBody()).model_dump(exclude_none=True))
    inline = executor() if request.headers.get(INLINE_HEADER) == "1" else None
    operation_id = inline.start(operation) if inline is not None else None
    if operation_id is None:
        operation_id = submit(operation)["operation_id"]
    answer = _started(request, operation_id)
    response.headers["Location"] = answer["status_url"]
    return answer


class _Pulled:
    """A blocking ``read()`` over the request body's async stream, for a worker thread."""

    def __init__(self, pull):
        self.pull = pull

    def read(self, _size: int = -1) -> bytes:
        return self.pull()


@router.post("/manifests", status_code=201, responses=error_responses(401, 403, 422, 503),
             summary="Upload an id manifest (one id per line, or CSV/Parquet with a video_id column), streamed "
                     "to storage; name its key as `manifest` in a delete, export or reprocess",
             openapi_extra={"requestBody": {"content": {
                 "text/plain": {"schema": {"type": "string"}},
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "file": {"type": "string", "format": "binary"}}}}}}})
async def upload_manifest(request: Request, who: Principal = Depends(principal),
                          creator_id: str | None = Query(None, description="a service token names the creator"),
                          format: str | None = Query(None, description="txt, csv or parquet (default: from the "
                                                                       "file name or content type; txt)")
                          ) -> dict[str, Any]:
    import anyio

    from service.manifests import manifest_format, upload

    creator = who.creator_for(creator_id)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=2)
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise RequestError("bad_manifest", "send the manifest as the form's `file` part")
        suffix = manifest_format(format, filename=part.filename, content_type=part.content_type)
        return await anyio.to_thread.run_sync(lambda: upload(creator, part.file, suffix=suffix))
    suffix = manifest_format(format, content_type=content_type)
    chunks = request.stream()

    def pull() -> bytes:
        while True:  # the stream ends with an empty chunk: only its end is the end
            try:
                chunk = anyio.from_thread.run(chunks.__anext__)
            except StopAsyncIteration:
                return b""
            if chunk:
                return chunk

    return await anyio.to_thread.run_sync(lambda: upload(creator, _Pulled(pull), suffix=suffix))


@router.get("/operations", responses=error_responses(401, 403, 422, 503),
            summary="The caller's operations, newest first (status documents), with a cursor to page on")
def list_operations(who: Principal = Depends(principal),
                    status: str | None = Query(None, description="pending, in_progress, completed, partial, "
                                                                 "failed or cancelled"),
                    operation: str | None = Query(None, description="delete, export or reprocess"),
                    limit: str | None = Query(None, description="1-100 (default 20)"),
                    cursor: str | None = Query(None, description="`next_cursor` of the page before"),
                    creator_id: str | None = Query(None, description="whose (a service token must say)")
                    ) -> dict[str, Any]:
    from service.listing import list_operations as listing

    creator = who.creator_for(creator_id)
    if limit is None:
        count: object = 20
    else:
        try:
            count = int(limit)
        except ValueError:
            count = limit
    return listing(creator_id=creator, status=status, operation=operation, limit=count, cursor=cursor)


def visible_status(operation_id: str, who: Principal, *, fresh: bool = False) -> dict[str, Any]:
    """The operation's status document, if the caller may see it; else ``not_found``
    (an unknown id and another creator's operation answer the same). Read through the
    shared cache (``api/watch.py``) unless ``fresh``."""
    from service.status import read_status

    try:
        uuid.UUID(operation_id)
    except ValueError:
        raise RequestError("not_found", f"{operation_id[:80]!r} is not an operation id (a UUID)") from None
    document = read_status(operation_id) if fresh else shared_status(operation_id)
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

    document = visible_status(operation_id, who, fresh=True)
    if document["status"] not in FINAL:
        answer = cancel(operation_id, by="the HTTP API")
        if answer["cancel_requested"]:
            return answer
        document = visible_status(operation_id, who, fresh=True)
    raise RequestError("already_finished", f"operation {operation_id} has already ended {document['status']}",
                   status=document["status"])


@router.post("/{operation_id}/retry", status_code=202, responses=error_responses(401, 404, 409, 429, 503),
             summary="Take again exactly the retryable failed items of a finished delete or reprocess")
def retry_operation(operation_id: str, request: Request, response: Response,
                    who: Principal = Depends(principal)) -> dict[str, Any]:
    from service.control import retry_request
    from service.launch import submit

    document = visible_status(operation_id, who, fresh=True)
    answer = {**_started(request, submit(retry_request(operation_id, document))["operation_id"]),
              "retry_of": operation_id}
    response.headers["Location"] = answer["status_url"]
    return answer


@router.get("/{operation_id}/events", responses={**error_responses(401, 404, 503), 200: {
    "description": "Server-Sent Events: `progress` and `state` while it runs, `result` when it ends (each "
                   "`data:` is the status document; `id:` resumes with `Last-Event-ID`)",
    "content": {"text/event-stream": {}}}},
            summary="Follow an operation as it runs (Server-Sent Events)", response_class=StreamingResponse)
def operation_events(operation_id: str, request: Request, who: Principal = Depends(principal),
                     last_event_id: str | None = Header(None, alias="Last-Event-ID")) -> StreamingResponse:
    visible_status(operation_id, who)  # 404 before the stream starts

    async def stream():
        yield "retry: 2000\n\n"
        async for eid, name, document in events(operation_id, last_event_id=last_event_id,
                                                  disconnected=request.is_disconnected):
            if name is None:
                yield ": keep-alive\n\n"
                continue
            yield f"id: {eid}\nevent: {name}\ndata: {json.dumps(document, separators=(',', ':'))}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
