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
