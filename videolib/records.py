"""The record of an operation that outlives Prefect's history: its result document,
written to storage at ``operations/{operation_id}.json`` as the operation ends
(``flows.operation``). Status reads Prefect first and this record once Prefect no
longer has the run (pruned by cleanup, or by the server's own ``db_vacuum``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

RECORD_PREFIX = "operations/"


def record_key(operation_id: str) -> str:
    """The record's storage key; the id must be a UUID (nothing else becomes a key)."""
    return f"{RECORD_PREFIX}{uuid.UUID(str(operation_id))}.json"


def write_record(store, document: dict[str, Any]) -> str:
    """Keep ``document`` (a result document, as stored) as its operation's record; the key."""
    key = record_key(document["operation_id"])
    store.put(key, json.dumps(document, separators=(",", ":"), sort_keys=True).encode())
    return key


def read_record(store, operation_id: str) -> dict[str, Any] | None:
    """The operation's record, or None when there is none (or the id is not a UUID)."""
    try:
        key = record_key(operation_id)
    except ValueError:
        return None
    try:
        return json.loads(store.get(key))
    except FileNotFoundError:
        return None


# The index of the runs cleanup pruned from Prefect, so that the operation list goes on
# past Prefect's history: one empty object per run, named so that a listing of a
# creator's folder is newest first and can be filtered without reading the records:
# ``operations/index/{creator or _}/{9999999999999 - started (ms):013d}-{status}-{operation}-{id}``.
INDEX_PREFIX = f"{RECORD_PREFIX}index/"
_NOBODY = "_"  # the folder of operations of the whole library (cleanup)
_NEVER = 9_999_999_999_999  # in milliseconds: year 2286


def index_key(document: dict[str, Any], started: float) -> str:
    """Where the pruned run of ``document`` (its record) is listed; ``started`` in epoch seconds."""
    folder = document.get("creator_id") or _NOBODY
    operation_id = str(uuid.UUID(str(document["operation_id"])))
    return (f"{INDEX_PREFIX}{folder}/{_NEVER - int(started * 1000):013d}-{document['status']}-{document['operation']}-"
            f"{operation_id}")


def write_index(store, document: dict[str, Any], started: float) -> str:
    key = index_key(document, started)
    store.put(key, b"")
    return key


def list_index(store, creator_id: str | None, *, status: str | None = None, operation: str | None = None,
               after: str | None = None, limit: int = 20) -> list[tuple[str, str]]:
    """``[(entry name, operation id)]`` of pruned runs, newest first, past ``after`` (an
    entry name a page ended on): the creator's (None: every creator's and cleanup's)."""
    prefix = f"{INDEX_PREFIX}{creator_id}" if creator_id is not None else INDEX_PREFIX.rstrip("/")
    try:
        keys = store.list_keys(prefix)
    except (ValueError, OSError):
        return []
    names = sorted(key.rsplit("/", 1)[-1] for key in keys)
    found: list[tuple[str, str]] = []
    for name in names:
        if after is not None and name <= after:
            continue
        parts = name.split("-", 3)
        if len(parts) != 4 or (status and parts[1] != status) or (operation and parts[2] != operation):
            continue
        found.append((name, parts[3]))
        if len(found) >= limit:
            break
    return found
