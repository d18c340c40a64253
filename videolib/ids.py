"""Validation of the identifiers that requests carry: video ids and creator ids."""

from __future__ import annotations

import re

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Creator ids become a storage path segment (videos/{creator_id}/...), so they are
# limited to a safe alphabet: no slashes, no dot segments, no whitespace.
_CREATOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class RequestError(ValueError):
    """A request that is refused as a whole, before anything is touched.

    ``code`` is the machine-readable error name (``empty_selection``, ``too_many_ids``, ...).
    """

    def __init__(self, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra  # more fields for the error document (a count, a status)

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.extra}


def normalize_video_id(raw: object) -> str | None:
    """The canonical id for ``raw`` (lowercase hyphenated UUID), or None if malformed.

    Surrounding whitespace is ignored and hex digits may be upper case; anything else
    (braces, missing hyphens, other lengths, non-strings) is malformed.
    """
    if not isinstance(raw, str):
        return None
    candidate = raw.strip().lower()
    if len(candidate) != 36 or not _UUID_RE.match(candidate):
        return None
    return candidate


def is_valid_creator_id(creator_id: object) -> bool:
    return isinstance(creator_id, str) and bool(_CREATOR_RE.match(creator_id)) and ".." not in creator_id


def check_creator_id(creator_id: object) -> str:
    if not is_valid_creator_id(creator_id):
        shown = repr(creator_id)[:80]
        raise RequestError(
            "invalid_creator",
            f"`creator_id` must be 1-64 characters of letters, digits, '.', '_', '@' or '-' "
            f"starting with a letter or digit; got {shown}",
        )
    return creator_id  # type: ignore[return-value]
