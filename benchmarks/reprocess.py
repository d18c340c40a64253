#!/usr/bin/env python
"""Bulk reprocess, four ways, side by side on the same seeded data, in one process.

(a) flow      the ``bulk-reprocess`` Prefect flow (batches mapped as task runs, 8 workers)
(b) library   the same library code without Prefect: ``plan_batches`` + ``reprocess_batch``
              (claim, chunk, one embed call per batch, one transaction per batch with a
              savepoint per video) over a ThreadPoolExecutor(8)
(c) baseline  seed-style: one video at a time, one embed call per chunk, row-by-row
              inserts, a progress write and a commit per video
(d) embedder  the embedder alone, on the same chunk texts, in the same batches as (b)

Each variant gets its own copy of one seeded SQLite template (20k videos by default,
each with a transcript of about 10 chunks' worth of sentences and 10 old embedded
chunks). After each variant the benchmark checks the work: every video ``ready`` with
the embedder's model, the expected number of chunks, and the exact chunks of a sample
of videos.

The real model (``minilm``, where its extra is installed) runs at about 50 chunks/s on
2 cores, so it is measured on a sample (``--model-videos``, ~1k chunks): (b) and (d)
only.

    python benchmarks/reprocess.py                    # 20k videos
    python benchmarks/reprocess.py --smoke            # 200 videos, a quick check
    python benchmarks/reprocess.py --repeat 3 --json reprocess.json
"""

from __future__ import annotations

import _common as common  # first: Prefect's settings before anything imports prefect
import argparse
import contextlib
import os
import random
import shutil
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import REPO, console, note, ratio_table, ratios, results_table, rounds

CREATOR = common.CREATOR
SEED = common.SEED
CHUNKS_PER_VIDEO = 10
WORKERS = 8
MAX_BATCHES = 300
VERIFY_SAMPLE = 200

TARGETS = {
    "a/b": ("<=", 1.25, "(a) within 1.25x of (b)"),
    "c/a": (">=", 10.0, "(a) at least 10x faster than (c)"),
}
LABELS = {
    "a": "(a) bulk-reprocess flow (Prefect)",
    "b": "(b) library, no Prefect",
    "c": "(c) seed-style baseline",
    "d": "(d) embedder alone",
}


@dataclass
class Measurement:
    scenario: str
    variant: str
    label: str
    videos: int
    chunks: int
    seconds: float
    steady_seconds: float
    batches: int = 0
    verified: bool = False
    verify_detail: str = ""
    cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chunk_rate(self) -> float:
        return self.chunks / self.seconds if self.seconds else float("inf")

    @property
    def steady_chunk_rate(self) -> float:
        return self.chunks / self.steady_seconds if self.steady_seconds else float("inf")

    @property
    def video_rate(self) -> float:
        return self.videos / self.seconds if self.seconds else float("inf")


@dataclass
class Template:
    db_path: Path
    videos: int
    old_chunks: int
    expected_chunks: int
    ids: list[str]
    seed_seconds: float
    db_bytes: int


def chunking():
    from videolib.chunking import ChunkingConfig

    return ChunkingConfig()  # the flow's defaults: 80 words, 16 of overlap


def build_template(work: Path, videos: int) -> Template:
    from sqlalchemy import select

    from videolib.chunking import chunk_transcript
    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade
    from videolib.db.models import Video
    from videolib.embedders import get_embedder
    from videolib.seed import seed_library
    from videolib.selection import iter_creator_video_ids

    work.mkdir(parents=True, exist_ok=True)
    db = work / "template.db"
    engine = create_db_engine(common.sqlite_url(db))
    upgrade(engine)
    started = time.monotonic()
    report = seed_library(engine, None, get_embedder("hashing"), videos=videos, creators=1, seed=SEED,
                          chunks_per_video=CHUNKS_PER_VIDEO, transcript_ratio=1.0, status="ready")
    seconds = time.monotonic() - started
    ids = list(iter_creator_video_ids(engine, CREATOR))
    config = chunking()
    with engine.connect() as conn:
        expected = sum(len(chunk_transcript(t, config)) for t in conn.execute(select(Video.transcript)).scalars())
    engine.dispose()
    common.checkpoint_and_close(db)
    return Template(db, report.videos, report.chunks, expected, ids, seconds, db.stat().st_size)


