"""The operation object every bulk flow runs on.

check the storage -> ``prepare`` (validate, resolve the creator's own ids) -> plan
batches -> map a task over them (bounded thread pool) -> progress as batches finish
(``flows/progress.py``) -> report of failed items -> result document (returned, and
stored as an artifact: ``flows/result.py``) -> final state:

- Completed when every item succeeded, ``Completed(name="Partial")`` when some failed,
- Failed when none succeeded or the run could not proceed,
- Cancelled when a stop was requested.

A stop comes in however it is asked for: the stop flag (Prefect Variables for every
real run, or whatever a caller sets with :func:`stop_flag`), the run's own state set to
Cancelling (the Prefect UI's Cancel, ``bulkops cancel``: a monitor thread reads it every
``STATE_POLL_S``), or a signal to the flow's process (SIGTERM from a worker or runner
that cancels, Ctrl-C or SIGTERM in the CLI that runs it). Every way does the same: no
new batch starts, the batches in flight finish or roll back whole (a reprocess batch
checks the flag between slices of its work), and within ``DRAIN_S`` the result
document is written with exact counts and the run ends Cancelled. A second signal
while draining leaves at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prefect import Task, get_client, get_run_logger, unmapped
from prefect.exceptions import TerminationSignal
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.context import FlowRunContext
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from config import get_settings
from flows import creator_tag
from flows import engine_fixes  # noqa: F401 - installs a fix to Prefect's flow engine (see the module)
from flows.progress import Progress, ProgressEvent, notify
from flows.result import final_state, publish, stored_document
from flows.slots import CreatorSlot, slot_for
from flows.split import Dispatch, check_split
from tasks import webhook
from tasks.resources import store
from tasks.stop import VARIABLES, StopFlag
from tasks.ticks import forget, forget_remote, in_flight, remote_in_flight, watch
from videolib.gc_tuning import bulk_gc
from videolib.ids import RequestError
from videolib.operation import BATCH_ERROR, BatchOutcome, ItemError, OperationResult, plan_batches
from videolib.records import record_key, write_record
from videolib.report import report_key
from videolib.storage import StorageUnavailable

DRY_RUN_TAG = "dry-run"
DRAIN_S = 20.0  # how long a stopped run waits for its batches in flight
STATE_POLL_S = 2.0  # how often a run reads its own state (a Cancelling set from outside)
TICK_S = 1.0  # how often the running batches' counts go to the progress
INTERRUPTS = (KeyboardInterrupt, TerminationSignal)

log = logging.getLogger(__name__)

_stop_flag: contextvars.ContextVar[StopFlag] = contextvars.ContextVar("bulkops_stop_flag", default=VARIABLES)


@contextlib.contextmanager
def stop_flag(flag: StopFlag) -> Iterator[StopFlag]:
    """Operations started in this context stop by ``flag`` instead of Prefect Variables."""
    token = _stop_flag.set(flag)
    try:
        yield flag
    finally:
        _stop_flag.reset(token)


@dataclass
class Plan:
    """Batches an operation planned itself (instead of a list of ids to cut).

    ``batches[i]`` is what task ``i`` receives first; ``sizes[i]`` its item count (for
    progress); ``failed_items(i, detail)`` the per-item errors when batch ``i`` fails
    whole after its retries.
    """

    batches: list[Any]
    sizes: list[int]
    failed_items: Callable[[int, str], list[ItemError]]


def current_operation_id() -> str:
    run_id = flow_run.id
    if not run_id:
        raise RuntimeError("an operation must run inside a Prefect flow run")
    return str(run_id)


class Operation:
    """One bulk operation in the current flow run: its result, its progress, its stop
    flag, and the final state it ends in however it ends."""

    def __init__(self, operation: str, creator_id: str | None, *, dry_run: bool = False, stop: StopFlag | None = None):
        self.operation_id = current_operation_id()
        self.stop = stop or _stop_flag.get()
        self.result = OperationResult(operation_id=self.operation_id, operation=operation, creator_id=creator_id,
                                      dry_run=dry_run)
        self.logger = get_run_logger()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.progress: Progress | None = None
        self.stopped_by: str | None = None  # what stopped the run, when something did
        self.draining = False  # stopped by a signal, waiting for the batches in flight
        self.abandoned = 0  # batches still running when that wait ran out
        # Batches run in this process (Prefect's thread pool) count into slots here; under
        # another task runner they may run elsewhere and send their counts through Prefect.
        context = FlowRunContext.get()
        runner = context.task_runner if context is not None else None
        self.remote_batches = runner is not None and not isinstance(runner, ThreadPoolTaskRunner)
        watch(self.operation_id)
        # The run exists: whoever started it in this process can name it now.
        notify(ProgressEvent(self.operation_id, operation, 0, 0, 0, 0, None, phase="created"))

    def run(
        self,
        *,
        prepare: Callable[[OperationResult], Sequence[str] | Plan],
        batch_task: Task,
        task_kwargs: dict[str, Any],
        batch_size: int,
        on_outcome: Callable[[int, BatchOutcome], None] | None = None,
        finish: Callable[[OperationResult, float], None] | None = None,
        cleanup: Callable[[], None] | None = None,
        split: int | None = None,
    ) -> State:
        """Run the operation and return its final state.

        ``prepare`` validates the request and resolves the selection: it sets
        ``result.requested``, adds per-item errors for ids it rejects, and returns the ids
        to process (cut into batches here) or its own ``Plan``; raising ``RequestError``
        refuses the whole request. ``batch_task`` is mapped over the batches as
        ``batch_task(batch, batch_index, operation_id=..., stop=..., **task_kwargs)`` and
        returns a ``BatchOutcome`` dict. ``on_outcome(index, outcome)`` sees each batch's
        outcome as it finishes; ``finish`` runs after the last batch (not on a refused
        request) with the result and the start time; ``cleanup`` runs last, however the
        run ends. ``split`` above one runs the batches as that many shares on the work
        pool's workers (``flows/split.py``; default ``BULKOPS_SPLIT``).
        """
        monitor = _Monitor(self)
        monitor.start()
        # Tagged first: a run waiting for its creator's slot is one of the creator's runs.
        tag_run(self.operation_id, self.logger, creator_id=self.result.creator_id, dry_run=self.result.dry_run)
        slot = slot_for(self.operation_id, self.result.operation, self.result.creator_id, logger=self.logger)
        try:
            if slot is not None:
                taken = self._take_slot(slot)
                if taken is not None:
                    return taken
            with bulk_gc():  # the collector skips Prefect's heap while the batches allocate
                return self._run(prepare, batch_task, task_kwargs, batch_size, on_outcome, finish, split)
        except INTERRUPTS as exc:
            if self.draining:
                raise  # a second signal: leave at once (the caller marks the run)
            # Stopped before its batches were mapped (or while it finished): nothing
            # more starts; what was done is counted, the rest is skipped.
            self._interrupted(exc)
            self.result.cancelled = True
            self.result.message = self.result.message or f"stopped on request ({self.stopped_by}) before it finished"
            return self.finalize()
        finally:
            if slot is not None:
                slot.release()
            monitor.stop()
            if cleanup is not None:
                try:
                    cleanup()
                except Exception:
                    self.logger.exception("cleanup after the operation failed")

    def _take_slot(self, slot: CreatorSlot) -> State | None:
        """Take the creator's slot (``flows/slots.py``): None once it is held (or when
        Prefect cannot count slots); the final state of a run that was cancelled while it
        waited, or waited ``BULKOPS_SLOT_WAIT`` in vain."""
        ended = slot.take(stopped=lambda: self.stopped_by is not None or self.stop.requested(self.operation_id))
        if ended is None:
            return None
        self.result.cancelled = True
        self.result.error, self.result.message = ended
        if self.result.error is None:
            self.result.message = f"stopped on request ({self.stopped_by or 'the stop flag'}) {self.result.message}"
        return self.finalize()

    def _run(self, prepare, batch_task, task_kwargs, batch_size, on_outcome, finish, split) -> State:
        result = self.result
        # The batches check the stop flag as they start: read it once now, while we plan,
        # rather than from every batch thread at once when the first round starts.
        self.stop.prefetch(self.operation_id)
        if result.dry_run:
            result.plan = {"videos": 0, "objects": 0, "bytes": 0}
        try:
            # Storage that cannot be used would fail every batch (or the export's file, or
            # the report) one by one: refuse the run at once instead, naming what is wrong.
            try:
                store().check()
            except StorageUnavailable as exc:
                raise exc.refusal() from None
            split = check_split(split)
            prepared = prepare(result)
        except RequestError as exc:
            self.logger.error("request refused: %s", exc.message)
            self.result.error = exc.code
            return self.abort(exc.message)
        except Exception as exc:  # the run cannot proceed (database unreachable, ...)
            self.logger.exception("could not resolve the selection")
            return self.abort(f"could not resolve the selection: {type(exc).__name__}: {exc}")
        plan = prepared if isinstance(prepared, Plan) else self._cut(list(prepared), batch_size)
        result.batches = len(plan.batches)
        self.progress = Progress(self.operation_id, result.operation, total=result.requested,
                                 batches=len(plan.batches), current=result.failed, started=self.started)
        self.progress.start(planned_items=sum(plan.sizes))
        self.logger.info("%s: %s items in %s batches", result.operation, sum(plan.sizes), len(plan.batches))
        if len(plan.batches) > 1 and split > 1:
            self._dispatch(plan, split, task_kwargs, on_outcome)
        elif plan.batches:
            self._map(plan, batch_task, task_kwargs, on_outcome)
        if (result.skipped or self.abandoned) and not result.aborted:
            # Batches that had not started when the stop was requested returned unstarted
            # (or rolled back what they had begun); batches still running when the drain
            # ran out of time are not done either (their items count as skipped).
            result.cancelled = True
            result.count_unstarted()
            result.message = (f"stopped on request ({self.stopped_by or 'the stop flag'}); "
                              f"{result.skipped} items left unstarted or rolled back")
        if finish is not None and not result.aborted:
            try:
                finish(result, self.started_wall)
            except Exception as exc:
                result.aborted = True
                result.message = f"could not finish the {result.operation}: {type(exc).__name__}: {exc}"
                self.logger.exception("could not finish the operation")
        return self.finalize()

    def _cut(self, ids: list[str], batch_size: int) -> Plan:
        settings = get_settings()
        batches = plan_batches(ids, batch_size=batch_size, max_batches=settings.max_batches,
                               workers=settings.task_workers)
        return Plan(batches=batches, sizes=[len(b) for b in batches],
                    failed_items=lambda i, detail: [ItemError(v, BATCH_ERROR, detail) for v in batches[i]])

    def _map(self, plan: Plan, batch_task: Task, task_kwargs: dict[str, Any], on_outcome) -> None:
        futures = batch_task.map(
            plan.batches,
            list(range(len(plan.batches))),
            operation_id=unmapped(self.operation_id),
            stop=unmapped(self.stop),
            **{k: unmapped(v) for k, v in task_kwargs.items()},
        )
        index_of = {future.task_run_id: i for i, future in enumerate(futures)}
        pending = {future.task_run_id: future for future in futures}
        try:
            try:
                self._collect(pending, index_of, plan, on_outcome)
            except INTERRUPTS as exc:
                # Cancelled by a signal (a worker's or runner's cancel, Ctrl-C or SIGTERM in
                # the CLI): no batch starts from now on; the ones in flight finish or roll
                # back, and are counted, before the result is written.
                self._interrupted(exc)
                self.draining = True
                try:
                    self._collect(pending, index_of, plan, on_outcome, timeout=DRAIN_S)
                except TimeoutError:
                    self.abandoned = len(pending)
                    self.logger.error("%s batches still running %ss after the cancel; their items are counted "
                                      "as skipped", len(pending), DRAIN_S)
                self.draining = False
        except BaseException:
            # A second signal, or a crash: batches that have not started must not start
            # while Prefect reports it (the pool would go on deleting), and the progress
            # must show where the run really got to; then Prefect ends the run.
            self._stop_batches()
            with contextlib.suppress(Exception):
                self.progress.settle()
            raise
        finally:
            forget(self.operation_id)

    def _dispatch(self, plan: Plan, split: int, task_kwargs: dict[str, Any], on_outcome) -> None:
        """The batches as ``split`` shares on the pool's workers, counted as they end."""
        dispatch = Dispatch(self, plan, task_kwargs, lambda i, outcome: self._count(i, outcome, on_outcome),
                            split)
        try:
            dispatch.start()
            try:
                dispatch.collect()
            except INTERRUPTS as exc:  # as in _map: nothing new starts, what runs is counted
                self._interrupted(exc)
                self.draining = True
                dispatch.collect(timeout=DRAIN_S)
                self.abandoned = len(plan.batches) - len(dispatch.counted)
                self.draining = False
        finally:
            dispatch.clear()

    def _collect(self, pending: dict, index_of: dict, plan: Plan, on_outcome, timeout: float | None = None) -> None:
        """Count each batch of ``pending`` as it finishes (removing it from ``pending``)."""
        for future in finished(list(pending.values()), timeout):
            pending.pop(future.task_run_id, None)
            index = index_of[future.task_run_id]
            try:
                outcome = BatchOutcome.from_dict(future.result())
            except Exception as exc:  # retries exhausted: every item of the batch failed
                detail = f"{type(exc).__name__}: {exc}"[:500]
                self.logger.error("batch %s failed after retries: %s", index, detail)
                outcome = BatchOutcome(errors=plan.failed_items(index, detail))
            self._count(index, outcome, on_outcome)

    def _count(self, index: int, outcome: BatchOutcome, on_outcome) -> None:
        """One batch's outcome into the result, the caller's hook and the progress."""
        result, progress = self.result, self.progress
        result.add(outcome)
        if on_outcome is not None and not result.aborted:
            try:
                on_outcome(index, outcome)
            except Exception as exc:  # e.g. the export's writer broke: the run cannot finish
                result.aborted = True
                result.message = f"{result.operation} could not proceed: {type(exc).__name__}: {exc}"
                self.logger.exception("stopping the %s", result.operation)
                self.stop.request(self.operation_id)  # batches not yet started return unstarted
        forget(self.operation_id, index)
        # What a whole-library run left out on the way is no longer requested; what a
        # cancel left unstarted or rolled back was not done.
        progress.advance(outcome.processed - outcome.skipped, left_out=sum(outcome.not_selected.values()),
                         batch_index=index)

    def _stop_batches(self) -> None:
        """No batch starts from now on: in this process at once, and, when batches may run
        in other processes, through the stop flag they read (a Prefect Variable)."""
        self.stop.here(self.operation_id)
        if self.remote_batches:
            try:
                self.stop.request(self.operation_id)
            except Exception as exc:  # noqa: BLE001 - the batches here are stopped; say what failed
                self.logger.warning("could not tell the batches in other processes to stop: %s", exc)

    def _interrupted(self, exc: BaseException) -> None:
        """A signal stops the run: no batch starts from now on."""
        self._stop_batches()
        if self.stopped_by is None:
            self.stopped_by = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        self.logger.warning("stopping (%s): no new batch starts; waiting up to %ss for the batches in flight",
                            self.stopped_by, DRAIN_S)

    def cancel_seen(self, how: str) -> None:
        """Someone set the run Cancelling (the UI, the API, ``bulkops cancel``)."""
        if self.stopped_by is None:
            self.stopped_by = how
            self.logger.warning("stopping (%s): no new batch starts", how)
        self._stop_batches()

    def abort(self, message: str) -> State:
        """End the run without running (more of) it: ``failed``, with ``message``."""
        self.result.aborted = True
        self.result.message = message
        return self.finalize()

    def finalize(self) -> State:
        """Report, artifacts, and the final state, for every way a run can end."""
        result = self.result
        result.duration_s = time.monotonic() - self.started
        result.count_unstarted()
        if result.failed and not result.dry_run and result.report_path is None:
            key = report_key(result.operation_id)
            try:
                result.write_report(store(), key)
                result.report_path = key
            except Exception:
                self.logger.exception("could not write the error report %s", key)
        document = result.to_dict()
        try:
            publish(document)
        except Exception:  # a Prefect server that cannot take them: the record below still has it
            self.logger.exception("could not store the result artifacts in Prefect; the operation's record "
                                  "in storage has its result")
        try:  # the record that outlives Prefect's history (status reads it once the run is pruned)
            write_record(store(), stored_document(document))
        except Exception:
            self.logger.exception("could not write the operation's record %s", record_key(result.operation_id))
        webhook.send(stored_document(document))  # one attempt, bounded; `serve` retries
        try:
            self.stop.clear(result.operation_id)
        except Exception:
            log.debug("no stop flag to clear for %s", result.operation_id)
        if self.abandoned:  # batches still running here must go on seeing the stop
            self.stop.here(result.operation_id)
        forget(result.operation_id)
        if self.remote_batches:
            try:
                forget_remote(result.operation_id)
            except Exception as exc:  # noqa: BLE001 - leftover counts, not the work
                log.debug("could not delete the tick variables of %s: %s", result.operation_id, exc)
        done = result.succeeded + result.failed  # skipped items were not done (a cancel)
        notify(Progress(result.operation_id, result.operation, total=result.requested, batches=0,
                        current=done).event(result=document))
        result.close()  # the report's spool (written above, or never to be)
        return final_state(document)


