"""How an operation's selection becomes ids: the whole library, the creator's own among
listed ids (malformed and foreign ones reported per item), the same from an id manifest
in storage (staged in the database, batches as ranges of it), or the retryable failures
of an earlier run, read from its report in storage."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from prefect import get_client

from config import get_settings
from tasks.resources import engine, store
from videolib.ids import RequestError
from videolib.manifests import CHUNK, check_manifest_key, iter_manifest, manifest_sha256
from videolib.operation import (
    BATCH_ERROR,
    ItemError,
    OperationResult,
    describe_not_selected,
    effective_batch_size,
    parse_video_ids,
)
from videolib.report import read_retryable_ids
from videolib.selection import (
    check_selection,
    count_creator_videos,
    iter_creator_video_ids,
    read_invalid_ids,
    resolve_owned,
)
from videolib.staging import batch_ids, keep_owned, stage_manifest, staged_batches

# A whole library larger than this (a delete's ``all_videos``) is staged in the database
# like a manifest instead of listed in the run's memory (about 100 MB per million ids).
STAGE_LIBRARY_ABOVE = 250_000


def select_videos(result: OperationResult, *, creator_id: str, video_ids: Sequence[str] | None, all_videos: bool,
                  verb: str, exclude_statuses: Sequence[str] = (), invalid_ids_key: str | None = None) -> list[str]:
    """The ids an operation works on: every video of the creator (``all_videos``), or the
    creator's own among the listed ids (malformed ids ``invalid_id``, others'/unknown ids
    and those in ``exclude_statuses`` ``not_found``). Sets ``result.requested``."""
    listed = listed_ids(result, creator_id=creator_id, video_ids=video_ids, all_videos=all_videos,
                        invalid_ids_key=invalid_ids_key, verb=verb)
    if listed is None:
        ids = list(iter_creator_video_ids(engine(), creator_id))
        result.requested = len(ids)
        return ids
    owned, missing = resolve_owned(engine(), creator_id, listed, exclude_statuses=exclude_statuses)
    result.add_errors(missing)
    return owned


def listed_ids(result: OperationResult, *, creator_id: str, video_ids: Sequence[str] | None, all_videos: bool,
               invalid_ids_key: str | None, filtered: bool = False, everything_by_default: bool = False,
               verb: str = "select") -> list[str] | None:
    """The distinct valid ids a request lists (None: it lists none, so the whole library),
    with its malformed ones, given inline or set aside in storage by a front door
    (``invalid_ids_key``), added to ``result`` as ``invalid_id`` items and counted in
    ``requested``."""
    listed = bool(video_ids or invalid_ids_key)
    check_selection(listed=listed, all_videos=all_videos, filtered=filtered,
                    everything_by_default=everything_by_default, verb=verb)
    if not listed:
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


def select_retry(result: OperationResult, *, creator_id: str, retry_of: str, flow_name: str,
                 listed: bool, exclude_statuses: Sequence[str] = ()) -> list[str]:
    """The ids a retry works on: those the earlier operation ``retry_of`` (the same flow,
    the same creator) reported with a retryable error, read from its report in storage,
    so a retry of a million failures works. The creator's own of them; the rest (deleted
    since) ``not_found``. Sets ``result.requested`` and ``result.retry_of``."""
    if listed:
        raise RequestError("bad_selection", "a retry takes the items of `retry_of`: give no `video_ids` or "
                                            "`all_videos` with it")
    try:
        with get_client(sync_client=True) as client:
            earlier = client.read_flow_run(uuid.UUID(retry_of))
            earlier_flow = client.read_flow(earlier.flow_id).name
    except Exception:  # noqa: BLE001 - malformed, unknown, or Prefect cannot say: nothing to take again
        earlier, earlier_flow = None, None
    if earlier is None or earlier_flow != flow_name or (earlier.parameters or {}).get("creator_id") != creator_id:
        raise RequestError("nothing_to_retry", f"`retry_of` {str(retry_of)[:40]!r} is not a {flow_name} operation "
                                               f"of creator {creator_id!r}")
    ids = read_retryable_ids(store(), retry_of)
    if not ids:
        raise RequestError("nothing_to_retry", f"operation {retry_of} has no retryable failed items")
    result.retry_of = retry_of
    result.requested = len(ids)
    owned, missing = resolve_owned(engine(), creator_id, ids, exclude_statuses=exclude_statuses)
    result.add_errors(missing)
    return owned


def select_manifest(result: OperationResult, *, creator_id: str, manifest: str, listed: bool, batch_size: int,
                    exclude_statuses: Sequence[str] = ()):
    """The creator's own ids of an id manifest in storage (``videolib/manifests.py``),
    streamed into the database's ``staged_ids`` a chunk at a time; a ``Plan`` whose
    batches are ranges of them (each task reads its own ids back). Malformed lines are
    ``invalid_id`` items, others' and unknown ids ``not_found``; duplicates collapse.
    Sets ``result.requested`` and ``result.manifest`` (key, sha256, lines)."""
    if listed:
        raise RequestError("bad_selection", "give either `manifest` or `video_ids`/`all_videos`, not both")
    check_manifest_key(creator_id, manifest)
    settings = get_settings()
    lines = 0

    def counted():
        nonlocal lines
        for part in iter_manifest(store(), manifest, max_ids=settings.max_manifest_ids):
            lines += len(part)
            yield part

    staged = stage_manifest(engine(), result.operation_id, counted(), on_invalid=result.add_errors)
    if lines == 0:
        raise RequestError("empty_selection", f"manifest {manifest!r} lists no ids")
    result.manifest = {"key": manifest, "sha256": manifest_sha256(store(), manifest), "lines": lines}
    result.requested = staged.requested
    owned = keep_owned(engine(), result.operation_id, creator_id, exclude_statuses=exclude_statuses,
                       on_missing=result.add_errors)
    return staged_plan(result.operation_id, owned, batch_size)


def staged_plan(operation_id: str, count: int, batch_size: int):
    """A ``Plan`` whose batches are ranges of the operation's ``count`` staged ids."""
    from flows.operation import Plan

    settings = get_settings()
    size = effective_batch_size(count, batch_size, settings.max_batches, workers=settings.task_workers)
    batches = staged_batches(engine(), operation_id, size)
    return Plan(batches=batches, sizes=[b["count"] for b in batches],
                failed_items=lambda i, detail: [ItemError(v, BATCH_ERROR, detail)
                                                for v in batch_ids(engine(), batches[i])])


