"""Tasks of the bulk-export flow."""

from __future__ import annotations

from contextlib import closing
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from tasks.resources import engine, store
from tasks.stop import VARIABLES, StopFlag
from videolib.export import (
    ExportBatch,
    ExportFilter,
    part_key,
    read_batch,
    resolve_export_ids,
    schema_for,
    write_csv_part,
    write_part,
)
from videolib.operation import NOT_FOUND, BatchOutcome, ItemError
from videolib.staging import batch_ids


@task(
    name="read-export-batch",
    task_run_name="export-batch-{batch_index}",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_jitter_factor=0.5,
    cache_policy=NONE,
)
def read_export_batch(
    batch: ExportBatch,
    batch_index: int,
    *,
    creator_id: str,
    operation_id: str,
    columns: list[str],
    export_filter: ExportFilter,
    format: str = "parquet",
    formula_guard: bool = True,
    stop: StopFlag = VARIABLES,
) -> dict[str, Any]:
    """Read one batch of rows (Arrow, straight from the database) into a part file:
    Arrow IPC for a Parquet export, CSV rows (guarded unless ``formula_guard`` is off)
    for a CSV export."""
    if stop.requested(operation_id):
        return BatchOutcome(skipped=batch.rows).to_dict()
    errors: list[ItemError] = []
    if batch.staged is not None:  # a manifest's range of staged ids
        batch = ExportBatch(ids=batch_ids(engine(), batch.staged), rows=batch.rows)
    if batch.ids is not None:
        # Videos deleted since the plan are reported, not silently dropped.
        owned = resolve_export_ids(engine(), creator_id, batch.ids)
        errors = [ItemError(v, NOT_FOUND, "no such video for this creator") for v in batch.ids if v not in owned]
        batch = ExportBatch(ids=[v for v in batch.ids if v in owned], rows=len(owned))
    key = part_key(creator_id, operation_id, batch_index, format)
    rows = 0
    if batch.ids is None or batch.ids:
        # closing(): a failed write gives the reader's connection (or reader process)
        # back now, not when the generator is collected (a traceback may keep it).
        # Rows with a value that cannot be exported are left out, each a bad_value error.
        with closing(read_batch(engine(), creator_id, columns, batch, export_filter,
                                errors=errors)) as record_batches:
            if format == "csv":
                rows = write_csv_part(store(), key, record_batches, formula_guard=formula_guard)
            else:
                rows = write_part(store(), key, record_batches, schema_for(columns))
    return BatchOutcome(errors=errors, succeeded_count=rows,
                        extra={"part": key if rows else None, "rows": rows}).to_dict()
