"""Status reads shared by everyone asking about the same operation at once: a document
read from Prefect is reused for ``FRESH_S`` (so fifty pollers of one run cost one read a
quarter second, not fifty), and a final one for good (it never changes again).

The Server-Sent Events of ``GET /bulk/{id}/events`` are drawn from the same reads:
:func:`events` yields ``(event id, event name, document)`` each time the document
changes, and ends with the final one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

FRESH_S = 0.25  # how old a shared read of a running operation may be
POLL_S = 0.25  # how often an event stream looks again (Prefect's progress is written at most once a second)
KEEPALIVE_S = 15.0
_FINAL_KEPT = 10_000

# Set when the server stops: open streams end (a client reconnects with Last-Event-ID),
# so that the server does not wait for them.
STOPPING = threading.Event()

_lock = threading.Lock()
_fresh: dict[str, tuple[float, dict[str, Any] | None]] = {}
_final: OrderedDict[str, dict[str, Any]] = OrderedDict()
_reading: dict[str, threading.Lock] = {}


def shared_status(operation_id: str) -> dict[str, Any] | None:
    """The status document (None: no such operation), read at most once per ``FRESH_S``
    whoever asks; a final document is kept."""
    from service.status import FINAL, read_status

    with _lock:
        if operation_id in _final:
            return _final[operation_id]
        hit = _fresh.get(operation_id)
        if hit and time.monotonic() - hit[0] < FRESH_S:
            return hit[1]
        reader = _reading.setdefault(operation_id, threading.Lock())
    with reader:  # one read at a time per operation; the others take its answer
        with _lock:
            hit = _fresh.get(operation_id)
            if hit and time.monotonic() - hit[0] < FRESH_S:
                return hit[1]
        document = read_status(operation_id)
        with _lock:
            settled = document is not None and document["status"] in FINAL and document.get("result") is not None
            # (a webhook still being retried changes the document: not settled yet)
            if settled and (document.get("webhook") or {"delivered": True})["delivered"]:
                _final[operation_id] = document
                _fresh.pop(operation_id, None)
                while len(_final) > _FINAL_KEPT:
                    _final.popitem(last=False)
            else:
                _fresh[operation_id] = (time.monotonic(), document)
                if len(_fresh) > _FINAL_KEPT:
                    _fresh.clear()
        return document


def event_id(document: dict[str, Any]) -> str:
    """What a client has seen: the status and the count (``Last-Event-ID`` resumes from it)."""
    return f"{document['status']}.{document['progress']['current']}"


async def events(operation_id: str, *, last_event_id: str | None, disconnected) -> AsyncIterator[tuple]:
    """``(id, name, document)`` whenever the status document changes (``progress`` while
    it runs, ``state`` when its status changes), then ``(id, "result", document)`` once
    it has ended; ``(None, None, None)`` every ``KEEPALIVE_S`` of silence. Nothing that a
    client with ``last_event_id`` has already seen is sent again."""
    from service.status import FINAL

    last_id, last_status = last_event_id, (last_event_id or "").split(".")[0] or None
    quiet_since = time.monotonic()
    while not await disconnected() and not STOPPING.is_set():
        document = await run_in_threadpool(shared_status, operation_id)
        if document is None:
            return
        now_id = event_id(document)
        if document["status"] in FINAL:
            if now_id != last_id or last_status not in FINAL:
                yield now_id, "result", document
            return
        if now_id != last_id:
            yield now_id, ("state" if document["status"] != last_status else "progress"), document
            last_id, last_status = now_id, document["status"]
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= KEEPALIVE_S:
            yield None, None, None
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)
