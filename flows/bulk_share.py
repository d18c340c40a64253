"""The child run of a split operation (``flows/split.py``): one share of its batches, run
on whichever worker took it, as the operation itself."""

# No `from __future__ import annotations` here: Prefect's serve() runner pickles the flow
# function by value, and string annotations could not be resolved in the run's process.

import json
import uuid
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.states import Cancelled, Completed
from pydantic import Field

from flows.runners import task_runner
from flows.split import MAX_SPLIT, batch_task, outcome_key, read_share
from tasks.resources import store
from tasks.stop import VARIABLES
from tasks.ticks import forget, release


@flow(
    name="bulk-share",
    flow_run_name="share-{share}-of-{parent_id}",
    task_runner=task_runner(),
    validate_parameters=True,
)
def bulk_share(
    parent_id: Annotated[str, Field(min_length=36, max_length=36)],
    share: Annotated[int, Field(ge=0, le=2 * MAX_SPLIT)],
):
    """One share of a split operation's batches (started by the operation's own run; not by hand).

    Args:
        parent_id: The operation (its run id) whose batches these are.
        share: Which share of them (its document is operations/{parent_id}/shares/{share}.json in storage).
    """
    parent_id = str(uuid.UUID(parent_id))
    logger = get_run_logger()
    spec = read_share(parent_id, share)
    task, indices = batch_task(spec["operation"]), spec["indices"]
    logger.info("%s: batches %s..%s of operation %s", spec["operation"], indices[0], indices[-1], parent_id)
    stopped = False  # a batch skipped its items: the operation's stop flag was up
    for index, future in _in_flight(task, spec, indices, parent_id, spec.get("in_flight") or len(indices)):
        try:
            outcome = future.result()
        except Exception as exc:  # retries exhausted: the parent reports the batch's items
            outcome = {"batch_error": f"{type(exc).__name__}: {exc}"[:500]}
        stopped = stopped or bool(outcome.get("skipped"))
        store().put(outcome_key(parent_id, index), json.dumps(outcome).encode())
        forget(parent_id, index)  # counted from its outcome now: its in-batch count goes
    release(parent_id)
    if stopped or VARIABLES.requested(parent_id):
        return Cancelled(message=f"operation {parent_id} was stopped; batches not started were skipped")
    return Completed(message=f"{len(indices)} batches of operation {parent_id}")


def _in_flight(task, spec: dict, indices: list[int], parent_id: str, window: int):
    """``(index, future)`` of the share's batches as they end, with at most ``window``
    submitted at once (the share's part of the operation's BULKOPS_TASK_WORKERS)."""
    queue = list(zip(spec["batches"], indices))
    queue.reverse()
    pending: dict = {}

    def submit() -> None:
        batch, index = queue.pop()
        future = task.submit(batch, index, operation_id=parent_id, stop=VARIABLES, **spec["task_kwargs"])
        pending[future.task_run_id] = (index, future)

    while queue and len(pending) < window:
        submit()
    while pending:
        done = next(as_completed([future for _index, future in pending.values()]))
        yield pending.pop(done.task_run_id)
        if queue:
            submit()