def make_copy(template: Template, work: Path, variant: str) -> Path:
    target = work / f"{variant}-{uuid.uuid4().hex[:6]}"
    target.mkdir(parents=True)
    shutil.copyfile(template.db_path, target / "library.db")
    return target / "library.db"


def verify(db: Path, template: Template, model: str) -> tuple[bool, str]:
    from sqlalchemy import func, select

    from videolib.chunking import chunk_transcript
    from videolib.db.engine import create_db_engine
    from videolib.db.models import Video, VideoChunk

    engine = create_db_engine(common.sqlite_url(db))
    try:
        with engine.connect() as conn:
            ready = conn.execute(select(func.count()).select_from(Video).where(
                Video.status == "ready", Video.embedding_model == model, Video.processing_by.is_(None))).scalar_one()
            chunks = conn.execute(select(func.count()).select_from(VideoChunk).where(
                VideoChunk.model == model)).scalar_one()
            total_chunks = conn.execute(select(func.count()).select_from(VideoChunk)).scalar_one()
            sample = random.Random(1).sample(template.ids, min(VERIFY_SAMPLE, len(template.ids)))
            bad = 0
            for vid in sample:
                transcript = conn.execute(select(Video.transcript).where(Video.id == vid)).scalar_one()
                stored = conn.execute(select(VideoChunk.content).where(VideoChunk.video_id == vid)
                                      .order_by(VideoChunk.chunk_index)).scalars().all()
                bad += stored != [c.content for c in chunk_transcript(transcript, chunking())]
    finally:
        engine.dispose()
    ok = ready == template.videos and chunks == total_chunks == template.expected_chunks and bad == 0
    return ok, (f"{ready:,}/{template.videos:,} ready, {chunks:,} chunks of {model} "
                f"(expected {template.expected_chunks:,}, {total_chunks:,} in all), {bad} of {len(sample)} "
                "sampled videos differ")


# --------------------------------------------------------------------------- variants


def run_flow(db: Path, template: Template, work: Path, batch_size: int) -> Measurement:
    from flows.bulk_reprocess import bulk_reprocess
    from flows.progress import add_progress_listener, remove_progress_listener

    common.point_settings_at(common.sqlite_url(db), str(work / "storage"), work / "data")
    events: list[tuple[float, Any]] = []
    lock = threading.Lock()

    def listener(event) -> None:
        with lock:
            events.append((time.monotonic(), event))

    add_progress_listener(listener)
    try:
        started = time.monotonic()
        state = bulk_reprocess(creator_id=CREATOR, all_videos=True, batch_size=batch_size, embedder="hashing",
                               return_state=True)
        ended = time.monotonic()
    finally:
        remove_progress_listener(listener)
    common.reset_caches()
    planned = [t for t, e in common.running_events(events) if e.batches_done == 0]
    done = [(t, e) for t, e in common.running_events(events) if e.batches_done > 0]
    steady = (done[-1][0] - planned[0]) if planned and done else ended - started
    m = Measurement("sqlite", "a", LABELS["a"], template.videos, template.expected_chunks, ended - started, steady,
                    batches=done[-1][1].batches if done else 0,
                    extra={"state": f"{state.type.value}/{state.name}",
                           "until_planned_s": round(planned[0] - started, 3) if planned else None,
                           "eta": common.eta_accuracy(events, ended)})
    for line in common.eta_lines("sqlite (a)", m.extra["eta"]):
        note(line)
    ok, detail = verify(db, template, "hashing-v1")
    document = state.result() if state.is_completed() else None
    if document is None or document.get("status") != "completed" or document.get("succeeded") != template.videos:
        ok = False
        detail = f"flow ended {state.type.value}/{state.name}: {state.message}; " + detail
    m.verified, m.verify_detail = ok, detail
    return m


