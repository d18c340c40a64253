"""The task of the cleanup flow: one batch of one kind of item (``videolib/cleanup.py``;
runs: ``tasks/history.py``)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.runtime import task_run
from prefect.cache_policies import NONE

from config import get_settings
from tasks.history import archive_and_prune
from tasks.resources import HOLDERS, engine, store
from tasks.stop import VARIABLES, StopFlag
from tasks.ticks import BatchTicker
from videolib.cleanup import Rules, finish_tombstones, orphans_still, purge_trash, release_claims, remove_objects
from videolib.operation import BatchOutcome


@task(
    name="cleanup-batch",
    task_run_name="cleanup-{batch_index}",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_jitter_factor=0.5,
    cache_policy=NONE,
)
def cleanup_batch(
    batch: dict[str, Any],
    batch_index: int,
    *,
    operation_id: str,
    rules: dict[str, Any],
    flow_operations: dict[str, str],
    dry_run: bool = False,
    stop: StopFlag = VARIABLES,
) -> dict[str, Any]:
    """Clean (or, on a dry run, count) one batch: ``{"kind", "items"}``; its outcome as a dict."""
    kind, items = batch["kind"], batch["items"]
    if stop.requested(operation_id):
        return BatchOutcome(skipped=len(items)).to_dict()
    due = Rules(**rules)
    if kind == "tombstone":
        outcome = finish_tombstones(engine(), store(), items, due, operation_id=operation_id, batch_index=batch_index,
                                    dry_run=dry_run, lock_timeout_ms=get_settings().lock_timeout_ms,
                                    ticker=None if dry_run else BatchTicker(operation_id, batch_index, stop),
                                    retried=(task_run.run_count or 1) > 1)
    elif kind == "trash":
        outcome = purge_trash(engine(), store(), items, due, operation_id=operation_id, batch_index=batch_index,
                              dry_run=dry_run, lock_timeout_ms=get_settings().lock_timeout_ms,
                              ticker=None if dry_run else BatchTicker(operation_id, batch_index, stop))
    elif kind == "claim":
        outcome = release_claims(engine(), items, due, HOLDERS, operation_id=operation_id, dry_run=dry_run)
    elif kind == "orphan":
        outcome = remove_objects(store(), kind, items, dry_run=dry_run, check=orphans_still(engine()))
    elif kind == "run":
        outcome = archive_and_prune(store(), items, flow_operations=flow_operations, dry_run=dry_run)
    else:  # export, leftover, report: objects whose time has come
        outcome = remove_objects(store(), kind, items, dry_run=dry_run)
    if outcome.errors:
        get_run_logger().warning("cleanup batch %s (%s): %s done, %s failed", batch_index, kind,
                                 outcome.n_succeeded, len(outcome.errors))
    return outcome.to_dict()