def finished(futures: list, timeout: float | None) -> Iterator:
    """``futures`` as they finish; TimeoutError once ``timeout`` seconds have passed with
    some still running. Not ``prefect.futures.as_completed(timeout=...)``: on the main
    thread its deadline is a SIGALRM, raised wherever the thread is when it fires, in the
    caller's code between two yields too: a drain's progress call to a slow Prefect server
    got a ``CancelledError`` there and the run crashed without its result (CI, Ctrl-C)."""
    if timeout is None:
        yield from as_completed(futures)
        return
    done: queue.SimpleQueue = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(done.put)  # called at once for one that has finished
    deadline = time.monotonic() + timeout
    for _ in range(len(futures)):
        try:
            yield done.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"batches still running after {timeout}s") from None


def tag_run(operation_id: str, logger, *, creator_id: str | None, dry_run: bool) -> None:
    """Give the run its creator's tag (``creator:<id>``, how runs are listed per creator)
    and, for a dry run, the ``dry-run`` tag, however it was started (the CLI and the API
    set them when they create it; a run from the UI gets them here)."""
    tags = list(flow_run.tags or [])
    wanted = ([creator_tag(creator_id)] if creator_id else []) + ([DRY_RUN_TAG] if dry_run else [])
    missing = [tag for tag in wanted if tag not in tags]
    if not missing:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(uuid.UUID(operation_id), tags=[*tags, *missing])
    except Exception as exc:  # a label, not the work: the run goes on without it
        logger.warning("could not tag the run %s: %s", ", ".join(missing), exc)


