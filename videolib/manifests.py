"""Id manifests: selections of millions as a file in storage, as S3 Batch Operations
takes a manifest.

A manifest lives under ``manifests/{creator_id}/`` and holds one video id per line
(``.txt`` or no suffix), or a ``video_id`` column (``.csv`` with a header row,
``.parquet``). It is read as a stream, ``chunk`` ids at a time: a list of millions is
never one flow parameter nor one list in memory. Empty lines are not ids; a line that
is not a UUID is an id all the same (a per-item ``invalid_id``), as for inline ids.

Refusals (``RequestError``): a key outside the caller's ``manifests/{creator_id}/``
folder ``bad_manifest``, a missing one ``manifest_not_found``, one that cannot be read
as its format says (not UTF-8, no ``video_id`` column, a broken Parquet file)
``manifest_unreadable``, more than ``BULKOPS_MAX_MANIFEST_IDS`` lines
``manifest_too_large``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from videolib.ids import RequestError, is_valid_creator_id

MANIFESTS = "manifests"
COLUMN = "video_id"
CHUNK = 50_000  # ids per chunk read from a manifest
READ_BYTES = 1 << 20
KEY_MAX = 512
MAX_LINE = 4096  # bytes: an id is 36; a longer line is not an id list (and must not fill memory)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True)
class ManifestInfo:
    """What the result says of the manifest it read (``"manifest"`` in the document)."""

    key: str
    sha256: str
    lines: int

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "sha256": self.sha256, "lines": self.lines}


def manifest_prefix(creator_id: str) -> str:
    return f"{MANIFESTS}/{creator_id}/"


def manifest_format(key: str) -> str:
    """``text``, ``csv`` or ``parquet``, from the key's suffix."""
    lowered = key.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(".parquet"):
        return "parquet"
    return "text"


def check_manifest_key(creator_id: str, key: object) -> str:
    """The key, if it names a file in the creator's own manifest folder; else
    ``bad_manifest`` (another creator's folder, a path that climbs or hides, no name)."""
    prefix = manifest_prefix(creator_id) if is_valid_creator_id(creator_id) else None
    if not isinstance(key, str) or prefix is None:
        raise RequestError("bad_manifest", "`manifest` must be a storage key under manifests/<your creator id>/")
    shown = key[:80] + ("…" if len(key) > 80 else "")
    name = key[len(prefix):] if key.startswith(prefix) else ""
    if len(key) > KEY_MAX or not name or "/" in name or not _NAME_RE.match(name):
        raise RequestError("bad_manifest", f"manifest {shown!r} is not a file in {prefix} (upload it with "
                                           f"POST /bulk/manifests, or give --ids-file to the CLI)")
    return key


def _open(store, key: str) -> IO[bytes]:
    try:
        return store.open(key, "rb")
    except FileNotFoundError:
        raise RequestError("manifest_not_found", f"no manifest at {key!r}: upload it first") from None
    except OSError as exc:
        raise RequestError("manifest_unreadable", f"manifest {key!r} cannot be read: {exc}") from None


def _text_lines(raw: IO[bytes], key: str) -> Iterator[str]:
    reader = io.BufferedReader(raw, READ_BYTES) if not isinstance(raw, io.BufferedIOBase) else raw
    number = 0
    while line := reader.readline(MAX_LINE + 1):
        number += 1
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            raise RequestError("manifest_unreadable", f"line {number} of manifest {key!r} is over {MAX_LINE} bytes: "
                                                      "a manifest holds one id per line")
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8").strip("\r\n")
        except UnicodeDecodeError:
            raise RequestError("manifest_unreadable", f"manifest {key!r} is not UTF-8 text (line {number})") from None
        if text.strip():
            yield text


def _csv_values(raw: IO[bytes], key: str) -> Iterator[str]:
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")
    try:
        rows = csv.reader(text)
        header = next(rows, None)
        if header is None or COLUMN not in [h.strip() for h in header]:
            raise RequestError("manifest_unreadable", f"manifest {key!r} has no {COLUMN!r} column in its header")
        column = [h.strip() for h in header].index(COLUMN)
        for row in rows:
            if not row or not any(cell.strip() for cell in row):
                continue
            yield row[column] if column < len(row) else ""
    except UnicodeDecodeError:
        raise RequestError("manifest_unreadable", f"manifest {key!r} is not UTF-8 text") from None
    except csv.Error as exc:
        raise RequestError("manifest_unreadable", f"manifest {key!r} is not readable CSV: {exc}") from None


