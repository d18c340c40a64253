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
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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
        except Exception as exc:  # noqa: BLE001 - one video's transcript, reported per item
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
#
# Workers are plain child processes (``python -m videolib.compute_pool``) fed pickled
# requests over a pipe, not a multiprocessing pool: multiprocessing's spawn (and
# forkserver) start every worker by importing the parent's main module again, so a
# caller's script without a ``__main__`` guard would run again in each worker (and fork
# is unsafe in a process with threads, as ours has). Protocol: an 8-byte length and a
# pickle each way; a request ``(items, chunking dict, embedder spec)``, a reply
# ``Prepared`` or ``_Failure``.

_LEN = struct.Struct("<Q")
_ROOT = str(Path(__file__).resolve().parent.parent)  # the directory that holds videolib/


@dataclass
class _Failure:
    error: str


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-s", "-m", "videolib.compute_pool"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        # Set by the parent at spawn, not by the worker once it has imported: the
        # priority holds from the start, and holds as soon as the pool is started.
        lower_priority(self.proc.pid)

    def call(self, request: tuple) -> Prepared:
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(_LEN.pack(len(data)) + data)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(_LEN.size)
            if len(head) < _LEN.size:
                raise EOFError("the worker closed its output")
            (size,) = _LEN.unpack(head)
            body = self.proc.stdout.read(size)
            if len(body) < size:
                raise EOFError("the worker's reply was cut short")
        except (OSError, EOFError) as exc:
            raise WorkerDied(f"chunking worker {self.proc.pid} died: {exc}") from exc
        reply = pickle.loads(body)
        if isinstance(reply, _Failure):
            raise RuntimeError(reply.error)
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the worker's loop ends
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class WorkerDied(RuntimeError):
    """A chunking worker process exited (killed, out of memory)."""


# How much lower than the parent the workers run (``nice`` steps). The batches' database
# writes, in the parent, are the job's serial path (one SQLite writer at a time); the
# chunking and embedding are parallel and queue up ahead of them. At equal priority the
# two workers took two thirds of the CPU from the writes on 2 cores, and the last writes
# ran after the compute had finished. Niced, the workers take what the writes leave.
# 20k videos on 2 cores (runs at nice 0 / 5 / 10 / 15 / 19): (b) 11.8 / 10.5 / 10.7 /
# 10.1 / 10.5 s; (a) 13.3 / 11.6 / 11.7 / 11.3 / 12.3 s. benchmarks/README.md, reprocess.
WORKER_NICE = 15


def lower_priority(pid: int, steps: int = WORKER_NICE) -> None:
    """Run process ``pid`` ``steps`` nice levels below this process (where the OS
    has priorities; lowering another process of the same user is always allowed)."""
    if hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + steps))
        except OSError:  # not permitted, or already gone: it runs at the parent's priority
            log.debug("could not lower the compute worker's priority", exc_info=True)


def _serve() -> int:
    from videolib.gc_tuning import tune_worker_gc

    tune_worker_gc()  # a worker only chunks and embeds: no cycles worth a collection every 700 allocations
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    embedders: dict = {}
    while True:
        head = stdin.read(_LEN.size)
        if len(head) < _LEN.size:
            return 0
        (size,) = _LEN.unpack(head)
        items, chunking, spec = pickle.loads(stdin.read(size))
        try:
            key = (spec[0], tuple(sorted(spec[1].items())))
            embedder = embedders.get(key)
            if embedder is None:
                from videolib.embedders import embedder_from_spec

                embedder = embedders[key] = embedder_from_spec(spec)
            reply: object = chunk_and_embed(items, ChunkingConfig(**chunking), embedder)
        except Exception as exc:  # noqa: BLE001 - the batch fails in the parent, as in-process
            reply = _Failure(f"{type(exc).__name__}: {exc}")
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_LEN.pack(len(data)) + data)
        stdout.flush()


class ComputePool:
    """Worker processes that chunk and embed batches, one batch per worker at a time."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.broken = False
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(self.workers)

    def start(self) -> None:
        """Start the workers now (they import while the caller plans)."""
        for _ in range(self.workers):
            worker = _Worker()
            self._all.append(worker)
            self._idle.put(worker)

    def chunk_and_embed(self, items: list[tuple[str, str]], chunking: ChunkingConfig, embedder) -> Prepared:
        """In a worker; in this process if a worker died (the job goes on, slower,
        rather than fail: the pool is then broken and not used again)."""
        if not self.broken:
            with self._slots:
                worker = self._idle.get()
                try:
                    return worker.call((items, chunking.model_dump(), embedder.process_spec()))
                except WorkerDied as exc:
                    if not self.broken:
                        self.broken = True
                        log.warning("%s; chunking and embedding in-process from now on", exc)
                finally:
                    self._idle.put(worker)
        return chunk_and_embed(items, chunking, embedder)

    def worker_pids(self) -> list[int]:
        return [worker.proc.pid for worker in self._all]

    def close(self) -> None:
        for worker in self._all:
            worker.close()


_pool: ComputePool | None = None
_holders = 0
_lock = threading.Lock()


def eligible(embedder, videos: int) -> bool:
    """Whether a job of ``videos`` with this embedder is worth the worker processes."""
    return _can_travel(embedder) and videos >= MIN_VIDEOS and (os.cpu_count() or 1) > 1


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


def chunk_and_embed_where_best(items: list[tuple[str, str]], chunking: ChunkingConfig, embedder) -> Prepared:
    """In the held pool's workers when there is one and the embedder can go there;
    otherwise in this process."""
    pool = _pool
    if pool is not None and _can_travel(embedder):
        return pool.chunk_and_embed(items, chunking, embedder)
    return chunk_and_embed(items, chunking, embedder)


def _can_travel(embedder) -> bool:
    return callable(getattr(embedder, "process_spec", None))


if __name__ == "__main__":
    # Serve from the module imported under its own name, so that what is pickled back
    # names videolib.compute_pool's classes, not __main__'s.
    from videolib.compute_pool import _serve as serve

    sys.exit(serve())