def run_library(db: Path, template: Template, batch_size: int, embedder_name: str = "hashing",
                ids: list[str] | None = None) -> Measurement:
    from videolib.compute_pool import eligible, held_compute_pool
    from videolib.db.engine import create_db_engine
    from videolib.embedders import get_embedder
    from videolib.operation import plan_batches
    from videolib.reprocess import reprocess_batch
    from videolib.selection import iter_creator_video_ids

    engine = create_db_engine(common.sqlite_url(db))
    embedder = get_embedder(embedder_name)
    operation_id = str(uuid.uuid4())
    config = chunking()
    try:
        started = time.monotonic()
        selected = ids if ids is not None else list(iter_creator_video_ids(engine, CREATOR))
        batches = plan_batches(selected, batch_size=batch_size, max_batches=MAX_BATCHES, workers=WORKERS)
        planned = time.monotonic()
        # As the flow does: big jobs of a Python embedder chunk and embed in worker processes.
        with contextlib.ExitStack() as resources:
            if eligible(embedder, len(selected)):
                resources.enter_context(held_compute_pool())
            with ThreadPoolExecutor(WORKERS) as pool:
                outcomes = list(pool.map(
                    lambda batch: reprocess_batch(engine, embedder, creator_id=CREATOR, video_ids=batch,
                                                  operation_id=operation_id, chunking=config),
                    batches,
                ))
        ended = time.monotonic()  # after the workers stopped, as the flow's time is
    finally:
        engine.dispose()
    videos = sum(len(o.succeeded) for o in outcomes)
    chunks = sum(o.extra.get("chunks", 0) for o in outcomes)
    errors = sum(len(o.errors) for o in outcomes)
    m = Measurement("sqlite", "b", LABELS["b"], videos, chunks, ended - started, ended - planned,
                    batches=len(batches), extra={"embedder": embedder.name})
    if ids is None:
        m.verified, m.verify_detail = verify(db, template, embedder.name)
    else:
        m.verified = errors == 0 and videos == len(ids)
        m.verify_detail = f"{videos} videos, {chunks} chunks, {errors} errors"
    return m


def run_baseline(db: Path, template: Template) -> Measurement:
    """(c) the seed system's way: per video, per chunk, a commit per video."""
    from sqlalchemy import delete, insert, select, update

    from videolib.chunking import chunk_transcript
    from videolib.db.engine import create_db_engine
    from videolib.db.models import Video, VideoChunk
    from videolib.embedders import get_embedder, to_blob
    from videolib.selection import iter_creator_video_ids

    engine = create_db_engine(common.sqlite_url(db))
    embedder = get_embedder("hashing")
    config = chunking()
    chunks = 0
    try:
        started = time.monotonic()
        ids = list(iter_creator_video_ids(engine, CREATOR))
        for done, vid in enumerate(ids, 1):
            with engine.begin() as conn:
                transcript = conn.execute(select(Video.transcript).where(Video.id == vid)).scalar_one()
                if not transcript:
                    continue
                conn.execute(update(Video).where(Video.id == vid).values(status="processing"))
                conn.execute(delete(VideoChunk).where(VideoChunk.video_id == vid))
                for chunk in chunk_transcript(transcript, config):
                    vector = embedder.embed([chunk.content])[0]
                    conn.execute(insert(VideoChunk).values(
                        video_id=vid, chunk_index=chunk.index, content=chunk.content, start_s=chunk.start_s,
                        end_s=chunk.end_s, embedding=to_blob(vector), model=embedder.name))
                    chunks += 1
                now = datetime.now(UTC)
                conn.execute(update(Video).where(Video.id == vid).values(
                    status="ready", embedded_at=now, embedding_model=embedder.name, updated_at=now))
                # "progress after each video": the old system's job row, here a plain update.
                conn.execute(update(Video).where(Video.id == ids[0]).values(updated_at=now))
        ended = time.monotonic()
    finally:
        engine.dispose()
    m = Measurement("sqlite", "c", LABELS["c"], len(ids), chunks, ended - started, ended - started)
    m.verified, m.verify_detail = verify(db, template, embedder.name)
    return m


def run_embedder_alone(template: Template, batch_size: int, embedder_name: str = "hashing",
                       ids: list[str] | None = None) -> Measurement:
    """(d) the same chunk texts, embedded in the same batches, nothing else."""
    from sqlalchemy import select

    from videolib.chunking import chunk_transcript
    from videolib.db.engine import create_db_engine
    from videolib.db.models import Video
    from videolib.embedders import get_embedder
    from videolib.operation import plan_batches

    engine = create_db_engine(common.sqlite_url(template.db_path))
    config = chunking()
    selected = ids if ids is not None else template.ids
    with engine.connect() as conn:
        transcripts = dict(conn.execute(select(Video.id, Video.transcript)).all())
    engine.dispose()
    batches = plan_batches(selected, batch_size=batch_size, max_batches=MAX_BATCHES, workers=WORKERS)
    texts = [[c.content for vid in batch for c in chunk_transcript(transcripts[vid], config)] for batch in batches]
    embedder = get_embedder(embedder_name)
    embedder.embed(["warm up"])
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        shapes = list(pool.map(lambda t: embedder.embed(t).shape, texts))
    seconds = time.monotonic() - started
    total = sum(len(t) for t in texts)
    m = Measurement("sqlite", "d", LABELS["d"], len(selected), total, seconds, seconds, batches=len(batches),
                    extra={"embedder": embedder.name})
    m.verified = all(s == (len(t), embedder.dim) for s, t in zip(shapes, texts, strict=True))
    m.verify_detail = f"{total:,} vectors of {embedder.dim}"
    return m


