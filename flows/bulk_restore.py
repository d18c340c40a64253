"""bulk-restore: bring trashed videos back while the undo window is open.

With ``BULKOPS_DELETE_GRACE`` set, a delete trashes its videos (``videolib/trash.py``);
this flow gives them back exactly as they were, by id or every video one delete
trashed. Past the window a video is ``not_restorable``; cleanup purges it.

    bulkops restore --creator creator-001 --ids ID,ID      # or --ids-file F
    bulkops restore --creator creator-001 --operation DELETE_ID
"""

# No `from __future__ import annotations` here: Prefect's serve() runner pickles the flow
# function by value, and string annotations could not be resolved in the run's process.

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from config import get_settings
from flows.operation import DRY_RUN_TAG, Operation
from flows.runners import task_runner
from flows.selection import listed_ids
from tasks.resources import engine, store
from tasks.restore import restore_video_batch
from videolib.ids import RequestError, check_creator_id
from videolib.operation import OperationResult
from videolib.records import read_record
from videolib.trash import restorable_of


def run_name() -> str:
    parameters = flow_run.parameters
    name = f"restore-{parameters.get('creator_id')}"
    return f"{name}-{DRY_RUN_TAG}" if parameters.get("dry_run") else name


@flow(
    name="bulk-restore",
    flow_run_name=run_name,
    task_runner=task_runner(),
    validate_parameters=True,
)
def bulk_restore(
    creator_id: Annotated[str, Field(min_length=1, max_length=64)],
    video_ids: Annotated[list[str] | None, Field(max_length=get_settings().max_ids)] = None,
    delete_operation: Annotated[str | None, Field(max_length=36)] = None,
    dry_run: bool = False,
    batch_size: Annotated[int, Field(ge=1, le=100_000)] | None = None,
    invalid_ids_key: str | None = None,
):
    """Restore trashed videos of one creator (deletes under BULKOPS_DELETE_GRACE) exactly as they were, while the undo window is open.

    Args:
        creator_id: The creator whose videos are restored; other creators' ids are reported as not_found.
        video_ids: Ids (UUIDs) of trashed videos, at most BULKOPS_MAX_IDS. Leave empty with delete_operation.
        delete_operation: The operation id of a delete: restore every video it trashed that is still in the trash.
        dry_run: Report what would be restored and change nothing.
        batch_size: Videos per batch (default BULKOPS_BATCH_SIZE, 1000); grows automatically so one run maps at most a few hundred batches.
        invalid_ids_key: Set by the CLI and the API, not by hand: where the request's malformed ids were set aside (reported as invalid_id).
    """
    grace = get_settings().delete_grace

    def prepare(result: OperationResult) -> list[str]:
        check_creator_id(creator_id)
        if delete_operation:
            if video_ids or invalid_ids_key:
                raise RequestError("bad_selection", "give either `video_ids` or `delete_operation`, not both")
            ids = restorable_of(engine(), creator_id, delete_operation, grace_s=grace,
                                record=lambda op: read_record(store(), op))
            result.requested = len(ids)
            return ids
        return listed_ids(result, creator_id=creator_id, video_ids=video_ids, all_videos=False,
                          invalid_ids_key=invalid_ids_key, verb="restore") or []

    return Operation("restore", creator_id, dry_run=dry_run).run(
        prepare=prepare,
        batch_task=restore_video_batch,
        task_kwargs={"creator_id": creator_id, "grace_s": grace, "dry_run": dry_run},
        batch_size=batch_size or get_settings().batch_size,
    )
