"""bulk-export: a creator's video metadata to one Parquet or CSV file, with an expiring link.

Mapped tasks read id ranges from the database as Arrow batches into part files;
the flow streams the parts, in order, into one writer (see ``videolib/export/``).
By hand:

    bulkops export --creator creator-001 --format parquet
    bulkops export --creator creator-001 --format csv --status ready --columns id,title
"""

# No `from __future__ import annotations` here: Prefect's serve() runner pickles the flow
# function by value, and string annotations could not be resolved in the run's process.

import queue
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact
from pydantic import Field

from config import get_settings
from flows.operation import Operation, Plan
from flows.runners import task_runner
from flows.selection import listed_ids, select_manifest
from tasks.resources import HOLDERS, engine, store
from tasks.export import read_export_batch
from videolib.db.models import GONE_STATUSES
from videolib.export import (
    DEFAULT_COLUMNS,
    FILTER_STATUSES,
    ExportBatch,
    ExportFilter,
    ExportWriter,
    check_format,
    copy_csv_part,
    estimate_bytes,
    export_key,
    export_leftovers,
    held_readers,
    ids_in_range,
    parts_prefix,
    plan_export_batches,
    read_part,
    resolve_columns,
    schema_for,
    used_export_bytes,
)
from videolib.ids import RequestError, check_creator_id
from videolib.operation import (
    BATCH_ERROR,
    BatchOutcome,
    ItemError,
    OperationResult,
)
from videolib.selection import resolve_owned
from videolib.signing import signed_link
from videolib.staging import batch_ids, drop_staged


# Choices the deployment form offers and Prefect's server enforces (its parameter schema).
ExportColumn = Literal[DEFAULT_COLUMNS]  # type: ignore[valid-type]
StatusFilter = Literal[FILTER_STATUSES]  # type: ignore[valid-type]