def warm_up_flow(work: Path) -> None:
    from flows.bulk_reprocess import bulk_reprocess
    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade
    from videolib.seed import seed_library

    base = work / "warmup"
    db = base / "warmup.db"
    base.mkdir(parents=True, exist_ok=True)  # only the data directory is made on demand
    engine = create_db_engine(common.sqlite_url(db))
    upgrade(engine)
    seed_library(engine, None, None, videos=20, creators=1, seed=1, chunks_per_video=2, transcript_ratio=1.0,
                 status="ready")
    engine.dispose()
    common.point_settings_at(common.sqlite_url(db), str(base / "storage"), base / "data")
    state = bulk_reprocess(creator_id=CREATOR, all_videos=True, batch_size=5, return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"warm-up flow run ended {state.type.value}: {state.message}")
    common.reset_caches()
    shutil.rmtree(base, ignore_errors=True)


def run_one(variant: str, template: Template, work: Path, batch_size: int) -> Measurement:
    db = None if variant == "d" else make_copy(template, work, variant)
    common.settle()
    note(f"running {LABELS[variant]} ...")
    cpu0 = common.cpu_seconds()
    try:
        if variant == "a":
            m = run_flow(db, template, db.parent, batch_size)
        elif variant == "b":
            m = run_library(db, template, batch_size)
        elif variant == "c":
            m = run_baseline(db, template)
        else:
            m = run_embedder_alone(template, batch_size)
    finally:
        cpu1 = common.cpu_seconds()
        if db is not None:
            shutil.rmtree(db.parent, ignore_errors=True)
    m.cpu_s, m.server_cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    status = "[green]verified[/green]" if m.verified else "[red]NOT VERIFIED[/red]"
    note(f"{m.label}: {m.seconds:.2f} s, {m.chunk_rate:,.0f} chunks/s, {m.video_rate:,.0f} videos/s "
         f"(steady {m.steady_chunk_rate:,.0f} chunks/s) {status}: {m.verify_detail}")
    return m


def run_model(template: Template, work: Path, videos: int, batch_size: int) -> dict[str, Measurement]:
    """The real model on a sample: (b) the library and (d) the embedder alone."""
    ids = template.ids[:videos]
    out = {}
    note(f"minilm: (d) the embedder alone on {len(ids)} videos' chunks ...")
    out["d"] = run_embedder_alone(template, batch_size, "minilm", ids=ids)
    db = make_copy(template, work, "model")
    try:
        note(f"minilm: (b) the library on {len(ids)} videos ...")
        out["b"] = run_library(db, template, batch_size, "minilm", ids=ids)
    finally:
        shutil.rmtree(db.parent, ignore_errors=True)
    for m in out.values():
        m.scenario = "minilm sample"
        note(f"minilm {m.label}: {m.seconds:.2f} s, {m.chunk_rate:,.1f} chunks/s, verified={m.verified}")
    return out


def ratio_rows(results: dict[str, Measurement]) -> list[dict[str, Any]]:
    return ratios(results, ["a/b", "c/a", "a/d", "b/d"], targets=TARGETS)


def model_available() -> bool:
    try:
        from videolib.embedders import get_embedder

        get_embedder("minilm")
        return True
    except Exception as exc:  # the extra is optional
        note(f"minilm not measured: {exc}")
        return False


