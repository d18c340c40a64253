"""A realistic demo library: creators, videos with awkward text, files and transcript chunks.

Titles and descriptions carry commas, quotes, newlines and non-ASCII text (the cases
exports must survive); statuses vary; some videos have no transcript. Each video can
get a small real file and thumbnail in storage. Same ``seed``, same library.
"""

from __future__ import annotations

import logging
import random
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select

from videolib.db.models import Video, VideoChunk
from videolib.embedders import Embedder, to_blob
from videolib.storage import ObjectStore

log = logging.getLogger(__name__)

_TOPICS = [
    "sourdough bread", "bike repair", "tax returns", "Rust lifetimes", "watercolour skies",
    "café latte art", "Kubernetes upgrades", "marathon training", "guitar chords", "home solar",
    "vegan ramen", "chess openings", "Łódź street food", "naïve Bayes", "São Paulo at night",
]
_TITLE_FORMS = [
    "How to {t}, step by step",
    '"{t}" explained in 10 minutes',
    "{t}: tips, tricks & mistakes",
    "Why I quit {t} — and came back",
    "{t} 🚀 (part {n})",
    "=SUM(A1:A9) and other {t} myths",
    "{t}\nLive Q&A",
    "Les bases de {t}, épisode {n}",
    "{t}：初心者ガイド",
    "-{n} degrees: {t} in winter",
]
_SENTENCES = [
    "In this video we walk through {t} from the very beginning.",
    "First, gather everything you need and check it twice.",
    "A common mistake is to rush this part, so take your time.",
    "Here the trick is patience: wait until the surface looks even.",
    "If it goes wrong, don't panic, because it can usually be fixed.",
    "Viewers asked about {t} last week, so this is the follow-up.",
    "We'll measure the results and compare them with the old method.",
    "Notice how small changes add up over a few repetitions.",
    "That's the hardest step done; the rest is mostly cleanup.",
    "Thanks for watching, and leave your questions about {t} below.",
]
_STATUSES = [("ready", 0.72), ("uploaded", 0.12), ("processing", 0.06), ("failed", 0.10)]

# Minimal real file bodies: an MP4 'ftyp' box and a JPEG's start/end markers.
_MP4_HEAD = struct.pack(">I4s4sI8s", 24, b"ftyp", b"isom", 0x200, b"isomiso2")
_JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    b"\xff\xdb\x00C\x00" + bytes(range(1, 65)) + b"\xff\xd9"
)


@dataclass
class SeedReport:
    creators: dict[str, int] = field(default_factory=dict)
    videos: int = 0
    chunks: int = 0
    objects: int = 0

    def to_dict(self) -> dict:
        return {
            "creators": [{"creator_id": c, "videos": n} for c, n in self.creators.items()],
            "videos": self.videos,
            "chunks": self.chunks,
        }


class SeedConflictError(RuntimeError):
    pass


def creator_ids(count: int) -> list[str]:
    return [f"creator-{i + 1:03d}" for i in range(count)]


def seed_library(
    engine: Engine,
    store: ObjectStore | None,
    embedder: Embedder | None,
    *,
    videos: int,
    creators: int = 3,
    seed: int = 0,
    chunks_per_video: int | None = None,
    transcript_ratio: float = 0.8,
    status: str | None = None,
    batch: int = 5000,
    on_progress: Callable[[int], None] | None = None,
) -> SeedReport:
    """Insert ``videos`` videos spread over ``creators`` creators; files too if ``store``.

    ``chunks_per_video`` fixes the chunk count of every video with a transcript (the
    benchmarks use 10); by default it varies from 2 to 12. ``status`` forces one status.
    Chunks get embeddings from ``embedder`` for ready videos (none if it is None).
    """
    if videos < 0:
        raise ValueError("`videos` must be >= 0")
    if creators < 1:
        raise ValueError("`creators` must be >= 1")
    rng = random.Random(seed)
    owners = creator_ids(creators)
    report = SeedReport(creators={c: 0 for c in owners})
    base_time = datetime(2024, 1, 1, tzinfo=UTC)
    done = 0
    while done < videos:
        size = min(batch, videos - done)
        video_rows, chunk_rows, files = _generate(
            rng, owners, size, base_time, chunks_per_video, transcript_ratio, status, store is not None
        )
        if done == 0 and video_rows:
            with engine.connect() as conn:
                if conn.execute(select(Video.id).where(Video.id == video_rows[0]["id"])).first():
                    raise SeedConflictError(
                        f"this library was already seeded with seed {seed}; pass another --seed"
                    )
        if embedder is not None:
            embed_rows = [row for row in chunk_rows if row["_embed"]]
            if embed_rows:
                vectors = embedder.embed([row["content"] for row in embed_rows])
                for row, vector in zip(embed_rows, vectors, strict=True):
                    row["embedding"] = to_blob(vector)
                    row["model"] = embedder.name
        for row in chunk_rows:
            del row["_embed"]
        if embedder is not None:
            now = datetime.now(UTC)
            embedded = {row["video_id"] for row in chunk_rows if row["embedding"] is not None}
            for row in video_rows:
                if row["id"] in embedded:
                    row["embedded_at"] = now
                    row["embedding_model"] = embedder.name
        if store is not None:
            store.put_many(files, atomic=False)  # new objects nobody reads yet
            report.objects += len(files)
        with engine.begin() as conn:
            conn.execute(insert(Video), video_rows)
            if chunk_rows:
                conn.execute(insert(VideoChunk), chunk_rows)
        for row in video_rows:
            report.creators[row["creator_id"]] += 1
        report.videos += len(video_rows)
        report.chunks += len(chunk_rows)
        done += size
        if on_progress is not None:
            on_progress(size)
    log.info("seeded %s videos, %s chunks, %s objects", report.videos, report.chunks, report.objects)
    return report


