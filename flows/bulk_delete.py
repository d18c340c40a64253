"""bulk-delete: delete a creator's videos with their files, thumbnails and chunks.

Tombstone first (see ``videolib/delete.py``): a crash leaves videos gone, ``deleting``
or untouched, and a later delete of the same ids finishes the job. Run it by hand:

    bulkops delete --creator creator-001 --ids ID,ID   # or --ids-file F, or --all
    python -m flows.bulk_delete                          # serves nothing; see prefect.yaml
"""

# No `from __future__ import annotations` here: Prefect's serve() runner pickles the flow
# function by value, and string annotations could not be resolved in the run's process.

from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from config import get_settings
from flows.operation import DRY_RUN_TAG, Operation
from flows.runners import task_runner
from flows.selection import select_library, select_manifest, select_retry, select_videos
from tasks.resources import engine, store
from tasks.delete import delete_video_batch
from videolib.delete import write_manifest
from videolib.ids import check_creator_id
from videolib.operation import OperationResult
from videolib.staging import drop_staged


def run_name() -> str:
    """``delete-<creator>``; a dry run's name says so (``delete-<creator>-dry-run``), so that
    the UI's run list does not mix it with real deletes."""
    parameters = flow_run.parameters
    name = f"delete-{parameters.get('creator_id')}"
    return f"{name}-{DRY_RUN_TAG}" if parameters.get("dry_run") else name


@flow(
    name="bulk-delete",
    flow_run_name=run_name,
    task_runner=task_runner(),
    validate_parameters=True,
)
def bulk_delete(
    creator_id: Annotated[str, Field(min_length=1, max_length=64)],
    video_ids: Annotated[list[str] | None, Field(max_length=get_settings().max_ids)] = None,
    all_videos: bool = False,
    dry_run: bool = False,
    batch_size: Annotated[int, Field(ge=1, le=100_000)] | None = None,
    invalid_ids_key: str | None = None,
    retry_of: Annotated[str | None, Field(max_length=36)] = None,
    split: Annotated[int, Field(ge=1, le=16)] | None = None,
    manifest: Annotated[str | None, Field(max_length=512)] = None,
):
    """Delete videos of one creator: rows, files, thumbnails and transcript chunks, then read back that they are gone (the result's "verified").

    Args:
        creator_id: The creator whose videos are deleted; other creators' ids are reported as not_found.
        video_ids: Video ids (UUIDs) to delete, at most BULKOPS_MAX_IDS (10,000 by default). Leave empty with all_videos.
        all_videos: Delete every video of the creator. Must be set explicitly, and only without video_ids.
        dry_run: Report what would be deleted (videos, objects, bytes) and change nothing.
        batch_size: Videos per batch (default BULKOPS_BATCH_SIZE, 1000); grows automatically so one run maps at most a few hundred batches.
        invalid_ids_key: Set by the CLI and the API, not by hand: where the request's malformed ids were set aside (reported as invalid_id).
        retry_of: The id of an earlier bulk-delete of this creator: delete again exactly the items it reported with a retryable error (busy, storage_error, database_error, batch_error). Leave video_ids and all_videos empty with it.
        split: Run the batches as this many child runs (bulk-share) on the work pool's workers, each taking its share (default BULKOPS_SPLIT, 1: all in this run).
        manifest: Instead of video_ids: the storage key of an id manifest (manifests/<creator_id>/..., one id per line, or a video_id column in .csv or .parquet), for selections of millions; upload one with POST /bulk/manifests or the CLI's --ids-file.
    """

    def prepare(result: OperationResult):
        check_creator_id(creator_id)
        if manifest is not None:
            return select_manifest(result, creator_id=creator_id, manifest=manifest, batch_size=size,
                                   listed=bool(video_ids or all_videos or invalid_ids_key or retry_of))
        if retry_of:
            return select_retry(result, creator_id=creator_id, retry_of=retry_of, flow_name="bulk-delete",
                                listed=bool(video_ids or all_videos or invalid_ids_key))
        if all_videos and not (video_ids or invalid_ids_key):
            return select_library(result, creator_id=creator_id, batch_size=size)
        return select_videos(result, creator_id=creator_id, video_ids=video_ids, all_videos=all_videos,
                             verb="delete", invalid_ids_key=invalid_ids_key)

    def finish(result: OperationResult, started_at: float) -> None:
        if trash:  # nothing is removed yet: cleanup purges after the window, with the manifest
            result.purge_after = (datetime.now(UTC) + timedelta(seconds=grace)).isoformat().replace("+00:00", "Z")
            return
        if result.dry_run or result.succeeded == 0:
            return
        result.manifest_path = write_manifest(
            store(),
            operation_id=result.operation_id,
            creator_id=creator_id,
            started_at=datetime.fromtimestamp(started_at, UTC).isoformat(),
            finished_at=datetime.now(UTC).isoformat(),
            videos_deleted=result.succeeded,
            objects_removed=result.objects,
            batches=result.batches,
        )

    size = batch_size or get_settings().batch_size
    grace = get_settings().delete_grace
    trash = grace > 0 and not dry_run  # the undo window (videolib/trash.py)
    operation = Operation("delete", creator_id, dry_run=dry_run)
    if trash:
        operation.result.trashed = 0
    elif not dry_run:  # what the delete read back as gone (videolib/delete.py)
        operation.result.verified = {"videos": 0, "objects_absent": 0, "rows_absent": 0}
    return operation.run(
        prepare=prepare,
        batch_task=delete_video_batch,
        task_kwargs={"creator_id": creator_id, "dry_run": dry_run, "trash": trash},
        batch_size=size,
        finish=finish,
        cleanup=(lambda: drop_staged(engine(), operation.operation_id)) if manifest is not None or all_videos else None,
        split=split,
    )
