"""Items done inside the batches of this process's operations, for progress that
moves before a batch ends, and the ticker a batch is given (``videolib.operation.Ticker``).

Each batch owns its slot (``operation_id``, batch index): a batch only raises its own
count, and the flow sums the slots of the batches still running with the counts of the
finished ones, so concurrent batches never overwrite each other (no last writer wins).
A slot is dropped when its batch's outcome is counted.
"""

from __future__ import annotations

import threading

from tasks.stop import StopFlag

_counts: dict[str, dict[int, int]] = {}
_lock = threading.Lock()


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
        else:
            _counts.get(operation_id, {}).pop(batch_index, None)


class BatchTicker:
    """The ticker of one batch: counts into its slot, and stops on the operation's flag."""

    def __init__(self, operation_id: str, batch_index: int, stop: StopFlag):
        self.operation_id, self.batch_index, self.stop = operation_id, batch_index, stop

    def done(self, items: int) -> None:
        report(self.operation_id, self.batch_index, items)

    def stopping(self) -> bool:
        return self.stop.requested(self.operation_id)