def _timestamp(seconds: float) -> str:
    millis = round(seconds * 1000)
    return "%02d:%02d:%02d.%03d" % (millis // 3_600_000, millis // 60_000 % 60, millis // 1000 % 60, millis % 1000)


def _webvtt(sentences: list[str], duration: float) -> str:
    step = duration / max(len(sentences), 1)
    cues = [
        f"{i + 1}\n{_timestamp(i * step)} --> {_timestamp((i + 1) * step)}\n{sentence}"
        for i, sentence in enumerate(sentences)
    ]
    return "WEBVTT\n\n" + "\n\n".join(cues) + "\n"


def _pick_status(rng: random.Random) -> str:
    x = rng.random()
    for name, weight in _STATUSES:
        if x < weight:
            return name
        x -= weight
    return "ready"


def _generate(rng, owners, count, base_time, chunks_per_video, transcript_ratio, status, with_files):
    video_rows: list[dict] = []
    chunk_rows: list[dict] = []
    files: dict[str, bytes] = {}
    for _ in range(count):
        vid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        creator = owners[rng.randrange(len(owners))]
        topic = rng.choice(_TOPICS)
        n = rng.randint(1, 40)
        title = rng.choice(_TITLE_FORMS).format(t=topic, n=n)
        description = None
        if rng.random() < 0.85:
            description = (
                f'All about {topic}, with "quotes", commas, and a second line.\n'
                f"Links: https://example.com/{n}?a=1&b=2 · Ünïcödé ✓"
            )
        video_status = status or _pick_status(rng)
        created = base_time + timedelta(seconds=rng.randrange(0, 3 * 365 * 86400))
        duration = round(rng.uniform(15, 3600), 3)
        has_transcript = rng.random() < transcript_ratio
        chunks: list[str] = []
        spoken: list[str] = []
        if has_transcript:
            k = chunks_per_video if chunks_per_video is not None else rng.randint(2, 12)
            for _c in range(k):
                sentences = [rng.choice(_SENTENCES).format(t=topic) for _s in range(rng.randint(4, 7))]
                chunks.append(" ".join(sentences))
                spoken.extend(sentences)
        transcript = None
        if has_transcript:
            # A third of the transcripts are WebVTT captions (one cue per sentence), the
            # rest plain text: reprocessing carries cue times into the chunks.
            transcript = _webvtt(spoken, duration) if n % 3 == 0 else " ".join(chunks)
        storage_key = thumbnail_key = None
        size_bytes = None
        if with_files:
            storage_key = f"videos/{creator}/{vid}/source.mp4"
            thumbnail_key = f"videos/{creator}/{vid}/thumbnail.jpg"
            body = _MP4_HEAD + vid.encode() + bytes(rng.randrange(256) for _ in range(16)) * 64
            files[storage_key] = body
            files[thumbnail_key] = _JPEG
            size_bytes = len(body)
        else:
            size_bytes = int(duration * rng.randint(50_000, 500_000))
        video_rows.append(
            {
                "id": vid,
                "creator_id": creator,
                "title": title,
                "description": description,
                "status": video_status,
                "storage_key": storage_key,
                "thumbnail_key": thumbnail_key,
                "transcript": transcript,
                "duration_s": duration,
                "size_bytes": size_bytes,
                "created_at": created,
                "updated_at": created,
                "embedded_at": None,
                "embedding_model": None,
            }
        )
        step = duration / max(len(chunks), 1)
        for index, content in enumerate(chunks):
            chunk_rows.append(
                {
                    "video_id": vid,
                    "chunk_index": index,
                    "content": content,
                    "start_s": round(index * step, 3),
                    "end_s": round((index + 1) * step, 3),
                    "embedding": None,
                    "model": None,
                    "_embed": video_status == "ready",
                }
            )
    return video_rows, chunk_rows, files
