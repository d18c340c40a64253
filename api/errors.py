"""Errors as data, mapped once: a :class:`RequestError`'s contract code to its HTTP
status, and the ``{"error", "message"}`` body every error response has.

What the CLI refuses with exit 2 is 422 with the same code (503 where the contract marks
it); the HTTP-only codes carry their own statuses. Request bodies that do not parse are
``usage``. An error in the set-up (settings, database, storage, Prefect) is mapped by
``service.environment.as_refusal``, the same function the CLI uses.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.environment import as_refusal
from service.requests import RequestError

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "database_unavailable": 503,
    "prefect_unreachable": 503,
    "storage_unavailable": 503,
    "no_runner": 503,
    "not_ready": 503,
    "unauthorized": 401,
    "forbidden": 403,
    "link_invalid": 403,
    "not_found": 404,
    "already_finished": 409,
    "cleanup_running": 409,
    "nothing_to_retry": 409,
    "link_expired": 410,
    "body_too_large": 413,
    "too_many_running": 429,
}

# What the error responses look like, for OpenAPI (every route documents its errors).
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string", "description": "contract code (CONTRACT.md, refusal codes)"},
                   "message": {"type": "string", "description": "what is wrong and what to do"}},
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` for the error statuses a route can answer."""
    text = {401: "no, malformed, expired or wrongly signed token", 403: "another creator's request",
            404: "unknown operation (or another creator's)", 409: "conflicts with the operation's state",
            410: "the link has expired", 413: "body over BULKOPS_MAX_BODY_BYTES",
            422: "refused: the same codes as the CLI's exit 2", 429: "too many operations running",
            503: "a dependency (database, storage, Prefect) does not answer"}
    responses: dict[int | str, dict] = {}
    for status in statuses:
        responses[status] = {"description": text.get(status, "error"),
                             "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        if status == 429:
            responses[status]["headers"] = {"Retry-After": {
                "description": "seconds until a slot is likely free", "schema": {"type": "integer"}}}
    return responses


def status_for(code: str) -> int:
    return HTTP_STATUS.get(code, 422)


def error_response(code: str, message: str, *, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    status = status_for(code)
    if status == 401 and "WWW-Authenticate" not in (headers or {}):
        headers = {"WWW-Authenticate": 'Bearer realm="bulkops", error="invalid_token"', **(headers or {})}
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status, headers=headers)


class ApiError(RequestError):
    """A refusal with headers of its own (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None, **extra) -> None:
        super().__init__(code, message, **extra)
        self.headers = headers


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(_request: Request, exc: RequestError) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.code == "too_many_running":
            headers.setdefault("Retry-After", str(int(exc.extra.get("retry_after") or 30)))
        return error_response(exc.code, exc.message, headers=headers or None, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def unparsable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()[:5])
        return error_response("usage", f"the request does not parse: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "message": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        refusal = as_refusal(exc)
        if refusal is not None:
            return error_response(refusal.code, refusal.message)
        log.exception("unexpected error")
        return JSONResponse({"error": "internal", "message": f"unexpected error: {type(exc).__name__}"},
                            status_code=500)
