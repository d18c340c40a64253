"""Tasks of the bulk-delete flow."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from config import get_settings
from tasks.resources import engine, store
from tasks.stop import VARIABLES, StopFlag
from tasks.ticks import BatchTicker
from videolib.delete import delete_batch, plan_delete_batch
from videolib.operation import BatchOutcome
from videolib.staging import batch_ids, batch_len
from videolib.trash import trash_batch


@task(
    name="delete-video-batch",
    task_run_name="delete-batch-{batch_index}",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_jitter_factor=0.5,
    cache_policy=NONE,
)
def delete_video_batch(
    video_ids: list[str] | dict[str, Any],
    batch_index: int,
    *,
    creator_id: str,
    operation_id: str,
    dry_run: bool = False,
    trash: bool = False,
    stop: StopFlag = VARIABLES,
) -> dict[str, Any]:
    """Delete (or, on a dry run, plan; under the undo window, trash) one batch; returns
    the batch's outcome as a dict."""
    if stop.requested(operation_id):
        return BatchOutcome(skipped=batch_len(video_ids)).to_dict()
    video_ids = batch_ids(engine(), video_ids)  # a manifest's batch is a staged range (videolib/staging.py)
    if trash and not dry_run:
        outcome = trash_batch(engine(), creator_id=creator_id, video_ids=video_ids, operation_id=operation_id,
                              lock_timeout_ms=get_settings().lock_timeout_ms)
    elif dry_run:
        outcome = plan_delete_batch(engine(), store(), creator_id=creator_id, video_ids=video_ids)
    else:
        outcome = delete_batch(
            engine(),
            store(),
            creator_id=creator_id,
            video_ids=video_ids,
            operation_id=operation_id,
            batch_index=batch_index,
            lock_timeout_ms=get_settings().lock_timeout_ms,
            ticker=BatchTicker(operation_id, batch_index, stop),
        )
    if outcome.errors:
        get_run_logger().warning(
            "batch %s: %s deleted, %s failed", batch_index, len(outcome.succeeded), len(outcome.errors)
        )
    return outcome.to_dict()
