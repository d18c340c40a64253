"""Who owns what: resolve a request to the creator's own video ids, in chunks.

Ids of other creators are indistinguishable from unknown ids (``not_found``): the
answer never reveals that a video exists for someone else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import Engine, func, select

from videolib.db.models import Video
from videolib.operation import NOT_FOUND, ItemError

# Stay well under every driver's bound-parameter limit.
IN_CHUNK = 500


def chunked(items: Sequence[str], size: int = IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def owned_statuses(engine: Engine, creator_id: str, ids: Sequence[str]) -> dict[str, str]:
    """``{id: status}`` for the ids in ``ids`` that belong to ``creator_id``."""
    found: dict[str, str] = {}
    with engine.connect() as conn:
        for part in chunked(ids):
            rows = conn.execute(
                select(Video.id, Video.status).where(Video.creator_id == creator_id, Video.id.in_(part))
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
    """Every video id of the creator, in id order, streamed by keyset pages."""
    last = ""
    while True:
        query = select(Video.id).where(Video.creator_id == creator_id, Video.id > last)
        if statuses:
            query = query.where(Video.status.in_(list(statuses)))
        with engine.connect() as conn:
            page = conn.execute(query.order_by(Video.id).limit(chunk)).scalars().all()
        if not page:
            return
        yield from page
        last = page[-1]


def count_creator_videos(engine: Engine, creator_id: str, *, statuses: Sequence[str] | None = None) -> int:
    query = select(func.count()).select_from(Video).where(Video.creator_id == creator_id)
    if statuses:
        query = query.where(Video.status.in_(list(statuses)))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
