"""Bearer tokens of the HTTP API: HS256 JWTs signed with ``BULKOPS_JWT_SECRET``.

``sub`` is the creator the token acts for; ``"role": "service"`` (the app's backend)
acts for any creator. ``exp`` is required. ``bulkops token`` issues them; the API
verifies them (``api/deps.py``) and refuses anything else with ``unauthorized``.

    token = issue_token("creator-001", ttl_s=3600)
    principal = verify_token(token)      # Principal(creator_id="creator-001", service=False)
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import jwt

from config import get_settings
from videolib.ids import RequestError, check_creator_id, is_valid_creator_id

ALGORITHM = "HS256"
SERVICE_ROLE = "service"
MAX_TTL_S = 366 * 86400  # a token that outlives a year is a password in disguise
SHORT_SECRET = 32  # bytes; RFC 7518 3.2 asks at least the hash's size for HS256 (`serve` warns below it)

# PyJWT warns on every call with a short key; `serve` says it once instead.
warnings.filterwarnings("ignore", message="The HMAC key is", module="jwt")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: one creator, or the service (any creator)."""

    subject: str
    service: bool = False

    def creator_for(self, named: str | None) -> str:
        """The creator a request acts for: a creator token's own (naming another is
        ``forbidden``); a service token's must be named (``creator_required``)."""
        if self.service:
            if named is None:
                raise RequestError("creator_required", "a service token must name `creator_id`")
            return check_creator_id(named)
        if named is not None and named != self.subject:
            raise RequestError("forbidden", "this token acts for its own creator only; leave out `creator_id` "
                                            "or use a service token")
        return self.subject

    def may_see(self, creator_id: str | None) -> bool:
        """Whether an operation of ``creator_id`` exists for this caller (others' are 404)."""
        return self.service or creator_id == self.subject


def jwt_secret() -> str:
    secret = get_settings().jwt_secret
    if secret is None or not secret.get_secret_value():
        raise RequestError("bad_settings", "BULKOPS_JWT_SECRET is not set: set it to a long random string "
                                           "(for instance `openssl rand -hex 32`) to issue and verify API tokens")
    return secret.get_secret_value()


def issue_token(creator_id: str, *, service: bool = False, ttl_s: float = 3600) -> str:
    """A token for ``creator_id`` (or the service, named ``creator_id``) valid ``ttl_s``."""
    if not is_valid_creator_id(creator_id):
        raise RequestError("invalid_creator", f"`creator_id` {creator_id!r:.80} is not a valid creator id")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise RequestError("usage", f"`ttl` must be more than 0 and at most {MAX_TTL_S // 86400} days")
    now = int(time.time())
    claims = {"sub": creator_id, "iat": now, "exp": now + int(ttl_s)}
    if service:
        claims["role"] = SERVICE_ROLE
    return jwt.encode(claims, jwt_secret(), algorithm=ALGORITHM)


def token_expiry(token: str) -> int:
    """The ``exp`` of a token this process issued (for printing it)."""
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


def verify_token(token: str) -> Principal:
    """The principal of a valid token; ``unauthorized`` for anything else (missing parts,
    another algorithm, a bad signature, no or a past ``exp``, a ``sub`` that is not a
    creator id)."""
    secret = jwt_secret()
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise RequestError("unauthorized", "the token has expired: ask for a new one") from None
    except jwt.InvalidTokenError as exc:
        raise RequestError("unauthorized", f"the token is not valid: {exc}") from None
    subject, role = claims.get("sub"), claims.get("role")
    if not isinstance(subject, str) or not is_valid_creator_id(subject):
        raise RequestError("unauthorized", "the token's `sub` is not a valid creator id")
    if role is not None and role != SERVICE_ROLE:
        raise RequestError("unauthorized", f"the token's role {str(role)[:40]!r} is unknown (only 'service')")
    return Principal(subject=subject, service=role == SERVICE_ROLE)
