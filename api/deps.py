"""What every route depends on: who is calling (a bearer token), and the body limit.

The principal comes from ``Authorization: Bearer <JWT>`` (``service.tokens``); anything
else is 401 with ``WWW-Authenticate``. Bodies over ``BULKOPS_MAX_BODY_BYTES`` are 413,
checked before anything else reads them (before auth, parsing or a database call).
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_response
from config import get_settings
from service.tokens import Principal, verify_token
from service.requests import RequestError

_bearer = HTTPBearer(auto_error=False, description="an HS256 JWT from `bulkops token` (`sub` = creator id)")


def principal(request: Request,
              _credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """The caller, from its bearer token (401 ``unauthorized`` for a missing or bad one)."""
    header = request.headers.get("authorization")
    if not header:  # RFC 6750: no error attribute when no credentials came
        raise ApiError("unauthorized", "send `Authorization: Bearer <token>` (get one with `bulkops token`)",
                       headers={"WWW-Authenticate": 'Bearer realm="bulkops"'})
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestError("unauthorized", "the Authorization header must be `Bearer <token>`")
    return verify_token(token.strip())



class BodyLimit:
    """413 ``body_too_large`` for a request body over the limit: by its Content-Length
    at once, or, sent without one, as soon as the bytes read pass it."""

    def __init__(self, app: ASGIApp, *, limit: int | None = None, exempt: tuple[str, ...] = ()) -> None:
        self.app, self._limit, self.exempt = app, limit, exempt

    @property
    def limit(self) -> int:
        return self._limit if self._limit is not None else get_settings().max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        limit = self.limit
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                too_big = False
            if too_big:
                await self._refuse(scope, receive, send, limit)
                return
        # Without a (truthful) Content-Length: read the body here, up to the limit.
        body, more = b"", True
        messages: list[Message] = []
        while more:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._refuse(scope, receive, send, limit)
                return
        messages.insert(0, {"type": "http.request", "body": body, "more_body": False})

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response("body_too_large", f"the request body is over {limit} bytes "
                                                    "(BULKOPS_MAX_BODY_BYTES); send fewer ids, or a manifest")
        await response(scope, receive, send)
