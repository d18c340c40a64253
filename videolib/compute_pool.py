"""Chunking and embedding in worker processes, for embedders that run in Python.

Reprocess spends most of its CPU in Python: parsing and cutting transcripts, and the
hashing embedder's tokenising. Under one GIL, the task threads of a batch-mapped flow
take turns; the database writes (which release the GIL) were the only overlap. With
the pure part (transcripts in, chunks and vectors out) in worker processes, the
database work of one batch runs beside the chunking of the next ones, on every core.
Measured: benchmarks/README.md, reprocess.

Only embedders that can be rebuilt in a worker from a small spec (``process_spec()``)
go there: the hashing embedder. A model embedder (minilm) keeps its own threads and
its one loaded copy in the parent. Small jobs stay in-process too: starting workers
(a fresh interpreter importing numpy and the chunker) costs about a second.

The pool belongs to whoever holds it (:func:`held_compute_pool`, refcounted, like a
flow run); :func:`compute_pool` hands it to the batches, or ``None`` when nobody holds
one, and then they work in-process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from videolib.chunking import Chunk, ChunkingConfig, chunk_transcript

log = logging.getLogger(__name__)

# Below this many videos a job runs in-process (workers cost ~1 s to start).
MIN_VIDEOS = 2000


@dataclass
class Work:
    video_id: str
    chunks: list[Chunk] = field(default_factory=list)
    first: int = 0  # index of its first chunk in the batch's embedding matrix


@dataclass
class Prepared:
    """A batch's chunks and vectors, and the videos that produced none."""

    work: list[Work]
    vectors: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)  # video -> why its transcript could not be chunked
    empty: list[str] = field(default_factory=list)  # transcripts without a word


def chunk_and_embed(items: list[tuple[str, str]], chunking: ChunkingConfig, embedder) -> Prepared:
    """Chunk every ``(video_id, transcript)`` and embed all the chunks in one call."""
    work: list[Work] = []
    texts: list[str] = []
    failed: dict[str, str] = {}
    empty: list[str] = []
    for vid, transcript in items:
        try:
            chunks = chunk_transcript(transcript, chunking)
        except Exception as exc:
            failed[vid] = f"the transcript could not be chunked: {type(exc).__name__}: {exc}"[:500]
            continue
        if not chunks:
            empty.append(vid)
            continue
        work.append(Work(vid, chunks, first=len(texts)))
        texts.extend(chunk.content for chunk in chunks)
    vectors = embedder.embed(texts) if texts else np.zeros((0, embedder.dim), dtype=np.float32)
    return Prepared(work, vectors, failed, empty)


# --------------------------------------------------------------------------- workers

_worker_embedders: dict = {}


def _embedder_from_spec(spec: tuple[str, dict]):
    key = (spec[0], tuple(sorted(spec[1].items())))
    embedder = _worker_embedders.get(key)
    if embedder is None:
        from videolib.embedders import embedder_from_spec

        embedder = _worker_embedders[key] = embedder_from_spec(spec)
    return embedder


def _remote(items: list[tuple[str, str]], chunking: dict, spec: tuple[str, dict]) -> Prepared:
    return chunk_and_embed(items, ChunkingConfig(**chunking), _embedder_from_spec(spec))


def _warm() -> int:
    return os.getpid()


class ComputePool:
    """Worker processes that chunk and embed batches."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        # spawn, not fork: the parent runs threads (Prefect's, the task runner's).
        self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        self.broken = False

    def start(self) -> None:
        """Start the workers now (they import while the caller plans)."""
        for _ in range(self.workers):
            self._executor.submit(_warm)  # (the executor starts them all on a first submit)

    def chunk_and_embed(self, items: list[tuple[str, str]], chunking: ChunkingConfig, embedder) -> Prepared:
        """In a worker; in this process if the workers are gone (a worker that dies
        breaks the whole pool: the job goes on without it, slower, rather than fail)."""
        if not self.broken:
            try:
                return self._executor.submit(_remote, items, chunking.model_dump(), embedder.process_spec()).result()
            except BrokenProcessPool:
                if not self.broken:
                    self.broken = True
                    log.warning("the chunking worker processes died; chunking and embedding in-process from now on")
        return chunk_and_embed(items, chunking, embedder)

    def worker_pid(self) -> int:
        """The pid of a worker (whichever takes the call)."""
        return self._executor.submit(_warm).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


_pool: ComputePool | None = None
_holders = 0
_lock = threading.Lock()


def eligible(embedder, videos: int) -> bool:
    """Whether a job of ``videos`` with this embedder is worth the worker processes."""
    return (
        callable(getattr(embedder, "process_spec", None))
        and videos >= MIN_VIDEOS
        and (os.cpu_count() or 1) > 1
    )


@contextmanager
def held_compute_pool(workers: int | None = None) -> Iterator[ComputePool]:
    """Share this process's compute pool while the block runs (started on first hold,
    stopped when the last holder leaves)."""
    global _pool, _holders
    with _lock:
        if _pool is None:
            _pool = ComputePool(workers or os.cpu_count() or 1)
            _pool.start()
        _holders += 1
        pool = _pool
    try:
        yield pool
    finally:
        with _lock:
            _holders -= 1
            last = _holders == 0
            if last:
                _pool = None
        if last:
            pool.close()


def compute_pool() -> ComputePool | None:
    """The held pool, or None (then work in-process)."""
    return _pool
