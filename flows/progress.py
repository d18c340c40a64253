"""An operation's progress, kept as structure and rendered as text.

The flow counts items as its batches finish, and, in between, the items the running
batches report done so far (``tasks/ticks.py``: one slot per batch, summed here, so
concurrent batches never overwrite each other's counts). It keeps the counts as JSON in
the metadata of the run's progress artifact (``PROGRESS_KEY``), which ``service/status``
reads back; the bar and the text the Prefect UI shows are drawn from the same counts.
The artifact is updated at most once a second (and always at the end): each update is
an HTTP call to the Prefect server. In-process listeners (the CLI's bar) see every
change. The count shown never goes down while the run goes on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

from tasks.history import PROGRESS_KEY  # the progress artifact's metadata key holding the JSON

PROGRESS_UNIT = "videos"  # what an operation counts (cleanup: items of every kind)
PROGRESS_MIN_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


@dataclass
class ProgressEvent:
    operation_id: str
    operation: str
    current: int
    total: int
    batches_done: int
    batches: int
    eta_seconds: float | None
    result: dict[str, Any] | None = None  # set on the last event
    phase: str = "running"  # "created": the run exists, nothing counted yet


_listeners: list[Callable[[ProgressEvent], None]] = []
_listeners_lock = threading.Lock()


def add_progress_listener(listener: Callable[[ProgressEvent], None]) -> None:
    """Call ``listener`` in this process as batches finish (the CLI's progress bar)."""
    with _listeners_lock:
        _listeners.append(listener)


def remove_progress_listener(listener: Callable[[ProgressEvent], None]) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


@contextmanager
def listening(listener: Callable[[ProgressEvent], None]) -> Iterator[None]:
    """``listener`` hears this process's operations while the block runs."""
    add_progress_listener(listener)
    try:
        yield
    finally:
        remove_progress_listener(listener)


def notify(event: ProgressEvent) -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event)
        except Exception:  # a broken display must not break the operation
            log.exception("progress listener failed")


def progress_description(current: int, total: int, batches_done: int, batches: int, eta: float | None,
                         unit: str = PROGRESS_UNIT) -> str:
    eta_text = "done" if current >= total else ("ETA --" if eta is None else f"ETA {eta:.0f}s")
    return f"{current}/{total} {unit} · {batches_done}/{batches} batches · {eta_text}"


def percent(current: int, total: int) -> float:
    return 100.0 if total == 0 else round(100.0 * current / total, 2)


@dataclass
class Progress:
    """Counts of one operation: ``current`` items done of ``total``, batches done of
    ``batches``. Items counted before any batch (ids refused per item up front) are in
    ``current`` from the start and left out of the rate behind the ETA."""

    operation_id: str
    operation: str
    total: int
    batches: int
    current: int = 0
    started: float = field(default_factory=time.monotonic)
    batches_done: int = 0
    eta_seconds: float | None = None
    _artifact_id: uuid.UUID | None = None
    _posted_at: float = 0.0
    _posted: tuple[int, int] | None = None
    _planned: int = 0
    _finished: set[int] = field(default_factory=set)  # batches whose outcome is counted
    _in_flight: int = 0  # items the running batches report done so far
    _shown: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _delivery: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self, planned_items: int) -> None:
        """Create the run's progress artifact with the counts before any batch."""
        self._planned = planned_items
        self.started = time.monotonic()  # the ETA's rate counts from the batches' start, not the planning
        with get_client(sync_client=True) as client:
            artifact = client.create_artifact(ArtifactCreate(
                type="progress", data=percent(self.current, self.total), description=self.description(),
                metadata_=self._metadata(), flow_run_id=uuid.UUID(self.operation_id)))
        self._artifact_id = artifact.id
        self._posted = (self.current, 0)
        notify(self.event())

    def advance(self, processed: int, *, left_out: int = 0, batch_index: int | None = None) -> None:
        """One batch finished: ``processed`` items done, ``left_out`` no longer requested."""
        with self._lock:
            self.total -= left_out
            self._planned -= left_out
            self.batches_done += 1
            self.current += processed
            if batch_index is not None:
                self._finished.add(batch_index)
            self._recount()
            due = self.batches_done == self.batches or time.monotonic() - self._posted_at >= PROGRESS_MIN_INTERVAL_S
        if due:
            self.post()
        self._deliver()

    def in_batches(self, slots: dict[int, int]) -> None:
        """The running batches' own counts so far (``{batch index: items done}``); the
        slots of batches already counted are ignored."""
        with self._lock:
            in_flight = sum(n for index, n in slots.items() if index not in self._finished)
            if in_flight == self._in_flight:
                return
            self._in_flight = in_flight
            before = self._shown
            self._recount()
            if self._shown == before:
                return
            due = time.monotonic() - self._posted_at >= PROGRESS_MIN_INTERVAL_S
        if due:
            self.post()
        self._deliver()

    def _deliver(self) -> None:
        """Tell the listeners, one event at a time, each drawn from the counts as they
        are when it goes out (so two threads never deliver them out of order)."""
        with self._delivery:
            with self._lock:
                event = self.event()
            notify(event)

    def _recount(self) -> None:
        self._shown = min(max(self._shown, self.current + self._in_flight), max(self.total, self.current))
        elapsed = time.monotonic() - self.started
        counted = max(self._shown - (self.total - self._planned), 0)  # done by batches, not up front
        self.eta_seconds = elapsed / counted * max(self.total - self._shown, 0) if counted else None

    @property
    def shown(self) -> int:
        """Items done as far as anyone can tell now: finished batches plus running ones."""
        return max(self._shown, self.current)

    def settle(self) -> None:
        """The run is ending without a result: show only what finished batches did
        (running batches' own counts may be rolled back), and send it."""
        with self._lock:
            self._in_flight = 0
            self._shown = self.current
        self.post()

    def post(self) -> None:
        """Send the counts to the run's progress artifact (one HTTP call) if they changed."""
        with self._lock:
            if self._artifact_id is None or self._posted == (self.shown, self.batches_done):
                return
            self._posted_at = time.monotonic()
            self._posted = (self.shown, self.batches_done)
            update = ArtifactUpdate(data=percent(self.shown, self.total), description=self.description(),
                                    metadata_=self._metadata())
        with get_client(sync_client=True) as client:
            client.update_artifact(self._artifact_id, update)

    def snapshot(self) -> dict[str, Any]:
        return {"current": self.shown, "total": self.total, "batches_done": self.batches_done,
                "batches": self.batches, "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1)}

    def description(self) -> str:
        return progress_description(self.shown, self.total, self.batches_done, self.batches, self.eta_seconds,
                                    unit="items" if self.operation == "cleanup" else PROGRESS_UNIT)

    def event(self, result: dict[str, Any] | None = None) -> ProgressEvent:
        return ProgressEvent(self.operation_id, self.operation, self.shown, self.total, self.batches_done,
                             self.batches, self.eta_seconds, result=result)

    def _metadata(self) -> dict[str, str]:
        return {PROGRESS_KEY: json.dumps(self.snapshot())}