@flow(
    name="bulk-export",
    flow_run_name="export-{creator_id}",
    task_runner=task_runner(),
    validate_parameters=True,
)
def bulk_export(
    creator_id: Annotated[str, Field(min_length=1, max_length=64)],
    format: Literal["parquet", "csv"] = "parquet",
    video_ids: Annotated[list[str] | None, Field(max_length=get_settings().max_ids)] = None,
    all_videos: bool = False,
    columns: list[ExportColumn] | None = None,
    status: StatusFilter | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    formula_guard: bool = True,
    batch_size: Annotated[int, Field(ge=100, le=1_000_000)] = 20_000,
    link_expires_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 24 * 3600,
    invalid_ids_key: str | None = None,
    split: Annotated[int, Field(ge=1, le=16)] | None = None,
    manifest: Annotated[str | None, Field(max_length=512)] = None,
):
    """Export video metadata of one creator to a Parquet or CSV file with an expiring download link.

    Args:
        creator_id: The creator whose videos are exported; other creators' ids are reported as not_found.
        format: parquet (typed, zstd) or csv (RFC 4180, UTF-8, header row).
        video_ids: Only these videos (at most BULKOPS_MAX_IDS); leave empty to export all of the creator's videos.
        all_videos: Export every video of the creator (also what an empty video_ids means); only without video_ids.
        columns: Subset of columns, in this order; default every metadata column.
        status: Only videos with this status (uploaded, processing, ready, failed).
        created_after: Only videos created at or after this time (ISO 8601, UTC if no zone).
        created_before: Only videos created before this time.
        formula_guard: CSV only: prefix ' to cells starting with = + - @ tab or CR (OWASP CSV injection).
        batch_size: Rows per read task; grows automatically so one run maps at most a few hundred tasks.
        link_expires_s: Lifetime of the download link in seconds (at most 7 days).
        invalid_ids_key: Set by the CLI and the API, not by hand: where the request's malformed ids were set aside (reported as invalid_id).
        split: Run the batches as this many child runs (bulk-share) on the work pool's workers, each taking its share (default BULKOPS_SPLIT, 1: all in this run).
        manifest: Instead of video_ids: the storage key of an id manifest (manifests/<creator_id>/..., one id per line, or a video_id column in .csv or .parquet), for selections of millions; upload one with POST /bulk/manifests or the CLI's --ids-file.
    """
    settings = get_settings()
    logger = get_run_logger()
    state: dict = {}

    def plan_selection(result: OperationResult, flt: ExportFilter) -> list[ExportBatch]:
        # No ids (None, or a UI's empty list field []): all of the creator's videos.
        listed = listed_ids(result, creator_id=creator_id, video_ids=video_ids, all_videos=all_videos,
                            invalid_ids_key=invalid_ids_key, filtered=flt != ExportFilter(),
                            everything_by_default=True, verb="export")
        if listed is not None:
            owned, missing = resolve_owned(engine(), creator_id, listed, exclude_statuses=GONE_STATUSES)
            result.add_errors(missing)
            return plan_export_batches(engine(), creator_id, flt, ids=owned, batch_rows=batch_size,
                                       max_batches=settings.max_batches, workers=settings.task_workers)
        batches = plan_export_batches(engine(), creator_id, flt, batch_rows=batch_size,
                                      max_batches=settings.max_batches, workers=settings.task_workers)
        result.requested = sum(b.rows for b in batches)
        return batches

    def prepare(result: OperationResult):
        check_creator_id(creator_id)
        check_format(format)
        resources.enter_context(held_readers(engine()))  # SQLite's reader processes start while we plan
        state["columns"] = cols = resolve_columns(columns)
        state["filter"] = flt = ExportFilter(status=status, created_after=created_after, created_before=created_before)
        if manifest is not None:
            if flt != ExportFilter():
                raise RequestError("bad_selection", "a manifest selects its videos itself: no status or date filter "
                                                    "with it")
            resources.callback(drop_staged, engine(), result.operation_id)  # when the run ends, however
            staged = select_manifest(result, creator_id=creator_id, manifest=manifest, batch_size=batch_size,
                                     listed=bool(video_ids or all_videos or invalid_ids_key),
                                     exclude_statuses=GONE_STATUSES)
            batches = [ExportBatch(staged=b, rows=b["count"]) for b in staged.batches]
        else:
            batches = plan_selection(result, flt)
        rows = sum(b.rows for b in batches)
        estimate = estimate_bytes(engine(), creator_id, rows, cols)
        listing = store().list_modified(f"exports/{creator_id}")
        clear_leftovers(listing, current=result.operation_id)
        used = used_export_bytes(store(), creator_id, keys=listing)
        if used + estimate > settings.export_quota_bytes:
            raise RequestError(
                "quota_exceeded",
                f"this export needs about {estimate:,} bytes and {used:,} of the creator's "
                f"{settings.export_quota_bytes:,}-byte export quota are in use; delete old exports or narrow the selection",
            )
        state["key"] = export_key(creator_id, result.operation_id, format)
        state["writer"] = ExportWriter(store(), state["key"], format, schema_for(cols), formula_guard=formula_guard).open()
        state["pump"] = PartPump(state["writer"])
        state["operation_id"] = result.operation_id
        task_kwargs.update(columns=cols, export_filter=flt, format=format, formula_guard=formula_guard)
        return Plan(batches=batches, sizes=[b.rows for b in batches],
                    failed_items=lambda i, detail: _failed_items(creator_id, batches[i], flt, detail))

    def on_outcome(index: int, outcome: BatchOutcome) -> None:
        # Parts go into the file strictly in batch order, on the pump's thread; a broken
        # writer surfaces here (or in finish) and stops the run.
        state["pump"].submit(index, outcome.extra.get("part"), int(outcome.extra.get("rows") or 0))

    def finish(result: OperationResult, _started: float) -> None:
        pump: PartPump = state["pump"]
        if result.cancelled or (result.succeeded == 0 and result.failed):
            pump.stop(check=False)
            state.pop("writer").abort()  # an incomplete file is no export
            return
        pump.stop()  # every part written; raises if the writer broke (cleanup drops the file)
        writer: ExportWriter = state.pop("writer")
        writer.close()
        size = store().size(state["key"]) or 0
        link = signed_link(store(), state["key"], secret=settings.signing_key_bytes, base_url=settings.public_url,
                           expires_in_s=link_expires_s)
        result.output = {"format": format, "path": state["key"], "rows": writer.rows, "bytes": size, **link.to_dict()}
        create_link_artifact(link=link.url, link_text=f"{state['key']} ({writer.rows} rows, {size:,} bytes)",
                             description=f"download link, valid until {link.to_dict()['expires_at']}")
        logger.info("exported %s rows to %s", writer.rows, state["key"])

    def cleanup() -> None:
        pump = state.pop("pump", None)
        if pump is not None:  # before the writer and the parts go
            pump.stop(check=False)
        writer = state.pop("writer", None)
        if writer is not None:  # the run broke before finish(): drop the partial file
            writer.abort()
        resources.close()
        if "operation_id" in state:
            prefix = parts_prefix(creator_id, state["operation_id"])
            leftovers = store().list_keys(prefix)
            if leftovers:
                store().delete_many(leftovers)

    resources = ExitStack()  # what the run holds until cleanup (SQLite reader processes)
    task_kwargs = {"creator_id": creator_id}  # columns and filter join it once validated
    return Operation("export", creator_id).run(
        prepare=prepare,
        batch_task=read_export_batch,
        task_kwargs=task_kwargs,
        batch_size=batch_size,
        on_outcome=on_outcome,
        finish=finish,
        cleanup=cleanup,
        split=split,
    )


