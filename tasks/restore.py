"""Tasks of the bulk-restore flow."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.resources import engine
from tasks.stop import VARIABLES, StopFlag
from videolib.operation import BatchOutcome
from videolib.trash import restore_batch


@task(
    name="restore-video-batch",
    task_run_name="restore-batch-{batch_index}",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_jitter_factor=0.5,
    cache_policy=NONE,
)
def restore_video_batch(
    video_ids: list[str],
    batch_index: int,
    *,
    creator_id: str,
    operation_id: str,
    grace_s: float,
    dry_run: bool = False,
    stop: StopFlag = VARIABLES,
) -> dict[str, Any]:
    """Restore (or, on a dry run, count what would be restored of) one batch."""
    if stop.requested(operation_id):
        return BatchOutcome(skipped=len(video_ids)).to_dict()
    outcome = restore_batch(engine(), creator_id=creator_id, video_ids=video_ids, grace_s=grace_s, dry_run=dry_run)
    if outcome.errors:
        get_run_logger().warning("batch %s: %s restored, %s failed", batch_index, len(outcome.succeeded),
                                 len(outcome.errors))
    return outcome.to_dict()
