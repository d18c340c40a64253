"""``Idempotency-Key`` on the API's POSTs: the same key with the same body within
``WINDOW_S`` (24 h) answers what the first request answered (the same operation, not a
second run); the same key with another body is ``idempotency_conflict``. Keys are per
creator.

The first answer is kept in storage (``requests/{creator}/idempotency/{sha256(key)}.json``:
it survives a restart of ``serve``), and requests with one key are taken one at a time
in this process, so two that race start one run.

    with idempotent(creator_id, key, fingerprint) as memo:
        if memo.answer is None:
            memo.answer = start_it()
        return memo.answer
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from videolib.ids import RequestError

WINDOW_S = 24 * 3600
MAX_KEY_LENGTH = 255

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def fingerprint(route: str, body: dict[str, Any]) -> str:
    """What "the same body" means: the route and the parsed body, canonically."""
    return hashlib.sha256(json.dumps([route, body], sort_keys=True, separators=(",", ":"),
                                     default=str).encode()).hexdigest()


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise RequestError("usage", f"`Idempotency-Key` must be 1-{MAX_KEY_LENGTH} printable characters")
    return key


@dataclass
class Memo:
    answer: dict[str, Any] | None = None


def _record_key(creator_id: str, key: str) -> str:
    return f"requests/{creator_id}/idempotency/{hashlib.sha256(key.encode()).hexdigest()}.json"


@contextmanager
def idempotent(creator_id: str, key: str, body_fingerprint: str, *, now: float | None = None) -> Iterator[Memo]:
    """The answer already given to this key and body (``memo.answer``), or room to give
    one: what the block leaves in ``memo.answer`` is kept for the next request."""
    from service.environment import ready_store

    check_key(key)
    with _locks_guard:
        lock = _locks.setdefault((creator_id, key), threading.Lock())
    with lock:
        store = ready_store()
        record_key = _record_key(creator_id, key)
        memo = Memo()
        try:
            record = json.loads(store.get(record_key))
        except (FileNotFoundError, ValueError):
            record = None
        clock = time.time() if now is None else now
        if record is not None and clock - float(record.get("at", 0)) < WINDOW_S:
            if record.get("body") != body_fingerprint:
                raise RequestError("idempotency_conflict", "this Idempotency-Key was used in the last 24 h with "
                                                           "another request body: use a new key for a new request")
            memo.answer = record["answer"]
            yield memo
            return
        yield memo
        if memo.answer is not None:
            store.put(record_key, json.dumps({"at": clock, "body": body_fingerprint, "answer": memo.answer}).encode())
