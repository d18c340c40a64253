"""Tasks of the bulk-reprocess flow."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from config import get_settings
from tasks.resources import HOLDERS, embedder_for, engine
from tasks.stop import VARIABLES, StopFlag
from tasks.ticks import BatchTicker
from videolib.chunking import ChunkingConfig
from videolib.operation import NO_TRANSCRIPT, BatchOutcome
from videolib.reprocess import BUSY, reprocess_batch
from videolib.staging import batch_ids, batch_len


@task(
    name="reprocess-video-batch",
    task_run_name="reprocess-batch-{batch_index}",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_jitter_factor=0.5,
    cache_policy=NONE,
)
def reprocess_video_batch(
    video_ids: list[str] | dict[str, Any],
    batch_index: int,
    *,
    creator_id: str,
    operation_id: str,
    embedder: str,
    chunking: dict[str, Any],
    whole_library: bool = False,
    stop: StopFlag = VARIABLES,
) -> dict[str, Any]:
    """Re-chunk and re-embed one batch; returns the batch's outcome as a dict.

    In a whole-library run (``all_videos``) a video found without a transcript or held
    by someone else when its batch comes is left out (``not_selected``), not failed."""
    if stop.requested(operation_id):
        return BatchOutcome(skipped=batch_len(video_ids)).to_dict()
    video_ids = batch_ids(engine(), video_ids)  # a manifest's batch is a staged range (videolib/staging.py)
    settings = get_settings()
    outcome = reprocess_batch(
        engine(),
        embedder_for(embedder),
        creator_id=creator_id,
        video_ids=video_ids,
        operation_id=operation_id,
        chunking=ChunkingConfig(**chunking),
        lease_s=settings.reprocess_lease_s,
        lock_timeout_ms=settings.lock_timeout_ms,
        holders=HOLDERS,
        ticker=BatchTicker(operation_id, batch_index, stop),
    )
    if whole_library:
        outcome.leave_out((NO_TRANSCRIPT, BUSY))
    if outcome.errors:
        get_run_logger().warning(
            "batch %s: %s reprocessed, %s failed", batch_index, len(outcome.succeeded), len(outcome.errors)
        )
    return outcome.to_dict()
