"""What every batch task shares: resources from settings, and the stop check."""

from __future__ import annotations

import threading
import time
from functools import lru_cache

from prefect.variables import Variable

from config import get_settings
from videolib.db.engine import get_engine
from videolib.storage import ObjectStore

STOP_PREFIX = "bulkops-stop-"
_STOP_TTL_S = 1.0
_stop_cache: dict[str, tuple[float, bool]] = {}
_stop_lock = threading.Lock()
_stop_refreshing: set[str] = set()


def stop_variable_name(operation_id: str) -> str:
    return f"{STOP_PREFIX}{operation_id}"


def stop_requested(operation_id: str) -> bool:
    """True once someone asked this operation to stop (a Prefect Variable keyed by run id).

    Prefect's own cancel kills the flow's process; this flag lets the run end
    ``Cancelled`` after the batches in flight, with its progress and result kept.
    Reads are cached for a second, and one thread refreshes a stale value while the
    others use it, so hundreds of batches on many threads cost a few API calls.
    """
    now = time.monotonic()
    with _stop_lock:
        cached = _stop_cache.get(operation_id)
        if cached and (cached[1] or now - cached[0] < _STOP_TTL_S):
            return cached[1]
        refreshing = operation_id in _stop_refreshing
        if refreshing and cached:
            return cached[1]
        _stop_refreshing.add(operation_id)
    try:
        stopped = bool(Variable.get(stop_variable_name(operation_id), default=None))
    finally:
        with _stop_lock:
            _stop_refreshing.discard(operation_id)
    with _stop_lock:
        # A stop is final: a slower reader's stale "not stopped" must not overwrite it.
        if not (_stop_cache.get(operation_id) or (0.0, False))[1]:
            _stop_cache[operation_id] = (now, stopped)
        return _stop_cache[operation_id][1]


def request_stop(operation_id: str) -> None:
    """Ask a running operation to stop after its batches in flight (any process)."""
    with _stop_lock:  # this process sees it at once
        _stop_cache[operation_id] = (time.monotonic(), True)
    Variable.set(stop_variable_name(operation_id), True, overwrite=True)


def clear_stop(operation_id: str) -> None:
    try:
        Variable.unset(stop_variable_name(operation_id))
    finally:
        with _stop_lock:
            _stop_cache.pop(operation_id, None)


def engine():
    return get_engine(get_settings().database_url)


@lru_cache(maxsize=8)
def _store(url: str, endpoint: str | None) -> ObjectStore:
    return ObjectStore.from_url(url, endpoint_url=endpoint)


def store() -> ObjectStore:
    settings = get_settings()
    return _store(settings.storage_url, settings.s3_endpoint_url)