def print_report(machine, template, results, ratio_list, model, args) -> None:
    console.print()
    console.rule("bulk reprocess benchmark")
    console.print(common.machine_line(machine))
    console.print(f"template: {template.videos:,} videos, {template.old_chunks:,} old chunks -> "
                  f"{template.expected_chunks:,} new (80 words, 16 overlap), db {common.human_bytes(template.db_bytes)}, "
                  f"seeded in {template.seed_seconds:.0f} s; batch size {args.batch_size}, {WORKERS} workers; "
                  f"runs per variant: {args.repeat} (median shown)")
    measured = [("sqlite", m) for _v, m in sorted(results.items())] + [("minilm sample", m) for m in model.values()]
    rows = [
        [scenario, m.label, f"{m.videos:,}", f"{m.chunks:,}", f"{m.seconds:.2f}",
         f"{m.chunk_rate:,.0f}" if m.chunk_rate >= 100 else f"{m.chunk_rate:.1f}",
         f"{m.video_rate:,.0f}" if m.video_rate >= 100 else f"{m.video_rate:.1f}",
         f"{m.steady_seconds:.2f}", f"{m.steady_chunk_rate:,.0f}", str(m.batches or "-"),
         f"{m.cpu_s:.1f} / {m.server_cpu_s:.1f}", "yes" if m.verified else f"NO: {m.verify_detail}"]
        for scenario, m in measured
    ]
    console.print(results_table(
        "reprocess (higher rates are better)",
        ["scenario", "variant", "videos", "chunks", "time s", "chunks/s", "videos/s", "steady s", "steady chunks/s",
         "batches", "cpu s (proc/srv)", "verified"], rows, left=("scenario", "variant", "verified")))
    console.print(ratio_table({"sqlite": ratio_list}))
    console.print("targets: (a) within 1.25x of (b); (a) at least 10x faster than (c). a/d and b/d are for information.")
    for m in results.values():
        if "runs_s" in m.extra:
            console.print(f"{m.label}: runs {m.extra['runs_s']} s; median shown")
    if "a" in results:
        console.print(f"flow detail: {results['a'].extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="videos per batch (default: the flow's default for the embedder: 1000 hashing, 100 minilm)")
    parser.add_argument("--variants", default="abcd")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--model-videos", type=int, default=110,
                        help="videos in the real model's sample (about 9 chunks each; 0 skips it)")
    parser.add_argument("--smoke", action="store_true", help="200 videos, batch size 25, a 10-video model sample")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.videos, args.model_videos = 200, min(args.model_videos, 10)
        if args.batch_size is None:
            args.batch_size = 25
    if args.batch_size is None:
        from videolib.embedders import default_batch_size

        args.batch_size = default_batch_size("hashing")
    order = [v for v in args.variants if v in "abcd"]
    work = args.work_dir / f"reprocess-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    machine = common.machine_info()
    results: dict[str, Measurement] = {}
    model: dict[str, Measurement] = {}
    try:
        with common.prefect_server("a" in order):
            if "a" in order:
                note("warm-up flow run (untimed) ...")
                warm_up_flow(work)
            note(f"seeding the template: {args.videos:,} videos x {CHUNKS_PER_VIDEO} chunks ...")
            template = build_template(work / "template", args.videos)
            note(f"template: {template.videos:,} videos, {template.old_chunks:,} chunks; "
                 f"reprocessing makes {template.expected_chunks:,}")
            samples: dict[str, list[Measurement]] = {v: [] for v in order}
            for round_order in rounds(order, args.repeat):
                for variant in round_order:
                    samples[variant].append(run_one(variant, template, work, args.batch_size))
            results = {variant: common.median_run(runs) for variant, runs in samples.items()}
            if args.model_videos and model_available():
                model = run_model(template, work, args.model_videos, max(1, args.model_videos // WORKERS))
    finally:
        common.reset_caches()
        shutil.rmtree(work, ignore_errors=True)
    ratio_list = ratio_rows(results)
    print_report(machine, template, results, ratio_list, model, args)
    common.write_json(args.json, {
        "machine": machine, "batch_size": args.batch_size,
        "template": {k: v for k, v in asdict(template).items() if k not in ("ids", "db_path")},
        "results": {v: {**asdict(m), "chunk_rate": m.chunk_rate} for v, m in results.items()},
        "model": {v: {**asdict(m), "chunk_rate": m.chunk_rate} for v, m in model.items()},
        "ratios": ratio_list,
    })
    return 1 if common.failures(list(results.values()) + list(model.values())) else 0


if __name__ == "__main__":
    sys.exit(main())
