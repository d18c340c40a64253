"""bulk-reprocess: re-chunk a creator's transcripts and recompute their embeddings.

Each batch claims its videos (``processing``), chunks and embeds them in one
vectorised call, and writes one transaction with a savepoint per video: a video gets
all of its new chunks or keeps its old ones (see ``videolib/reprocess.py``). By hand:

    bulkops reprocess --creator creator-001 --all
    bulkops reprocess --creator creator-001 --ids ID,ID --embedder minilm
"""

# No `from __future__ import annotations` here: Prefect's serve() runner pickles the flow
# function by value, and string annotations could not be resolved in the run's process.

from contextlib import ExitStack
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from pydantic import Field

from config import get_settings
from flows.operation import Operation, Plan
from flows.runners import task_runner
from flows.selection import select_manifest, select_reprocessable_library, select_retry, select_videos
from tasks.reprocess import reprocess_video_batch
from tasks.resources import HOLDERS, embedder_for, engine
from videolib.db.models import GONE_STATUSES
from videolib.chunking import chunking_config
from videolib.compute_pool import eligible, held_compute_pool
from videolib.embedders import check_embedder, default_batch_size
from videolib.ids import check_creator_id
from videolib.operation import BatchOutcome, OperationResult
from videolib.reprocess import release_left_claims
from videolib.staging import drop_staged


@flow(
    name="bulk-reprocess",
    flow_run_name="reprocess-{creator_id}",
    task_runner=task_runner(),
    validate_parameters=True,
)
def bulk_reprocess(
    creator_id: Annotated[str, Field(min_length=1, max_length=64)],
    video_ids: Annotated[list[str] | None, Field(max_length=get_settings().max_ids)] = None,
    all_videos: bool = False,
    embedder: Literal["hashing", "minilm"] | None = None,
    batch_size: Annotated[int, Field(ge=1, le=100_000)] | None = None,
    chunk_target: Annotated[int, Field(ge=8, le=2000)] = 80,
    chunk_overlap: Annotated[int, Field(ge=0, le=1000)] = 16,
    chunk_unit: Literal["words", "tokens"] = "words",
    invalid_ids_key: str | None = None,
    retry_of: Annotated[str | None, Field(max_length=36)] = None,
    split: Annotated[int, Field(ge=1, le=16)] | None = None,
    manifest: Annotated[str | None, Field(max_length=512)] = None,
):
    """Re-chunk transcripts and recompute embeddings for videos of one creator.

    Args:
        creator_id: The creator whose videos are reprocessed; other creators' ids are reported as not_found.
        video_ids: Video ids (UUIDs), at most BULKOPS_MAX_IDS (10,000 by default). Leave empty with all_videos.
        all_videos: Reprocess every video of the creator that has a transcript and that no other operation or pipeline holds; the others are counted under not_selected, not as failures.
        embedder: hashing (built in, lexical) or minilm (the optional extra); default BULKOPS_EMBEDDER.
        batch_size: Videos per batch (default: 1000 with hashing, 100 with minilm); grows automatically so one run maps at most a few hundred batches.
        chunk_target: Most words (or tokens) per chunk.
        chunk_overlap: Words (or tokens) repeated from the end of the previous chunk; smaller than chunk_target.
        chunk_unit: Count chunk sizes in words or in tokens (letter/digit runs and punctuation marks).
        invalid_ids_key: Set by the CLI and the API, not by hand: where the request's malformed ids were set aside (reported as invalid_id).
        retry_of: The id of an earlier bulk-reprocess of this creator: reprocess again exactly the items it reported with a retryable error (busy, reprocess_error, database_error, batch_error). Leave video_ids and all_videos empty with it.
        split: Run the batches as this many child runs (bulk-share) on the work pool's workers, each taking its share (default BULKOPS_SPLIT, 1: all in this run).
        manifest: Instead of video_ids: the storage key of an id manifest (manifests/<creator_id>/..., one id per line, or a video_id column in .csv or .parquet), for selections of millions; upload one with POST /bulk/manifests or the CLI's --ids-file.
    """
    settings = get_settings()
    embedder_name = embedder or settings.embedder
    chunk_count = 0

    def prepare(result: OperationResult) -> list[str] | Plan:
        check_creator_id(creator_id)
        resources.callback(release_left, result.operation_id)  # when the run ends, however
        chunking = chunking_config(chunk_target, chunk_overlap, chunk_unit)
        # Load it now (a model loads once per process): a missing extra or a model that
        # cannot load is refused before any video is claimed.
        check_embedder(embedder_name, make=embedder_for, load=True)
        task_kwargs["chunking"] = chunking.model_dump()
        if manifest is not None:
            resources.callback(drop_staged, engine(), result.operation_id)  # when the run ends, however
            ids = select_manifest(result, creator_id=creator_id, manifest=manifest, batch_size=size,
                                  listed=bool(video_ids or all_videos or invalid_ids_key or retry_of),
                                  exclude_statuses=GONE_STATUSES)
        elif retry_of:
            ids = select_retry(result, creator_id=creator_id, retry_of=retry_of, flow_name="bulk-reprocess",
                               listed=bool(video_ids or all_videos or invalid_ids_key),
                               exclude_statuses=GONE_STATUSES)
        elif all_videos and not video_ids and not invalid_ids_key:
            # Only what a reprocess can act on; the rest is counted, not failed. Past
            # STAGE_LIBRARY_ABOVE videos staged in the database, not listed in memory.
            resources.callback(drop_staged, engine(), result.operation_id)  # when the run ends, however
            ids = select_reprocessable_library(result, creator_id=creator_id, batch_size=size,
                                               lease_s=settings.reprocess_lease_s, holders=HOLDERS)
            task_kwargs["whole_library"] = True
        else:
            ids = select_videos(result, creator_id=creator_id, video_ids=video_ids, all_videos=all_videos,
                                verb="reprocess", exclude_statuses=GONE_STATUSES, invalid_ids_key=invalid_ids_key)
        items = sum(ids.sizes) if isinstance(ids, Plan) else len(ids)
        if settings.task_runner == "threads" and eligible(embedder_for(embedder_name), items):
            # chunking and embedding in worker processes (videolib/compute_pool.py); on
            # Dask the batches run in the cluster's processes already
            resources.enter_context(held_compute_pool())
        return ids

    def release_left(operation_id: str) -> None:
        # Batches still working when the run ends (a cancel's drain ran out of time)
        # hold claims: their items were counted skipped, so give the videos back.
        released = release_left_claims(engine(), creator_id, operation_id)
        if released:
            get_run_logger().warning("released %s claims of batches still running as the run ended; those "
                                     "videos keep their old chunks", released)

    def on_outcome(_index: int, outcome: BatchOutcome) -> None:
        nonlocal chunk_count
        chunk_count += int(outcome.extra.get("chunks", 0))

    def finish(result: OperationResult, _started: float) -> None:
        result.message = result.message or f"{chunk_count} chunks written with embedder {embedder_name}"

    resources = ExitStack()
    size = batch_size or default_batch_size(embedder_name)

    # `prepare` fills in the validated chunking; the batches are mapped after it runs.
    task_kwargs: dict = {"creator_id": creator_id, "embedder": embedder_name, "chunking": {}}
    return Operation("reprocess", creator_id).run(
        prepare=prepare,
        batch_task=reprocess_video_batch,
        task_kwargs=task_kwargs,
        batch_size=size,
        on_outcome=on_outcome,
        finish=finish,
        cleanup=resources.close,
        split=split,
    )
