"""Downloads of exports in local storage: the signed link's token back to the file it
names, while it is valid (``videolib.signing``). On S3 the link is a presigned URL and
never comes here.

    path, filename, media_type = open_download(token)

A token that was altered or is malformed is ``link_invalid``; one past its expiry,
``link_expired``; one whose file is gone (cleaned up, or deleted), ``not_found``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from config import get_settings
from videolib.ids import RequestError
from videolib.signing import LinkError, verify_token

MEDIA_TYPES = {".parquet": "application/vnd.apache.parquet", ".csv": "text/csv; charset=utf-8"}


def open_download(token: str) -> tuple[Path, str, str]:
    """The local file a valid token names, its download name and media type."""
    from service.environment import ready_store

    settings = get_settings()
    try:
        key = verify_token(token, secret=settings.signing_key_bytes())
    except LinkError as exc:
        code = "link_expired" if exc.reason == "expired" else "link_invalid"
        raise RequestError(code, str(exc)) from None
    store = ready_store()
    if store.is_s3 or not key.startswith("exports/"):
        raise RequestError("link_invalid", "this link does not name a downloadable export")
    path = Path(store.path(key))
    if not path.is_file():
        raise RequestError("not_found", "the export file is gone (expired and cleaned up, or deleted): export again")
    name = PurePosixPath(key).name
    return path, name, MEDIA_TYPES.get(PurePosixPath(key).suffix, "application/octet-stream")
