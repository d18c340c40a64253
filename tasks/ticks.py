"""Items done inside the batches of an operation, for progress that moves before a
batch ends, and the ticker a batch is given (``videolib.operation.Ticker``).

Each batch owns its slot (``operation_id``, batch index): a batch only raises its own
count, and the flow sums the slots of the batches still running with the counts of the
finished ones, so concurrent batches never overwrite each other (no last writer wins).
A slot is dropped when its batch's outcome is counted.

Where the slot lives depends on where the batch runs:

- in the flow's own process (Prefect's thread pool, the default): a dict here, no I/O;
- in another process (a process pool or Dask task runner, a worker elsewhere): a Prefect
  Variable per running batch, ``bulkops-tick-<operation>-<batch>``, written at most once
  per ``PUBLISH_S``; the flow reads them all with one call (:func:`remote_in_flight`) and
  deletes them when the run ends (:func:`forget_remote`).

The flow says it is the home of an operation's slots (:func:`watch`, keyed by process
id, so a forked child does not think it is home).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from prefect import get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.stop import StopFlag

log = logging.getLogger(__name__)

TICK_PREFIX = "bulkops-tick-"
PUBLISH_S = 1.0  # a batch in another process sends its count at most this often

_counts: dict[str, dict[int, int]] = {}
_home: dict[str, int] = {}  # operation -> pid of the process whose flow sums its slots
_lock = threading.Lock()


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


def tick_variable_name(operation_id: str, batch_index: int) -> str:
    return f"{TICK_PREFIX}{operation_id}-{batch_index}"


def _remote_variables(client, operation_id: str) -> list:
    prefix = f"{TICK_PREFIX}{operation_id}-"
    response = client.request("POST", "/variables/filter",
                              json={"variables": {"name": {"like_": prefix}}, "limit": None})
    return [v for v in response.json() if str(v.get("name", "")).startswith(prefix)]


def remote_in_flight(operation_id: str) -> dict[int, int]:
    """The counts that batches running in other processes sent (one HTTP call)."""
    prefix = f"{TICK_PREFIX}{operation_id}-"
    slots: dict[int, int] = {}
    with get_client(sync_client=True) as client:
        for variable in _remote_variables(client, operation_id):
            index, value = variable["name"][len(prefix):], variable.get("value")
            if index.isdigit() and isinstance(value, int) and value >= 0:
                slots[int(index)] = value
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


class BatchTicker:
    """The ticker of one batch: counts into its slot, and stops on the operation's flag."""

    def __init__(self, operation_id: str, batch_index: int, stop: StopFlag):
        self.operation_id, self.batch_index, self.stop = operation_id, batch_index, stop
        self._home = is_home(operation_id)
        self._sent_at = 0.0
        self._sent = 0
        self._created = False

    def done(self, items: int) -> None:
        if self._home:
            report(self.operation_id, self.batch_index, items)
            return
        now = time.monotonic()
        if items <= self._sent or now - self._sent_at < PUBLISH_S:
            return
        self._sent_at, self._sent = now, items
        try:
            self._publish(items)
        except Exception as exc:  # noqa: BLE001 - a progress courtesy: the batch goes on without it
            log.debug("could not send the count of batch %s: %s", self.batch_index, exc)

    def _publish(self, items: int) -> None:
        name = tick_variable_name(self.operation_id, self.batch_index)
        with get_client(sync_client=True) as client:
            if not self._created:
                try:
                    client.create_variable(VariableCreate(name=name, value=items, tags=["bulkops-tick"]))
                    self._created = True
                    return
                except ObjectAlreadyExists:  # a retry of this batch: the slot is there already
                    self._created = True
            client.update_variable(VariableUpdate(name=name, value=items))

    def stopping(self) -> bool:
        return self.stop.requested(self.operation_id)
