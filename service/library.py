"""The library itself: create or upgrade its schema, seed a demo library, search its
transcripts, and the demo's plan (which operations ``bulkops demo`` runs, in order).

Nothing here imports prefect.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from config import get_settings
from service.environment import database, ready_database, ready_store, redact
from service.requests import DeleteRequest, ExportRequest, OperationRequest, ReprocessRequest, SearchRequest
from videolib.ids import RequestError


def init_schema() -> dict[str, Any]:
    """Create or upgrade the schema; ``{"database", "before", "revision"}``."""
    from videolib.db.migrate import upgrade

    before, after = upgrade(database())
    return {"database": redact(get_settings().database_url), "before": before, "revision": after}


def seed(*, videos: int, creators: int = 3, seed_value: int | None = None, files: bool = True,
         on_progress: Callable[[int], None] | None = None):
    """A demo library (``videolib.seed``); ``(report, the seed used)``. The same seed on a
    library it already seeded is refused (``already_seeded``)."""
    from videolib.embedders import get_embedder
    from videolib.seed import SeedConflictError, seed_library

    store = ready_store() if files else None
    engine = ready_database()
    seed_value = random.SystemRandom().randrange(2**31) if seed_value is None else seed_value
    try:
        report = seed_library(engine, store, get_embedder(get_settings().embedder), videos=videos,
                              creators=creators, seed=seed_value, on_progress=on_progress)
    except SeedConflictError as exc:
        raise RequestError("already_seeded", str(exc)) from exc
    return report, seed_value


def search(request: SearchRequest) -> dict[str, Any]:
    """The chunks most similar to the query, as a document (with a ``message`` saying
    what to do when none of the creator's chunks is embedded with the query's model)."""
    from videolib.embedders import get_embedder
    from videolib.search import search_chunks

    result = search_chunks(ready_database(), get_embedder(request.embedder_name), creator_id=request.creator_id,
                           query=request.query, top=request.top)
    document = result.to_dict()
    if not result.searched_chunks:
        document["message"] = (
            f"no chunks of creator {request.creator_id!r} are embedded with {result.model}: "
            f"run `bulkops reprocess --creator {request.creator_id} --all --embedder {request.embedder_name}` first"
        )
    return document


@dataclass
class Demo:
    """What ``bulkops demo`` does on a freshly seeded library: each step works on what the
    one before it left (the exports read what reprocess wrote)."""

    report: Any
    creator: str
    store: Any
    database: str
    steps: list[tuple[str, OperationRequest]] = field(default_factory=list)
    search_after: str = "bulk-reprocess"  # the step after which a search shows the new chunks
    query: str = "what is a common mistake to avoid"


def demo(*, videos: int) -> Demo:
    """Seed a demo library (3 creators) and plan the demo's operations on its first creator:
    reprocess ``--all`` (videos without a transcript or held by another pipeline are counted
    as not selected), exports to Parquet and CSV, then a dry run and a delete of half."""
    from videolib.db.migrate import upgrade
    from videolib.selection import iter_creator_video_ids

    store = ready_store()
    engine = database()
    upgrade(engine)
    report, _seed = seed(videos=videos, creators=3)
    creator = next(iter(report.creators))
    mine = list(iter_creator_video_ids(engine, creator))
    targets = mine[: max(1, len(mine) // 2)]
    batch = max(10, len(targets) // 5)
    embedder = get_settings().embedder
    steps: list[tuple[str, OperationRequest]] = [
        ("2. reprocess transcripts (re-chunk, re-embed)",
         ReprocessRequest(creator_id=creator, all_videos=True, embedder=embedder, batch_size=max(10, len(mine) // 8))),
        ("4. export to Parquet", ExportRequest(creator_id=creator, format="parquet", batch_size=200)),
        ("5. export to CSV (formula guard on)", ExportRequest(creator_id=creator, format="csv", batch_size=200)),
        ("6. delete (dry run)", DeleteRequest(creator_id=creator, video_ids=targets, dry_run=True, batch_size=batch)),
        ("7. delete", DeleteRequest(creator_id=creator, video_ids=targets, batch_size=batch)),
    ]
    return Demo(report=report, creator=creator, store=store, database=redact(get_settings().database_url), steps=steps)
