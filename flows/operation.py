"""The operation scaffold every bulk flow runs on.

validate the request -> resolve the creator's own ids -> plan batches -> map a task
over the batches (bounded thread pool) -> progress artifact as batches finish ->
per-item errors (table artifact + CSV report) -> result document (returned, and
stored as an artifact) -> final state:

- Completed when every item succeeded, ``Completed(name="Partial")`` when some failed,
- Failed when none succeeded or the run could not proceed,
- Cancelled when a stop was requested (checked between batches).

Progress is computed here, in the flow, as futures finish: concurrent updates of one
artifact from tasks would overwrite each other. The artifact is updated at most once a
second (and always at the end); in-process listeners (the CLI's bar) see every batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prefect import Task, get_client, get_run_logger, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State

from config import get_settings
from flows import engine_fixes  # noqa: F401 - installs a fix to Prefect's flow engine (see the module)
from tasks.common import clear_stop, prefetch_stop, request_stop, stop_here, store
from videolib.gc_tuning import bulk_gc
from videolib.ids import RequestError
from videolib.operation import (
    BATCH_ERROR,
    BatchOutcome,
    ItemError,
    OperationResult,
    describe_not_selected,
    plan_batches,
)
from videolib.report import render_error_report, report_key
from videolib.storage import StorageUnavailable

RESULT_ARTIFACT_DESCRIPTION = "bulkops result document"
DRY_RUN_TAG = "dry-run"
PROGRESS_UNIT = "videos"
PROGRESS_MIN_INTERVAL_S = 1.0
ARTIFACT_ERROR_ROWS = 1000  # rows of the errors table artifact (the UI renders it)
# Errors kept in the stored result document, which `bulkops status` and the API read
# back. Enough for every error of a request listing ids (BULKOPS_MAX_IDS, 10,000 by
# default), so that failed == len(errors) holds there too, even for a dry run (which
# writes no report); past it (whole-library runs) the report in storage has them all.
RESULT_ERROR_ROWS = 10_000

log = logging.getLogger(__name__)


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


def _notify(event: ProgressEvent) -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event)
        except Exception:  # a broken display must not break the operation
            log.exception("progress listener failed")


def progress_description(current: int, total: int, batches_done: int, batches: int, eta: float | None) -> str:
    eta_text = "done" if current >= total else ("ETA --" if eta is None else f"ETA {eta:.0f}s")
    return f"{current}/{total} {PROGRESS_UNIT} · {batches_done}/{batches} batches · {eta_text}"


def select_videos(
    result: OperationResult,
    *,
    creator_id: str,
    video_ids: Sequence[str] | None,
    all_videos: bool,
    verb: str,
    exclude_statuses: Sequence[str] = (),
    invalid_ids_key: str | None = None,
) -> list[str]:
    """The ids an operation works on: every video of the creator (``all_videos``), or the
    creator's own among ``video_ids`` (malformed ids ``invalid_id``, others'/unknown ids
    and those in ``exclude_statuses`` ``not_found``). Sets ``result.requested``."""
    from tasks.common import engine
    from videolib.selection import iter_creator_video_ids, resolve_owned

    listed = listed_ids(result, creator_id=creator_id, video_ids=video_ids, all_videos=all_videos,
                        invalid_ids_key=invalid_ids_key)
    if all_videos:
        ids = list(iter_creator_video_ids(engine(), creator_id))
        result.requested = len(ids)
        return ids
    if listed is None:
        raise RequestError(
            "empty_selection", f"no videos selected: give `video_ids`, or set `all_videos` to {verb} everything"
        )
    owned, missing = resolve_owned(engine(), creator_id, listed, exclude_statuses=exclude_statuses)
    result.add_errors(missing)
    return owned


def listed_ids(result: OperationResult, *, creator_id: str, video_ids: Sequence[str] | None, all_videos: bool,
               invalid_ids_key: str | None) -> list[str] | None:
    """The distinct valid ids a request lists (None: it lists none), with its malformed
    ones, given inline or set aside in storage by a front door (``invalid_ids_key``),
    added to ``result`` as ``invalid_id`` items and counted in ``requested``."""
    from videolib.operation import parse_video_ids
    from videolib.selection import read_invalid_ids

    if all_videos and (video_ids or invalid_ids_key):
        raise RequestError("bad_selection", "give either `video_ids` or `all_videos`, not both")
    if not video_ids and not invalid_ids_key:
        return None
    malformed = read_invalid_ids(store(), creator_id, invalid_ids_key) if invalid_ids_key else []
    valid: list[str] = []
    if video_ids:
        parsed = parse_video_ids(video_ids, max_ids=get_settings().max_ids)
        valid = parsed.ids
        malformed = parsed.errors + malformed
    result.add_errors(malformed)
    result.requested = len(valid) + len(malformed)
    return valid


def current_operation_id() -> str:
    run_id = flow_run.id
    if not run_id:
        raise RuntimeError("an operation must run inside a Prefect flow run")
    return str(run_id)


def run_operation(
    *,
    operation: str,
    creator_id: str,
    dry_run: bool,
    batch_size: int,
    prepare: Callable[[OperationResult], Sequence[str] | Plan],
    batch_task: Task,
    task_kwargs: dict[str, Any],
    on_outcome: Callable[[int, BatchOutcome], None] | None = None,
    finish: Callable[[OperationResult, float], None] | None = None,
    cleanup: Callable[[], None] | None = None,
) -> State:
    """Run one bulk operation in the current flow run and return its final state.

    ``prepare`` validates the request and resolves the selection: it sets
    ``result.requested``, adds per-item errors for ids it rejects, and returns the ids
    to process (cut into batches here) or its own ``Plan``; raising ``RequestError``
    refuses the whole request. ``batch_task`` is mapped over the batches as
    ``batch_task(batch, batch_index, operation_id=..., **task_kwargs)`` and returns a
    ``BatchOutcome`` dict. ``on_outcome(index, outcome)`` sees each batch's outcome as
    it finishes; ``finish`` runs after the last batch (not on a refused request) with
    the result and the start time; ``cleanup`` runs last, however the run ends.
    """
    try:
        with bulk_gc():  # the collector skips Prefect's heap while the batches allocate
            return _run_operation(
                operation=operation, creator_id=creator_id, dry_run=dry_run, batch_size=batch_size,
                prepare=prepare, batch_task=batch_task, task_kwargs=task_kwargs, on_outcome=on_outcome,
                finish=finish,
            )
    finally:
        if cleanup is not None:
            try:
                cleanup()
            except Exception:
                get_run_logger().exception("cleanup after the operation failed")


def _run_operation(*, operation, creator_id, dry_run, batch_size, prepare, batch_task, task_kwargs,
                   on_outcome, finish) -> State:
    logger = get_run_logger()
    started = time.monotonic()
    started_wall = time.time()
    operation_id = current_operation_id()
    # The batches check this flag as they start: read it once now, while we plan,
    # rather than from every batch thread at once when the first round starts.
    prefetch_stop(operation_id)
    result = OperationResult(operation_id=operation_id, operation=operation, creator_id=creator_id, dry_run=dry_run)
    if dry_run:
        result.plan = {"videos": 0, "objects": 0, "bytes": 0}
        tag_dry_run(operation_id, logger)
    try:
        # Storage that cannot be used would fail every batch (or the export's file, or the
        # report) one by one: refuse the run at once instead, naming what is wrong.
        try:
            store().check()
        except StorageUnavailable as exc:
            raise RequestError("storage_unavailable", f"{exc} (check BULKOPS_STORAGE_URL)") from None
        prepared = prepare(result)
    except RequestError as exc:
        result.aborted = True
        result.message = exc.message
        result.duration_s = time.monotonic() - started
        logger.error("request refused: %s", exc.message)
        return _finalize(result, logger)
    except Exception as exc:  # the run cannot proceed (database unreachable, ...)
        result.aborted = True
        result.message = f"could not resolve the selection: {type(exc).__name__}: {exc}"
        result.duration_s = time.monotonic() - started
        logger.exception("could not resolve the selection")
        return _finalize(result, logger)

    if isinstance(prepared, Plan):
        plan = prepared
    else:
        settings = get_settings()
        id_batches = plan_batches(list(prepared), batch_size=batch_size, max_batches=settings.max_batches,
                                  workers=settings.task_workers)
        plan = Plan(
            batches=id_batches,
            sizes=[len(b) for b in id_batches],
            failed_items=lambda i, detail: [ItemError(v, BATCH_ERROR, detail) for v in id_batches[i]],
        )
    batches = plan.batches
    planned_items = sum(plan.sizes)
    result.batches = len(batches)
    total = result.requested
    current = result.failed
    progress_id = create_progress_artifact(
        progress=_percent(current, total),
        description=progress_description(current, total, 0, len(batches), None),
    )
    _notify(ProgressEvent(operation_id, operation, current, total, 0, len(batches), None))
    logger.info("%s: %s items in %s batches", operation, planned_items, len(batches))

    if batches:
        futures = batch_task.map(
            batches,
            list(range(len(batches))),
            operation_id=unmapped(operation_id),
            **{k: unmapped(v) for k, v in task_kwargs.items()},
        )
        index_of = {future.task_run_id: i for i, future in enumerate(futures)}
        done = 0
        last_posted = 0.0
        posted = (current, 0)

        def post(eta: float | None) -> None:
            nonlocal last_posted, posted
            last_posted = time.monotonic()
            posted = (current, done)
            update_progress_artifact(
                artifact_id=progress_id,
                progress=_percent(current, total),
                description=progress_description(current, total, done, len(batches), eta),
            )

        try:
            for future in as_completed(futures):
                index = index_of[future.task_run_id]
                try:
                    outcome = BatchOutcome.from_dict(future.result())
                except Exception as exc:  # retries exhausted: every item of the batch failed
                    detail = f"{type(exc).__name__}: {exc}"[:500]
                    logger.error("batch %s failed after retries: %s", index, detail)
                    outcome = BatchOutcome(errors=plan.failed_items(index, detail))
                result.add(outcome)
                # What a whole-library run left out on the way is no longer requested.
                left_out = sum(outcome.not_selected.values())
                total -= left_out
                planned_items -= left_out
                if on_outcome is not None and not result.aborted:
                    try:
                        on_outcome(index, outcome)
                    except Exception as exc:  # e.g. the export's writer broke: the run cannot finish
                        result.aborted = True
                        result.message = f"{operation} could not proceed: {type(exc).__name__}: {exc}"
                        logger.exception("stopping the %s", operation)
                        request_stop(operation_id)  # batches not yet started return unstarted
                done += 1
                current += outcome.processed
                elapsed = time.monotonic() - started
                processed = max(current - (total - planned_items), 0)
                remaining = total - current
                eta = elapsed / processed * remaining if processed else None
                if done == len(batches) or time.monotonic() - last_posted >= PROGRESS_MIN_INTERVAL_S:
                    # One HTTP round trip to the Prefect server each (50-95 ms measured here,
                    # the server on the same cores): at most one a second, and always the last.
                    post(eta)
                _notify(ProgressEvent(operation_id, operation, current, total, done, len(batches), eta))
        except BaseException:
            # Terminated (SIGTERM: a crash, or Prefect's own cancel). Batches that have not
            # started must not start while Prefect reports the crash (the pool would go
            # on deleting), and the progress must show where the run really got to
            # (it may be up to a second behind); then Prefect ends the run.
            stop_here(operation_id)
            if posted != (current, done):
                with contextlib.suppress(Exception):
                    post(None)
            raise

    if result.skipped and not result.aborted:
        # Batches that had not started when the stop was requested returned unstarted.
        result.cancelled = True
        result.message = f"stopped on request; {result.skipped} videos left unstarted"
    if finish is not None and not result.aborted:
        try:
            finish(result, started_wall)
        except Exception as exc:
            result.aborted = True
            result.message = f"could not finish the {operation}: {type(exc).__name__}: {exc}"
            logger.exception("could not finish the operation")
    result.duration_s = time.monotonic() - started
    return _finalize(result, logger)


def tag_dry_run(operation_id: str, logger) -> None:
    """Give the run the ``dry-run`` tag, however it was started (the CLI, a deployment run
    from the UI or the API): tags are set when a run is created, and only the flow knows
    for sure that it is a dry run."""
    tags = list(flow_run.tags or [])
    if DRY_RUN_TAG in tags:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(uuid.UUID(operation_id), tags=[*tags, DRY_RUN_TAG])
    except Exception as exc:  # a label, not the work: the dry run goes on without it
        logger.warning("could not tag the run %s: %s", DRY_RUN_TAG, exc)


def _percent(current: int, total: int) -> float:
    return 100.0 if total == 0 else round(100.0 * current / total, 2)


def _finalize(result: OperationResult, logger) -> State:
    """Report, artifacts, and the final state, for every way a run can end."""
    result.count_unstarted()
    if result.failed and not result.dry_run:
        key = report_key(result.operation_id)
        try:
            store().put(key, render_error_report(result.errors))
            result.report_path = key
        except Exception:
            logger.exception("could not write the error report %s", key)
    document = result.to_dict()
    if result.errors:
        create_table_artifact(
            table=[e.to_dict() for e in result.errors[:ARTIFACT_ERROR_ROWS]],
            description=(
                f"{result.failed} failed items"
                + (f" (first {ARTIFACT_ERROR_ROWS})" if result.failed > ARTIFACT_ERROR_ROWS else "")
                + (f"; all of them in {result.report_path}" if result.report_path else "")
            ),
        )
    create_markdown_artifact(markdown=result_markdown(document), description=RESULT_ARTIFACT_DESCRIPTION)
    clear_stop_quietly(result.operation_id)
    _notify(
        ProgressEvent(
            result.operation_id, result.operation, result.succeeded + result.failed + result.skipped,
            result.requested, 0, 0, 0.0, result=document,
        )
    )
    summary = summary_line(document)
    status = document["status"]
    if status == "completed":
        return Completed(message=summary, data=document)
    if status == "partial":
        return Completed(name="Partial", message=summary, data=document)
    if status == "cancelled":
        # A Cancelled state's data must be an exception; the document is in the artifact.
        return Cancelled(message=summary)
    return Failed(message=summary)


def clear_stop_quietly(operation_id: str) -> None:
    try:
        clear_stop(operation_id)
    except Exception:
        log.debug("no stop flag to clear for %s", operation_id)


def summary_line(document: dict[str, Any]) -> str:
    verb = {"delete": "deleted", "export": "exported", "reprocess": "reprocessed"}.get(document["operation"], "done")
    if document.get("dry_run"):
        verb = f"would be {verb}"
    text = (
        f"{document['operation']} {document['status']}: {document['succeeded']}/{document['requested']} {verb}, "
        f"{document['failed']} failed, {document['skipped']} skipped"
    )
    if document.get("message"):
        text += f" — {document['message']}"
    return text


def result_markdown(document: dict[str, Any]) -> str:
    """The result as a person reads it in the Prefect UI, with the JSON document below."""
    stored = dict(document)
    if len(stored["errors"]) > RESULT_ERROR_ROWS:
        stored["errors"] = stored["errors"][:RESULT_ERROR_ROWS]
        stored["errors_truncated"] = True
    lines = [
        f"# {document['operation']}: {document['status']}",
        "",
        summary_line(document),
        "",
        "| requested | succeeded | failed | skipped | duration |",
        "|---:|---:|---:|---:|---:|",
        f"| {document['requested']} | {document['succeeded']} | {document['failed']} | "
        f"{document['skipped']} | {document['duration_s']:.1f} s |",
        "",
    ]
    if document.get("plan"):
        plan = document["plan"]
        lines += [f"Dry run plan: {plan.get('videos', 0)} videos, {plan.get('objects', 0)} objects, "
                  f"{plan.get('bytes', 0)} bytes.", ""]
    if document.get("not_selected") and any(document["not_selected"].values()):
        lines += [f"Not selected (left out on purpose, not failures): {describe_not_selected(document['not_selected'])}.",
                  ""]
    if document.get("report_path"):
        lines += [f"Per-item report: `{document['report_path']}`", ""]
    if document.get("manifest_path"):
        lines += [f"Audit manifest: `{document['manifest_path']}`", ""]
    # Indented for a person; past the table's size (the table is what a person reads)
    # one compact line, at ~150 bytes an error instead of ~250.
    indent = 2 if len(stored["errors"]) <= ARTIFACT_ERROR_ROWS else None
    lines += ["```json", json.dumps(stored, indent=indent, ensure_ascii=False), "```", ""]
    return "\n".join(lines)


def parse_result_markdown(markdown: str) -> dict[str, Any] | None:
    start = markdown.rfind("```json\n")
    end = markdown.rfind("\n```")
    if start < 0 or end <= start:
        return None
    return json.loads(markdown[start + len("```json\n") : end])
