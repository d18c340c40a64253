"""Id manifests for the front doors: upload one to the library's storage
(``POST /bulk/manifests``; the CLI's oversize ``--ids-file`` goes through
``service.launch.upload_manifest_file``). What a manifest is: ``videolib/manifests.py``."""

from __future__ import annotations

from typing import IO, Any

from config import get_settings
from service.environment import ready_store
from videolib.ids import RequestError
from videolib.manifests import upload_manifest

SUFFIXES = {"txt": ".txt", "text": ".txt", "csv": ".csv", "parquet": ".parquet"}
CONTENT_TYPES = {"text/plain": "txt", "text/csv": "csv", "application/vnd.apache.parquet": "parquet",
                 "application/x-parquet": "parquet"}


def manifest_format(format: str | None, *, filename: str | None = None, content_type: str | None = None) -> str:
    """``.txt``, ``.csv`` or ``.parquet``: named, or from a file name or a content type
    (text when nothing says); another name is ``bad_manifest``."""
    if format is None and filename and "." in filename:
        format = filename.rsplit(".", 1)[1].lower()
        format = format if format in SUFFIXES else "txt"
    if format is None and content_type:
        format = CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    suffix = SUFFIXES.get((format or "txt").lower())
    if suffix is None:
        raise RequestError("bad_manifest", f"unknown manifest format {str(format)[:40]!r}: txt (one id per line), "
                                           "csv (a video_id column) or parquet (a video_id column)")
    return suffix


def upload(creator_id: str, source: IO[bytes], *, suffix: str) -> dict[str, Any]:
    """Store a manifest streamed from ``source``; ``{"key", "sha256", "lines"}``."""
    info = upload_manifest(ready_store(), creator_id, source, max_ids=get_settings().max_manifest_ids, suffix=suffix)
    return info.to_dict()
