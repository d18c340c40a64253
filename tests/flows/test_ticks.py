"""In-batch counts from batches that run in another process than their flow (a process
pool, Dask, a share of a split operation on a worker): one Prefect Variable per process
and operation, whatever the number of batches, read back by the flow with one call."""

from __future__ import annotations

import uuid

import pytest
from prefect import get_client

from tasks import ticks

pytestmark = pytest.mark.usefixtures("prefect_harness")


class _Never:
    def requested(self, operation_id: str) -> bool:
        return False


def _tick_variables(operation_id: str) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        return {v.name: v.value for v in client.read_variables()
                if v.name.startswith(f"{ticks.TICK_PREFIX}{operation_id}")}


def test_batches_of_one_process_share_one_variable_and_the_flow_reads_them_all(monkeypatch):
    monkeypatch.setattr(ticks, "PUBLISH_S", 0.0)  # every tick goes out (the real one: at most once a second)
    operation_id = str(uuid.uuid4())  # not watched here: this process is not the flow's
    batches = [ticks.BatchTicker(operation_id, index, _Never()) for index in range(12)]
    for index, ticker in enumerate(batches):
        ticker.done(index + 1)
    batches[3].done(2)  # a count only goes up
    variables = _tick_variables(operation_id)
    assert len(variables) == 1, variables  # twelve batches, one Variable
    (value,) = variables.values()
    assert value == {str(index): index + 1 for index in range(12)}
    assert ticks.remote_in_flight(operation_id) == {index: index + 1 for index in range(12)}
    # A batch whose outcome was stored (a share does this) leaves the next send.
    ticks.forget(operation_id, 0)
    batches[1].done(5)
    assert ticks.remote_in_flight(operation_id)[1] == 5 and 0 not in ticks.remote_in_flight(operation_id)
    # The share ends; the operation's own run deletes what is left.
    ticks.release(operation_id)
    assert ticks.forget_remote(operation_id) == 1
    assert _tick_variables(operation_id) == {}


def test_a_second_process_adds_its_own_variable_and_the_counts_merge(monkeypatch):
    monkeypatch.setattr(ticks, "PUBLISH_S", 0.0)
    operation_id = str(uuid.uuid4())
    ticks.BatchTicker(operation_id, 0, _Never()).done(7)
    # Another process: another token, its own publisher (as after a fork or in a worker).
    monkeypatch.setattr(ticks, "_token", (-1, "pother"))
    monkeypatch.setattr(ticks.os, "getpid", lambda: -1)
    ticks.BatchTicker(operation_id, 1, _Never()).done(4)
    ticks.BatchTicker(operation_id, 0, _Never()).done(3)  # a retry of batch 0 there, behind
    assert len(_tick_variables(operation_id)) == 2
    assert ticks.remote_in_flight(operation_id) == {0: 7, 1: 4}
    monkeypatch.undo()
    assert ticks.forget_remote(operation_id) == 2


def test_the_home_process_counts_in_memory_and_sends_nothing(monkeypatch):
    monkeypatch.setattr(ticks, "PUBLISH_S", 0.0)
    operation_id = str(uuid.uuid4())
    ticks.watch(operation_id)
    try:
        ticks.BatchTicker(operation_id, 0, _Never()).done(9)
        assert ticks.in_flight(operation_id) == {0: 9}
        assert _tick_variables(operation_id) == {}
    finally:
        ticks.forget(operation_id)