def _parquet_values(raw: IO[bytes], key: str, chunk: int) -> Iterator[list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(raw)
        if COLUMN not in parquet.schema_arrow.names:
            raise RequestError("manifest_unreadable", f"manifest {key!r} has no {COLUMN!r} column")
        for batch in parquet.iter_batches(batch_size=chunk, columns=[COLUMN]):
            values = batch.column(0)
            if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
                values = values.cast(pa.string())
            yield ["" if v is None else v for v in values.to_pylist()]
    except RequestError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise RequestError("manifest_unreadable", f"manifest {key!r} is not a readable Parquet file: {exc}") from None


def iter_manifest(store, key: str, *, chunk: int = CHUNK, max_ids: int | None = None) -> Iterator[list[str]]:
    """The manifest's ids as given (not yet checked), ``chunk`` at a time, streamed.
    Over ``max_ids``: ``manifest_too_large`` (raised when the reader gets there)."""
    count = 0
    with _open(store, key) as raw:
        if manifest_format(key) == "parquet":
            parts: Iterator[list[str]] = _parquet_values(raw, key, chunk)
        else:
            values = _csv_values(raw, key) if manifest_format(key) == "csv" else _text_lines(raw, key)
            parts = _chunks(values, chunk)
        for part in parts:
            count += len(part)
            if max_ids is not None and count > max_ids:
                raise too_large(key, max_ids)
            yield part


def _chunks(values: Iterator[str], size: int) -> Iterator[list[str]]:
    part: list[str] = []
    for value in values:
        part.append(value)
        if len(part) >= size:
            yield part
            part = []
    if part:
        yield part


def too_large(key: str, max_ids: int) -> RequestError:
    return RequestError("manifest_too_large", f"manifest {key!r} lists more than {max_ids:,} ids "
                                              f"(BULKOPS_MAX_MANIFEST_IDS): split it")


def manifest_sha256(store, key: str) -> str:
    """The sha256 of the manifest's stored bytes."""
    digest = hashlib.sha256()
    with _open(store, key) as raw:
        while block := raw.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def inspect_manifest(store, creator_id: str, key: str, *, max_ids: int) -> ManifestInfo:
    """Check a manifest before a run starts: the key, that it exists and reads in its
    format to the end, and its size in ids. Its sha256 (of the stored bytes) and lines."""
    check_manifest_key(creator_id, key)
    sha256 = manifest_sha256(store, key)
    lines = 0
    for part in iter_manifest(store, key, max_ids=max_ids):
        lines += len(part)
    if lines == 0:
        raise RequestError("empty_selection", f"manifest {key!r} lists no ids")
    return ManifestInfo(key=key, sha256=sha256, lines=lines)


def upload_manifest(store, creator_id: str, source: IO[bytes], *, max_ids: int, suffix: str = ".txt") -> ManifestInfo:
    """Store a manifest read from ``source`` (a file or a request body, streamed) at
    ``manifests/{creator_id}/{sha256}{suffix}``: the same list always gets the same key.
    Text is counted as it streams; over ``max_ids`` lines it is refused and nothing stays."""
    if suffix not in (".txt", ".csv", ".parquet"):
        raise RequestError("bad_manifest", "a manifest is .txt (one id per line), .csv or .parquet")
    prefix = manifest_prefix(creator_id)
    upload = f"{prefix}.upload-{os.urandom(8).hex()}{suffix}"
    staging = store.staging_key(upload)
    digest = hashlib.sha256()
    newlines = 0
    raw = store.open(staging, "wb")
    try:
        while block := source.read(READ_BYTES):
            digest.update(block)
            newlines += block.count(b"\n")
            if suffix == ".txt" and newlines > max_ids + 1:
                raise too_large("(upload)", max_ids)
            raw.write(block)
    except BaseException:
        store.abandon(raw, staging)
        raise
    raw.close()
    store.publish(staging, upload)
    key = f"{prefix}{digest.hexdigest()}{suffix}"
    try:
        lines = sum(len(part) for part in iter_manifest(store, upload, max_ids=max_ids))
        if lines == 0:
            raise RequestError("empty_selection", "the manifest lists no ids")
        store.publish(upload, key)  # the same ids again: replaced, so its retention starts anew
    except BaseException:
        store.delete(upload)
        raise
    return ManifestInfo(key=key, sha256=digest.hexdigest(), lines=lines)

