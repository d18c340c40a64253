"""Python's cyclic garbage collector, tuned while bulk work runs.

A bulk batch allocates hundreds of thousands of short-lived containers (a chunk and a
row tuple per transcript chunk, record lists, pickled replies), none of which form
reference cycles: reference counting frees them. With CPython's default thresholds
(700, 10, 10) they still trigger a young collection every 700 allocations and a full
one every 70,000, and a full collection walks every object in the process: in a
Prefect flow run that is Prefect's whole heap, with the GIL held, so every batch
thread waits. Measured on a 20k-video reprocess here: the collector ran ~1,300 times
for ~1.7 s of GIL time in the flow's process.

``bulk_gc()`` (re-entrant, process-wide, refcounted) raises the young threshold while
it is held and moves what existed before into the permanent generation
(``gc.freeze``), so full collections skip the long-lived heap; the last holder to leave
restores the thresholds and unfreezes. Cycles created meanwhile are still collected.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Young-generation threshold while bulk work runs (CPython's default is 700).
BULK_THRESHOLD0 = 20_000

_lock = threading.Lock()
_holders = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def bulk_gc() -> Iterator[None]:
    """Hold the bulk collector settings for the block (see the module's doc)."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            _saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(BULK_THRESHOLD0, _saved[0]), _saved[1], _saved[2])
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                gc.unfreeze()
                _saved = None


def tune_worker_gc() -> None:
    """For a process that only does bulk work (the compute pool's workers): freeze what
    the imports made and keep the young threshold high for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(BULK_THRESHOLD0, *gc.get_threshold()[1:])
