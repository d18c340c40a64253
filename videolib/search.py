"""Semantic (or, with the hashing embedder, lexical) search over a creator's chunks.

The query is embedded with the same embedder that made the chunks; only chunks whose
``model`` is that embedder's name are compared (vectors of different models live in
different spaces). Vectors are L2-normalised, so cosine similarity is a dot product.
Chunks are read in pages and scored with numpy, keeping only the running top k, so
memory does not grow with the library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import Engine, func, select

from videolib.db.models import GONE_STATUSES, Video, VideoChunk
from videolib.embedders import Embedder
from videolib.ids import RequestError

MAX_TOP = 100
MAX_QUERY_CHARS = 2000
PAGE = 20_000


@dataclass
class SearchHit:
    video_id: str
    title: str
    chunk_index: int
    score: float
    start_s: float | None
    end_s: float | None
    content: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    creator_id: str
    query: str
    model: str
    top: int
    searched_chunks: int
    other_model_chunks: int
    results: list[SearchHit]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["results"] = [hit.to_dict() for hit in self.results]
        return data


def check_query(query: object, top: object) -> tuple[str, int]:
    if not isinstance(query, str) or not query.strip():
        raise RequestError("empty_query", "the search query is empty: give some words to search for")
    if len(query) > MAX_QUERY_CHARS:
        raise RequestError("query_too_long", f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS}")
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_TOP:
        raise RequestError("bad_top", f"`top` must be a whole number from 1 to {MAX_TOP}, got {top!r}")
    return query.strip(), top


def search_chunks(engine: Engine, embedder: Embedder, *, creator_id: str, query: str, top: int = 10) -> SearchResult:
    """The ``top`` chunks of the creator's live videos most similar to ``query``."""
    query, top = check_query(query, top)
    q = embedder.embed([query])[0].astype(np.float32)
    best_scores = np.zeros(0, dtype=np.float32)
    best_ids = np.zeros(0, dtype=np.int64)
    searched = 0
    last_id = 0
    live = (Video.creator_id == creator_id, Video.status.not_in(GONE_STATUSES))
    with engine.connect() as conn:
        while True:
            rows = conn.execute(
                select(VideoChunk.id, VideoChunk.embedding)
                .join(Video, Video.id == VideoChunk.video_id)
                .where(*live, VideoChunk.model == embedder.name, VideoChunk.embedding.is_not(None),
                       VideoChunk.id > last_id)
                .order_by(VideoChunk.id)
                .limit(PAGE)
            ).all()
            if not rows:
                break
            last_id = rows[-1][0]
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            blob = b"".join(r[1] if len(r[1]) == 4 * embedder.dim else bytes(4 * embedder.dim) for r in rows)
            matrix = np.frombuffer(blob, dtype="<f4").reshape(len(rows), embedder.dim)
            scores = matrix @ q
            searched += len(rows)
            all_scores = np.concatenate([best_scores, scores])
            all_ids = np.concatenate([best_ids, ids])
            if len(all_scores) > top:
                keep = np.argpartition(-all_scores, top - 1)[:top]
                all_scores, all_ids = all_scores[keep], all_ids[keep]
            best_scores, best_ids = all_scores, all_ids
        other = conn.execute(
            select(func.count())
            .select_from(VideoChunk)
            .join(Video, Video.id == VideoChunk.video_id)
            .where(*live, VideoChunk.embedding.is_not(None), VideoChunk.model != embedder.name)
        ).scalar_one()
        order = np.lexsort((best_ids, -best_scores))  # best first; ties by chunk id
        hits: list[SearchHit] = []
        if len(order):
            chosen = [int(best_ids[i]) for i in order]
            details = {
                row.id: row
                for row in conn.execute(
                    select(VideoChunk.id, VideoChunk.video_id, VideoChunk.chunk_index, VideoChunk.start_s,
                           VideoChunk.end_s, VideoChunk.content, Video.title)
                    .join(Video, Video.id == VideoChunk.video_id)
                    .where(VideoChunk.id.in_(chosen))
                )
            }
            for i in order:
                row = details.get(int(best_ids[i]))
                if row is None:  # deleted meanwhile
                    continue
                hits.append(
                    SearchHit(row.video_id, row.title, row.chunk_index, round(float(best_scores[i]), 6),
                              row.start_s, row.end_s, row.content)
                )
    return SearchResult(creator_id, query, embedder.name, top, searched, int(other), hits)
