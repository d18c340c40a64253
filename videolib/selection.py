"""Who owns what: resolve a request to the creator's own video ids, in chunks.

Ids of other creators are indistinguishable from unknown ids (``not_found``): the
answer never reveals that a video exists for someone else.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence

from sqlalchemy import Engine, func, select

from videolib.db.models import Video
from videolib.ids import RequestError
from videolib.operation import INVALID_DETAIL, INVALID_ID, NOT_FOUND, ItemError, echo_id
from videolib.storage import ObjectStore

# Stay well under every driver's bound-parameter limit.
IN_CHUNK = 500


def chunked(items: Sequence[str], size: int = IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def check_selection(*, listed: bool, all_videos: bool, filtered: bool = False,
                    everything_by_default: bool = False, verb: str = "select") -> None:
    """Refuse a selection that is contradictory (``bad_selection``) or missing
    (``empty_selection``): ids and ``all_videos`` together, or ids and a filter; neither
    ids nor ``all_videos`` unless no selection means everything (an export)."""
    if all_videos and listed:
        raise RequestError("bad_selection", "give either `video_ids` or `all_videos`, not both")
    if filtered and listed:
        raise RequestError("bad_selection", "give either `video_ids` or a filter (status, created_after/before)")
    if not listed and not all_videos and not everything_by_default:
        raise RequestError(
            "empty_selection", f"no videos selected: give `video_ids`, or set `all_videos` to {verb} everything"
        )


# A trashed video (the undo window of deletes, videolib/trash.py) is gone for every
# operation: no selection sees it, and its id is not_found.
VISIBLE = Video.status != "trashed"


def owned_statuses(engine: Engine, creator_id: str, ids: Sequence[str]) -> dict[str, str]:
    """``{id: status}`` for the ids in ``ids`` that belong to ``creator_id`` (not trashed)."""
    found: dict[str, str] = {}
    with engine.connect() as conn:
        for part in chunked(ids):
            rows = conn.execute(
                select(Video.id, Video.status).where(Video.creator_id == creator_id, Video.id.in_(part), VISIBLE)
            )
            found.update({row.id: row.status for row in rows})
    return found


def resolve_owned(
    engine: Engine, creator_id: str, ids: Sequence[str], *, exclude_statuses: Sequence[str] = ()
) -> tuple[list[str], list[ItemError]]:
    """Split ``ids`` into the creator's own (in request order) and ``not_found`` errors."""
    statuses = owned_statuses(engine, creator_id, ids)
    owned: list[str] = []
    errors: list[ItemError] = []
    for vid in ids:
        status = statuses.get(vid)
        if status is None or status in exclude_statuses:
            errors.append(ItemError(vid, NOT_FOUND, "no such video for this creator"))
        else:
            owned.append(vid)
    return owned, errors


def iter_creator_video_ids(
    engine: Engine, creator_id: str, *, statuses: Sequence[str] | None = None, chunk: int = 10_000
) -> Iterator[str]:
    """Every video id of the creator (not trashed), in id order, streamed by keyset pages."""
    last = ""
    while True:
        query = select(Video.id).where(Video.creator_id == creator_id, Video.id > last, VISIBLE)
        if statuses:
            query = query.where(Video.status.in_(list(statuses)))
        with engine.connect() as conn:
            page = conn.execute(query.order_by(Video.id).limit(chunk)).scalars().all()
        if not page:
            return
        yield from page
        last = page[-1]


def count_creator_videos(engine: Engine, creator_id: str, *, statuses: Sequence[str] | None = None) -> int:
    query = select(func.count()).select_from(Video).where(Video.creator_id == creator_id, VISIBLE)
    if statuses:
        query = query.where(Video.status.in_(list(statuses)))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


# Malformed ids never travel as flow-run parameters (a list of long junk would pass
# Prefect's 512 KiB limit while the valid ids fit): a front door that checks the ids
# before launch stores their echoes here and passes the key; the run reports them as
# invalid_id items like any other.
INVALID_IDS_PREFIX = "requests"
_INVALID_IDS_KEY = re.compile(r"^requests/(?P<creator>[^/]+)/invalid-ids-[0-9a-f]{32}\.json$")


def stage_invalid_ids(store: ObjectStore, creator_id: str, echoes: Sequence[str]) -> str:
    """Store the echoes of a request's malformed ids; returns the key a run takes."""
    key = f"{INVALID_IDS_PREFIX}/{creator_id}/invalid-ids-{uuid.uuid4().hex}.json"
    document = {"creator_id": creator_id, "invalid_ids": [echo_id(e) for e in echoes]}
    store.put(key, json.dumps(document, ensure_ascii=False).encode("utf-8"))
    return key


def read_invalid_ids(store: ObjectStore, creator_id: str, key: str) -> list[ItemError]:
    """The ``invalid_id`` items a front door set aside for this creator's run."""
    match = _INVALID_IDS_KEY.match(key) if isinstance(key, str) else None
    if match is None or match.group("creator") != creator_id:
        raise RequestError("bad_selection", f"`invalid_ids_key` must name this creator's set-aside ids "
                                            f"(requests/{creator_id}/invalid-ids-<hex>.json); got {echo_id(key)!r}")
    try:
        document = json.loads(store.get(key))
    except FileNotFoundError:
        raise RequestError("bad_selection", f"the malformed ids set aside at {key} are gone; "
                                            "send the request again") from None
    return [ItemError(echo_id(e), INVALID_ID, INVALID_DETAIL) for e in document.get("invalid_ids", [])]