class PartPump:
    """Feeds part files into the export's writer in batch order, on a thread of its own.

    The flow thread also posts a progress update per finished batch, an HTTP call to the
    Prefect server (50-95 ms each, measured with the server on the same 2 cores); when it
    wrote the parts too, the file waited behind those calls (16 updates: 0.8-1.5 s of a
    3.1 s 200k-row export on PostgreSQL). A part is read back, written and deleted as soon as
    its predecessors are in; the first error stops the writing (``submit`` and ``stop``
    raise it; the parts left are removed by the flow's cleanup).
    """

    def __init__(self, writer: ExportWriter) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: dict[int, tuple[str | None, int]] = {}
        self._next = 0
        self._thread = threading.Thread(target=self._run, name="bulk-export-writer", daemon=True)
        self._thread.start()

    def submit(self, index: int, part: str | None, rows: int = 0) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((index, part, rows))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue
            index, part, rows = item
            self._waiting[index] = (part, rows)
            try:
                while self._next in self._waiting:
                    key, rows = self._waiting.pop(self._next)
                    if key:
                        if self.writer.fmt == "csv":  # encoded by its task: append the bytes
                            self.writer.write_csv_rows(copy_csv_part(store(), key), rows)
                        else:
                            for record_batch in read_part(store(), key):
                                self.writer.write(record_batch)
                        store().delete(key)
                    self._next += 1
            except BaseException as exc:  # noqa: BLE001 - handed to the flow thread
                self.error = exc

    def stop(self, *, check: bool = True) -> None:
        """Wait until every submitted part is written; then raise the writer's error if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if check and self.error is not None:
            raise self.error


# A run that left part files or a file being written is over when Prefect says so, or
# when nothing of it changed for this long: a live export writes something every few
# seconds (parts as its batches read, the file as the parts arrive). A killed in-process
# run stays "Running" in Prefect until something marks it crashed.
LEFTOVER_IDLE_S = 15 * 60
FINAL_STATE_TYPES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def clear_leftovers(listing: dict[str, float], *, current: str) -> int:
    """Remove the part files and unfinished files that other exports of this creator left
    behind when they were killed (``listing``: ``exports/{creator}`` with modification
    times); a run still going is left alone. Returns how many objects went."""
    leftovers = export_leftovers(listing)
    leftovers.pop(current, None)
    if not leftovers:
        return 0
    states = HOLDERS.states(list(leftovers))
    now = time.time()
    doomed = [key for operation, (keys, newest) in leftovers.items()
              if states.get(operation) in FINAL_STATE_TYPES or now - newest > LEFTOVER_IDLE_S for key in keys]
    if doomed:
        failures = store().delete_many(doomed)
        get_run_logger().info("removed %s objects that ended exports left behind (%s could not be removed)",
                              len(doomed) - len(failures), len(failures))
    return len(doomed)


def _failed_items(creator_id: str, batch: ExportBatch, flt: ExportFilter, detail: str) -> list[ItemError]:
    if batch.staged is not None:
        ids = batch_ids(engine(), batch.staged)
    else:
        ids = batch.ids if batch.ids is not None else ids_in_range(engine(), creator_id, flt, batch.lo, batch.hi)
    return [ItemError(v, BATCH_ERROR, f"not exported: {detail}") for v in ids]
