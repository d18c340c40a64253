"""What every batch task shares: resources from settings, and the stop check."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from functools import lru_cache

from prefect.variables import Variable

from config import get_settings
from videolib.db.engine import get_engine
from videolib.storage import ObjectStore

log = logging.getLogger(__name__)

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


def engine():
    return get_engine(get_settings().database_url)


@lru_cache(maxsize=8)
def _store(url: str, endpoint: str | None) -> ObjectStore:
    return ObjectStore.from_url(url, endpoint_url=endpoint)


def store() -> ObjectStore:
    settings = get_settings()
    return _store(settings.storage_url, settings.s3_endpoint_url)
