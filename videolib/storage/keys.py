"""Storage keys: relative, "/"-separated names under a store's root.

Every ``ObjectStore`` method that takes a key validates it first (``validate_key``), so
nothing outside the root can be named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# S3's hard limit: keys are at most 1024 UTF-8 bytes.
MAX_KEY_BYTES = 1024

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# Unicode category Cc: NUL, the C0 controls, DEL and the C1 controls.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class UnsafeKeyError(ValueError):
    """A storage key that could name something outside the store's root (or is malformed)."""


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative key; raise UnsafeKeyError if not.

    Refused: non-strings, empty keys, absolute keys, backslashes, NUL and other control
    characters, empty segments (``a//b``, a trailing ``/``), ``.`` and ``..`` segments,
    a leading ``~``, anything scheme-like (``s3://...``, ``file:...``) and keys longer
    than S3 allows.
    """
    if not isinstance(key, str):
        raise UnsafeKeyError(f"storage key must be a string, got {type(key).__name__}")
    shown = repr(key)[:120]
    if not key:
        raise UnsafeKeyError("storage key must not be empty")
    if key.startswith("/"):
        raise UnsafeKeyError(f"storage key must be relative, got {shown}")
    if key.startswith("~"):
        raise UnsafeKeyError(f"storage key must not start with '~', got {shown}")
    if "\\" in key:
        raise UnsafeKeyError(f"storage key must not contain a backslash, got {shown}")
    # Newlines in keys break listings and reports; NUL truncates paths in C code.
    if _CONTROL_RE.search(key):
        raise UnsafeKeyError(f"storage key must not contain control characters, got {shown}")
    if "://" in key or _SCHEME_RE.match(key.split("/", 1)[0]):
        raise UnsafeKeyError(f"storage key must not carry a scheme, got {shown}")
    for segment in key.split("/"):
        if segment == "":
            raise UnsafeKeyError(f"storage key must not have empty segments ('//' or a trailing '/'), got {shown}")
        if segment in (".", ".."):
            raise UnsafeKeyError(f"storage key must not have '.' or '..' segments, got {shown}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        raise UnsafeKeyError(f"storage key must be valid unicode, got {shown}") from None
    if size > MAX_KEY_BYTES:
        raise UnsafeKeyError(f"storage key must be at most {MAX_KEY_BYTES} bytes, got {size}")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: "" (everything) or a key, with one trailing "/" tolerated."""
    if prefix in ("", "/") and isinstance(prefix, str):
        return ""
    if isinstance(prefix, str) and prefix.endswith("/"):
        prefix = prefix[:-1]
    return validate_key(prefix)


def unique_keys(keys: Iterable[str]) -> list[str]:
    """Validated keys, duplicates dropped, order kept; raises before anything is touched."""
    if isinstance(keys, str):
        raise TypeError("`keys` must be an iterable of keys, not a single string")
    return list(dict.fromkeys(validate_key(key) for key in keys))
