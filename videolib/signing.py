"""Expiring download links for exported files.

- S3: a presigned GET URL (24 h by default, at most 7 days, S3's own limit).
- Local storage: an HMAC-SHA256-signed token naming the key and its expiry, served by
  the API's ``GET /downloads/{token}`` while it is valid. The token is
  ``base64url(payload).base64url(mac)``; tampering with either part, or using it after
  it expires, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from videolib.storage import ObjectStore, validate_key

DEFAULT_EXPIRY_S = 24 * 3600
MAX_EXPIRY_S = 7 * 24 * 3600


class LinkError(ValueError):
    """A download token that must not be honoured (``reason``: invalid | expired)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SignedLink:
    url: str
    expires_at: datetime

    def to_dict(self) -> dict[str, str]:
        return {"url": self.url, "expires_at": self.expires_at.isoformat().replace("+00:00", "Z")}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_expiry(expires_in_s: int) -> int:
    if not isinstance(expires_in_s, int) or not 1 <= expires_in_s <= MAX_EXPIRY_S:
        raise ValueError(f"`expires_in_s` must be between 1 and {MAX_EXPIRY_S} seconds (7 days)")
    return expires_in_s


def sign_token(key: str, *, secret: bytes, expires_in_s: int = DEFAULT_EXPIRY_S, now: float | None = None) -> tuple[str, int]:
    """A token for ``key`` and its expiry (unix seconds)."""
    validate_key(key)
    _check_expiry(expires_in_s)
    if not secret:
        raise ValueError("`secret` must not be empty")
    expires = int((time.time() if now is None else now) + expires_in_s)
    payload = _b64(json.dumps({"k": key, "e": expires}, separators=(",", ":")).encode())
    mac = hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}", expires


def verify_token(token: str, *, secret: bytes, now: float | None = None) -> str:
    """The storage key a valid token names; ``LinkError`` if tampered with or expired."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
        raise LinkError("invalid", "malformed download token")
    payload, mac = token.split(".")
    try:
        given = _unb64(mac)
        expected = hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest()
    except (ValueError, UnicodeEncodeError) as exc:
        raise LinkError("invalid", "malformed download token") from exc
    if not hmac.compare_digest(given, expected):
        raise LinkError("invalid", "download token signature does not match")
    try:
        data = json.loads(_unb64(payload))
        key, expires = data["k"], int(data["e"])
        validate_key(key)
    except (ValueError, KeyError, TypeError) as exc:
        raise LinkError("invalid", "malformed download token") from exc
    if (time.time() if now is None else now) >= expires:
        raise LinkError("expired", "download link has expired; export again for a new one")
    return key


def signed_link(
    store: ObjectStore,
    key: str,
    *,
    secret: bytes | Callable[[], bytes],
    base_url: str = "http://127.0.0.1:8000",
    expires_in_s: int = DEFAULT_EXPIRY_S,
) -> SignedLink:
    """An expiring download link for ``key``: presigned on S3, HMAC-signed otherwise.
    ``secret`` may be a callable, read only for an HMAC link (on S3 no key is needed,
    and none is generated on the machine that runs the export)."""
    validate_key(key)
    _check_expiry(expires_in_s)
    now = time.time()
    if store.is_s3:
        url = store.fs.url(store.path(key), expires=expires_in_s)
        return SignedLink(url, datetime.fromtimestamp(int(now + expires_in_s), UTC))
    token, expires = sign_token(key, secret=secret() if callable(secret) else secret, expires_in_s=expires_in_s, now=now)
    return SignedLink(f"{base_url.rstrip('/')}/downloads/{token}", datetime.fromtimestamp(expires, UTC))