def select_library(result: OperationResult, *, creator_id: str, batch_size: int):
    """Every video of the creator (``all_videos``) for an operation that takes staged
    batches: listed in memory up to ``STAGE_LIBRARY_ABOVE`` videos, staged in
    ``staged_ids`` by keyset pages past that (the run drops them as it ends). Sets
    ``result.requested``."""
    if count_creator_videos(engine(), creator_id) <= STAGE_LIBRARY_ABOVE:
        ids = list(iter_creator_video_ids(engine(), creator_id))
        result.requested = len(ids)
        return ids

    def pages():
        page: list[str] = []
        for vid in iter_creator_video_ids(engine(), creator_id, chunk=CHUNK):
            page.append(vid)
            if len(page) == CHUNK:
                yield page
                page = []
        if page:
            yield page

    staged = stage_manifest(engine(), result.operation_id, pages())
    result.requested = staged.ids
    return staged_plan(result.operation_id, staged.ids, batch_size)


def select_reprocessable_library(result: OperationResult, *, creator_id: str, batch_size: int, lease_s: int,
                                 holders=None):
    """What a reprocess's ``all_videos`` can act on (``videolib.reprocess.reprocessable_pages``:
    a transcript, nobody else holding it; the others counted in ``result.not_selected``),
    listed up to ``STAGE_LIBRARY_ABOVE`` videos, staged by keyset pages past that, as a
    delete's whole library is. Sets ``result.requested``; ``empty_selection`` when none."""
    from videolib.reprocess import reprocessable_pages

    not_selected: dict[str, int] = {}
    pages = reprocessable_pages(engine(), creator_id, operation_id=result.operation_id, lease_s=lease_s,
                                holders=holders, not_selected=not_selected, page=CHUNK)
    if count_creator_videos(engine(), creator_id) > STAGE_LIBRARY_ABOVE:
        selection = staged_plan(result.operation_id, stage_manifest(engine(), result.operation_id, pages).ids,
                                batch_size)
        count = sum(selection.sizes)
    else:
        selection = [vid for page in pages for vid in page]
        count = len(selection)
    result.not_selected = not_selected
    if not count:
        left_out = describe_not_selected(not_selected)
        raise RequestError("empty_selection", f"creator {creator_id!r} has no videos to reprocess"
                           + (f": {left_out}" if left_out else ""))
    result.requested = count
    return selection