class _Monitor:
    """A thread beside the run: every ``TICK_S`` it sums the running batches' counts
    into the progress (``tasks/ticks.py``; one read of Prefect's variables when batches
    may run in other processes), and every ``STATE_POLL_S`` it reads the run's own state, so that a
    Cancelling set from outside (the UI, the API, ``bulkops cancel``) stops the run even
    when no runner is there to signal its process (a run the CLI executes in-process)."""

    def __init__(self, operation: Operation):
        self.operation = operation
        self._stopped = threading.Event()
        context = contextvars.copy_context()  # the flow's Prefect settings and client
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="bulkops-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        op = self.operation
        next_state = time.monotonic() + STATE_POLL_S
        while not self._stopped.wait(TICK_S):
            try:
                if op.progress is not None:
                    slots = in_flight(op.operation_id)
                    if op.remote_batches:
                        for index, done in remote_in_flight(op.operation_id).items():
                            slots[index] = max(done, slots.get(index, 0))
                    op.progress.in_batches(slots)
                if time.monotonic() >= next_state:
                    next_state = time.monotonic() + STATE_POLL_S
                    if run_is_cancelling(op.operation_id):
                        op.cancel_seen("cancelled from Prefect")
            except Exception as exc:  # noqa: BLE001 - the run goes on; the next tick tries again
                log.debug("monitor of %s: %s", op.operation_id, exc)


def run_is_cancelling(operation_id: str) -> bool:
    """Whether the run has been set Cancelling (or Cancelled) from outside."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(operation_id)).state
    return state is not None and state.type.value in {"CANCELLING", "CANCELLED"}
