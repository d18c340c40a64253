"""Stopping an operation: a flag its batches check as they start, and that its flow is
given, so that a test can drive a flow without Prefect's variables (``MemoryStop``).

``VariableStop`` (the one every run uses) keeps the flag in a Prefect Variable keyed by
the run id: any process can set it, and the run ends ``Cancelled`` after the batches in
flight, with its progress and result kept (Prefect's own cancel kills the process).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Protocol

from prefect.variables import Variable

log = logging.getLogger(__name__)


class StopFlag(Protocol):
    """What a flow and its batches need to know about stopping: read, set, and forget."""

    def requested(self, operation_id: str) -> bool: ...

    def prefetch(self, operation_id: str) -> object: ...

    def here(self, operation_id: str) -> None: ...

    def request(self, operation_id: str) -> None: ...

    def clear(self, operation_id: str) -> None: ...


STOP_PREFIX = "bulkops-stop-"
_STOP_TTL_S = 1.0
_STOP_WAIT_S = 10.0
_stop_cache: dict[str, tuple[float, bool]] = {}
_stop_lock = threading.Lock()
_stop_readers: dict[str, threading.Lock] = {}  # one reader of the Variable at a time


def stop_variable_name(operation_id: str) -> str:
    return f"{STOP_PREFIX}{operation_id}"


def stop_requested(operation_id: str) -> bool:
    """True once someone asked this operation to stop (a Prefect Variable keyed by run id).

    Prefect's own cancel kills the flow's process; this flag lets the run end
    ``Cancelled`` after the batches in flight, with its progress and result kept.
    Reads are cached for a second, and only one thread at a time reads the Variable:
    the others use the last value, or, before there is one, wait for that read. The
    flow reads it once while it plans (:func:`prefetch_stop`), so the batches that
    start together do not all ask the Prefect server at once.
    """
    now = time.monotonic()
    with _stop_lock:
        cached = _stop_cache.get(operation_id)
        if cached and (cached[1] or now - cached[0] < _STOP_TTL_S):
            return cached[1]
        reader = _stop_readers.setdefault(operation_id, threading.Lock())
    # Someone is reading: with a stale value at hand, use it; with none, wait for that
    # read (and after a failed or stuck one, read ourselves).
    if cached and not reader.acquire(blocking=False):
        return cached[1]
    locked = bool(cached) or reader.acquire(timeout=_STOP_WAIT_S)
    try:
        with _stop_lock:
            fresh = _stop_cache.get(operation_id)
            if fresh and fresh is not cached and (fresh[1] or time.monotonic() - fresh[0] < _STOP_TTL_S):
                return fresh[1]  # read while we waited
        stopped = bool(Variable.get(stop_variable_name(operation_id), default=None))
        with _stop_lock:
            # A stop is final: a slower reader's stale "not stopped" must not overwrite it.
            if not (_stop_cache.get(operation_id) or (0.0, False))[1]:
                _stop_cache[operation_id] = (now, stopped)
            return _stop_cache[operation_id][1]
    finally:
        if locked:
            reader.release()


def prefetch_stop(operation_id: str) -> threading.Thread:
    """Read the stop flag in the background now (the flow does while it plans)."""

    def read() -> None:
        try:
            stop_requested(operation_id)
        except Exception as exc:  # noqa: BLE001 - the batches read it again themselves
            log.debug("could not read the stop flag of %s: %s", operation_id, exc)

    # The caller's context: the same Prefect settings (API URL) as the flow's thread.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(read,), name="bulkops-stop-prefetch", daemon=True)
    thread.start()
    return thread


def stop_here(operation_id: str) -> None:
    """Stop the operation's batches in this process only: from now on the ones that have
    not started return unstarted. Nothing is written to the server (a terminated flow
    uses it: its run is ending anyway, and no one would clear a Variable)."""
    with _stop_lock:
        _stop_cache[operation_id] = (time.monotonic(), True)


def request_stop(operation_id: str) -> None:
    """Ask a running operation to stop after its batches in flight (any process)."""
    stop_here(operation_id)  # this process sees it at once
    Variable.set(stop_variable_name(operation_id), True, overwrite=True)


def clear_stop(operation_id: str) -> None:
    try:
        Variable.unset(stop_variable_name(operation_id))
    finally:
        with _stop_lock:
            _stop_cache.pop(operation_id, None)
            _stop_readers.pop(operation_id, None)


class VariableStop:
    """The stop flag in a Prefect Variable (``bulkops-stop-{operation_id}``), read at most
    once a second per process (see :func:`stop_requested`). Stateless: it pickles."""

    def requested(self, operation_id: str) -> bool:
        return stop_requested(operation_id)

    def prefetch(self, operation_id: str) -> threading.Thread:
        return prefetch_stop(operation_id)

    def here(self, operation_id: str) -> None:
        stop_here(operation_id)

    def request(self, operation_id: str) -> None:
        request_stop(operation_id)

    def clear(self, operation_id: str) -> None:
        clear_stop(operation_id)


class MemoryStop:
    """A stop flag in this process's memory (tests, and runs that nobody stops from outside)."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def requested(self, operation_id: str) -> bool:
        return operation_id in self.stopped

    def prefetch(self, operation_id: str) -> None:
        return None

    def here(self, operation_id: str) -> None:
        self.stopped.add(operation_id)

    request = here

    def clear(self, operation_id: str) -> None:
        self.stopped.discard(operation_id)


VARIABLES = VariableStop()
