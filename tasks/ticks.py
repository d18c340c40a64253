"""Items done inside the batches of an operation, for progress that moves before a
batch ends, and the ticker a batch is given (``videolib.operation.Ticker``).

Each batch owns its slot (``operation_id``, batch index): a batch only raises its own
count, and the flow sums the slots of the batches still running with the counts of the
finished ones, so concurrent batches never overwrite each other (no last writer wins).
A slot is dropped when its batch's outcome is counted.

Where the slot lives depends on where the batch runs:

- in the flow's own process (Prefect's thread pool, the default): a dict here, no I/O;
- in another process (a process pool or Dask task runner, a share on a worker elsewhere):
  the same slots there, sent as one Prefect Variable per process,
  ``bulkops-tick-<operation>-<process token>`` = ``{batch index: done}``, at most once per
  ``PUBLISH_S`` (one request a second per process however many batches it runs; a
  Variable per batch cost 5.7 requests per batch at 100k); the flow reads them all with
  one call (:func:`remote_in_flight`) and deletes them when the run ends
  (:func:`forget_remote`).

The flow says it is the home of an operation's slots (:func:`watch`, keyed by process
id, so a forked child does not think it is home).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.stop import StopFlag

log = logging.getLogger(__name__)

TICK_PREFIX = "bulkops-tick-"
PUBLISH_S = 1.0  # a process running batches of another process's flow sends their counts at most this often

_counts: dict[str, dict[int, int]] = {}
_home: dict[str, int] = {}  # operation -> pid of the process whose flow sums its slots
_lock = threading.RLock()  # re-entered: a publisher is made under it and names itself under it


def watch(operation_id: str) -> None:
    """This process runs the operation's flow: its batches here count into local slots."""
    with _lock:
        _home[operation_id] = os.getpid()


def is_home(operation_id: str) -> bool:
    with _lock:
        return _home.get(operation_id) == os.getpid()


def report(operation_id: str, batch_index: int, done: int) -> None:
    """Batch ``batch_index`` of the operation has ``done`` items done so far."""
    with _lock:
        slots = _counts.setdefault(operation_id, {})
        if done > slots.get(batch_index, 0):
            slots[batch_index] = done


def in_flight(operation_id: str) -> dict[int, int]:
    """Items done so far by each batch of the operation still counting here."""
    with _lock:
        return dict(_counts.get(operation_id, {}))


def forget(operation_id: str, batch_index: int | None = None) -> None:
    """Drop one batch's slot (its outcome is counted), or every slot of the operation."""
    with _lock:
        if batch_index is None:
            _counts.pop(operation_id, None)
            _home.pop(operation_id, None)
        else:
            _counts.get(operation_id, {}).pop(batch_index, None)


def tick_variable_name(operation_id: str) -> str:
    """This process's Variable for the operation's batches running here."""
    return f"{TICK_PREFIX}{operation_id}-{_process_token()}"


def _process_token() -> str:
    """A name for this process among the operation's (a fork gets its own)."""
    global _token
    with _lock:
        if _token is None or _token[0] != os.getpid():
            _token = (os.getpid(), "p" + uuid.uuid4().hex[:12])
        return _token[1]


_token: tuple[int, str] | None = None
_clients: dict[tuple[int, str | None], Any] = {}


def _client():
    """One Prefect client per process and API (opened once: a client of its own per
    call costs a connection and a CSRF-token request on its first write)."""
    from prefect.settings import PREFECT_API_URL

    key = (os.getpid(), PREFECT_API_URL.value())
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            _clients[key] = client
        return client


def _remote_variables(client, operation_id: str) -> list:
    prefix = f"{TICK_PREFIX}{operation_id}-"
    response = client.request("POST", "/variables/filter",
                              json={"variables": {"name": {"like_": prefix}}, "limit": None})
    return [v for v in response.json() if str(v.get("name", "")).startswith(prefix)]


def remote_in_flight(operation_id: str) -> dict[int, int]:
    """The counts that batches running in other processes sent (one HTTP call): each
    process's Variable holds ``{batch index: items done}`` of its batches."""
    slots: dict[int, int] = {}
    for variable in _remote_variables(_client(), operation_id):
        value = variable.get("value")
        if not isinstance(value, dict):
            continue
        for index, done in value.items():
            if str(index).isdigit() and isinstance(done, int) and done >= 0:
                slots[int(index)] = max(done, slots.get(int(index), 0))
    return slots


def forget_remote(operation_id: str) -> int:
    """Delete the tick variables the operation's remote batches left; how many."""
    removed = 0
    with get_client(sync_client=True) as client:
        for variable in _remote_variables(client, operation_id):
            try:
                client.delete_variable_by_name(variable["name"])
                removed += 1
            except ObjectNotFound:
                pass
    return removed


class _Publisher:
    """This process's counts of one operation's batches, sent as one Variable at most
    once per ``PUBLISH_S`` whichever batch ticks (so the requests grow with time, not
    with batches: one PATCH a second per process)."""

    def __init__(self, operation_id: str):
        self.operation_id = operation_id
        self.name = tick_variable_name(operation_id)
        self.sent_at = 0.0
        self.sent: dict[str, int] = {}
        self.created = False
        self.busy = threading.Lock()

    def offer(self) -> None:
        if time.monotonic() - self.sent_at < PUBLISH_S or not self.busy.acquire(blocking=False):
            return  # sent a moment ago, or another batch of this process is sending now
        try:
            value = {str(index): done for index, done in sorted(in_flight(self.operation_id).items())[-MAX_SLOTS:]}
            if value == self.sent:
                return
            self.sent_at, self.sent = time.monotonic(), value
            self._send(value)
        except Exception as exc:  # noqa: BLE001 - a progress courtesy: the batches go on without it
            log.debug("could not send the counts of %s: %s", self.operation_id, exc)
        finally:
            self.busy.release()

    def _send(self, value: dict[str, int]) -> None:
        client = _client()
        if not self.created:
            try:
                client.create_variable(VariableCreate(name=self.name, value=value, tags=["bulkops-tick"]))
                self.created = True
                return
            except ObjectAlreadyExists:
                self.created = True
        client.update_variable(VariableUpdate(name=self.name, value=value))


MAX_SLOTS = 200  # the newest batches' counts a Variable carries (its value is at most 5,000 characters)
_publishers: dict[tuple[int, str], _Publisher] = {}


def _publisher(operation_id: str) -> _Publisher:
    key = (os.getpid(), operation_id)
    with _lock:
        publisher = _publishers.get(key)
        if publisher is None:
            publisher = _publishers[key] = _Publisher(operation_id)
        return publisher


def release(operation_id: str) -> None:
    """The batches of the operation in this (non-home) process are done: drop its counts
    and stop sending them (a share ends; the operation's own run deletes the Variables)."""
    forget(operation_id)
    with _lock:
        _publishers.pop((os.getpid(), operation_id), None)


class BatchTicker:
    """The ticker of one batch: counts into its slot, and stops on the operation's flag."""

    def __init__(self, operation_id: str, batch_index: int, stop: StopFlag):
        self.operation_id, self.batch_index, self.stop = operation_id, batch_index, stop
        self._home = is_home(operation_id)

    def done(self, items: int) -> None:
        report(self.operation_id, self.batch_index, items)
        if not self._home:
            _publisher(self.operation_id).offer()

    def stopping(self) -> bool:
        return self.stop.requested(self.operation_id)
