#!/usr/bin/env python
"""Selections of millions: an export and a delete of 1,000,000 videos from an id
manifest, on PostgreSQL with local storage, in one process (issue 21).

One creator's library is seeded on a PostgreSQL server on loopback (a file and a
thumbnail per video in a local directory, ``--chunks`` transcript chunks each), then:

(u) upload    the ids file, streamed to storage as ``manifests/{creator}/{sha256}.txt``
              (``videolib.manifests.upload_manifest``: hashed and counted as it goes)
(x) export    the ``bulk-export`` flow, Parquet, ``manifest=<key>``
(d) delete    the ``bulk-delete`` flow, ``manifest=<key>``: every video, its objects and
              chunks, read back as gone

Printed for each: the time and the rate, the planning (staging the manifest in
``staged_ids``, keeping the creator's own, cutting the ranges) apart from the batches,
the batch size and the task runs, the peak RSS of this process during the run (reset
before it: the staged list is never held), and the database's work per batch from
``pg_stat_database`` (transactions, rows inserted, fetched and deleted). The figures
feed ``docs/scale.md``.

    python benchmarks/manifest.py                     # 1,000,000 videos (~40 min here)
    python benchmarks/manifest.py --videos 100000
    python benchmarks/manifest.py --smoke
    python benchmarks/manifest.py --only stage        # staging alone, COPY against INSERT

``--only stage`` times planning alone. First a manifest of ``--videos`` random ids staged
in ``staged_ids`` the way a run stages one (``videolib.staging.stage_manifest``), (s) with
COPY through a temporary table (what runs do on PostgreSQL) and (i) with SQLAlchemy's
multi-row INSERTs (what they did before), three rounds each, alternating. Then a library
of ``--videos`` videos of one creator (rows only) and a delete's ``--all`` selection of it
(``flows.selection.select_library``), (a) staged by keyset pages into range batches (past
``STAGE_LIBRARY_ABOVE``) and (l) listed in memory (below it), with the traced memory of
each. It prints the ratios.
"""

from __future__ import annotations

import _common  # noqa: F401 - first: Prefect's settings before anything imports prefect
import argparse
import contextlib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    SEED,
    console,
    human_bytes,
    load_servers_module,
    machine_info,
    machine_line,
    note,
    point_settings_at,
    prefect_server,
    reset_caches,
    results_table,
    write_json,
)

CREATOR = "creator-001"


@dataclass
class Measurement:
    name: str
    items: int
    seconds: float = 0.0
    planning_s: float | None = None  # run start -> batches planned
    batches: int = 0
    peak_rss: int = 0
    db: dict[str, int] = field(default_factory=dict)
    verified: bool = False
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


def peak_reset() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def db_stats(pg, dbname: str) -> dict[str, int]:
    with pg.connect() as conn:
        row = conn.execute("SELECT xact_commit, tup_inserted, tup_fetched, tup_deleted, tup_updated "
                           "FROM pg_stat_database WHERE datname = %s", (dbname,)).fetchone()
    return dict(zip(("commits", "inserted", "fetched", "deleted", "updated"), map(int, row), strict=True))


def run_flow(name: str, items: int, call, pg, dbname: str) -> tuple[Measurement, dict]:
    from flows.progress import add_progress_listener, remove_progress_listener

    m = Measurement(name, items)
    planned: list[float] = []

    def listener(event) -> None:
        if getattr(event, "phase", None) != "created" and event.batches and not planned:
            planned.append(time.monotonic())
            m.batches = event.batches

    reset_caches()
    time.sleep(1)  # pg_stat_database is updated by the backends at most every ~0.5 s
    before = db_stats(pg, dbname)
    peak_reset()
    add_progress_listener(listener)
    try:
        started = time.monotonic()
        document = call()
        m.seconds = time.monotonic() - started
    finally:
        remove_progress_listener(listener)
    m.peak_rss = peak_now()
    time.sleep(1)
    after = db_stats(pg, dbname)
    m.db = {k: after[k] - before[k] for k in after}
    m.planning_s = planned[0] - started if planned else None
    return m, document


def postgres_library(stack: contextlib.ExitStack, work_dir: Path | None, prefix: str):
    """A PostgreSQL server on loopback (stopped by ``stack``) with an empty library database
    at the newest schema, the settings pointed at it: (work dir, server, engine)."""
    work = work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    work.mkdir(parents=True, exist_ok=True)
    note("starting PostgreSQL ...")
    pg = load_servers_module().start_postgres(work / "pg")
    stack.callback(pg.stop)
    url = pg.create_database("library")
    point_settings_at(url, str(work / "storage"), work / "data")
    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade

    engine = create_db_engine(url)
    upgrade(engine)
    return work, pg, engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--chunks", type=int, default=2, help="transcript chunks per video (default 2)")
    parser.add_argument("--smoke", action="store_true", help="2,000 videos")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["export", "delete", "stage"],
                        help="run one of the two flows (both by default), or time staging alone")
    args = parser.parse_args(argv)
    if args.smoke:
        args.videos, args.chunks = 2000, 1
    if args.only == "stage":
        return stage_only(args)
    with contextlib.ExitStack() as stack:
        work, pg, engine = postgres_library(stack, args.work_dir, "bulkops-manifest-")
        dbname = "library"
        from videolib.seed import seed_library
        from videolib.storage import ObjectStore

        store = ObjectStore.from_url(str(work / "storage"))
        started, last = time.monotonic(), [time.monotonic()]

        def progress(_n: int) -> None:
            if time.monotonic() - last[0] > 30:
                last[0] = time.monotonic()
                note(f"  seeding ... {time.monotonic() - started:.0f} s")

        note(f"seeding {args.videos:,} videos ...")
        report = seed_library(engine, store, None, videos=args.videos, creators=1, seed=SEED,
                              chunks_per_video=args.chunks, transcript_ratio=1.0, status="ready",
                              on_progress=progress)
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            ids = list(conn.exec_driver_sql("SELECT id FROM videos ORDER BY created_at, id").scalars())
        seed_s = time.monotonic() - started
        note(f"seeded {report.videos:,} videos, {report.chunks:,} chunks, {report.objects:,} objects in {seed_s:.0f} s")
        ids_path = work / "ids.txt"
        ids_path.write_text("\n".join(ids) + "\n")
        del ids
        results: list[Measurement] = []

        from videolib.manifests import upload_manifest

        m = Measurement("(u) upload", report.videos)
        peak_reset()
        began = time.monotonic()
        with open(ids_path, "rb") as source:
            info = upload_manifest(store, CREATOR, source, max_ids=10_000_000)
        m.seconds, m.peak_rss = time.monotonic() - began, peak_now()
        m.verified = info.lines == report.videos
        m.detail = f"{info.key}, {info.lines:,} lines, {human_bytes(ids_path.stat().st_size)}"
        results.append(m)

        with prefect_server(True):
            from service.launch import run
            from service.requests import DeleteRequest, ExportRequest

            if args.only in (None, "export"):
                note("export from the manifest ...")
                m, doc = run_flow("(x) export", report.videos, lambda: run(ExportRequest.build(
                    creator_id=CREATOR, format="parquet", manifest=info.key)), pg, dbname)
                import pyarrow.parquet as pq

                rows = pq.ParquetFile(str(work / "storage" / doc["output"]["path"])).metadata.num_rows \
                    if doc.get("output") else 0
                m.verified = doc.get("status") == "completed" and rows == report.videos
                m.detail = (f"{doc.get('status')}, {rows:,} rows, "
                            f"{human_bytes((doc.get('output') or {}).get('bytes', 0))}")
                results.append(m)
            if args.only in (None, "delete"):
                note("delete from the manifest ...")
                m, doc = run_flow("(d) delete", report.videos, lambda: run(DeleteRequest.build(
                    creator_id=CREATOR, manifest=info.key)), pg, dbname)
                with engine.connect() as conn:
                    left = conn.exec_driver_sql("SELECT count(*) FROM videos").scalar()
                    chunks_left = conn.exec_driver_sql("SELECT count(*) FROM video_chunks").scalar()
                objects_left = sum(1 for p in (work / "storage" / "videos").rglob("*") if p.is_file())
                m.verified = (doc.get("status") == "completed" and doc.get("succeeded") == report.videos
                              and left == chunks_left == objects_left == 0)
                m.detail = (f"{doc.get('status')}, {doc.get('succeeded'):,} deleted, verified {doc.get('verified')}; "
                            f"left: {left} rows, {chunks_left} chunks, {objects_left} objects")
                results.append(m)
        engine.dispose()

        machine = machine_info(postgresql="15")
        console.print()
        console.rule("manifest benchmark: 1 creator, a manifest of every id, PostgreSQL + local storage")
        console.print(machine_line(machine))
        console.print(f"library: {report.videos:,} videos, {report.chunks:,} chunks, {report.objects:,} objects; "
                      f"seeded in {seed_s:.0f} s")
        rows_out = []
        for m in results:
            per_batch = {k: v / m.batches for k, v in m.db.items()} if m.batches else {}
            rows_out.append([
                m.name, f"{m.items:,}", f"{m.seconds:.1f}", f"{m.rate:,.0f}",
                f"{m.planning_s:.1f}" if m.planning_s is not None else "-",
                str(m.batches or "-"), f"{m.items // m.batches:,}" if m.batches else "-",
                human_bytes(m.peak_rss),
                ", ".join(f"{k} {v:,.0f}" for k, v in per_batch.items()) or "-",
                "yes" if m.verified else f"NO: {m.detail}"])
        console.print(results_table(
            "manifest selections (rates: videos/s)",
            ["step", "videos", "time s", "rate", "planning s", "batches", "per batch", "peak RSS",
             "database per batch (pg_stat_database)", "verified"], rows_out,
            left=("step", "peak RSS", "database per batch (pg_stat_database)", "verified")))
        for m in results:
            console.print(f"{m.name}: {m.detail}")
        write_json(args.json, {"benchmark": "manifest", "machine": machine, "videos": report.videos,
                               "chunks": report.chunks, "objects": report.objects, "seed_s": seed_s,
                               "results": [{**m.__dict__, "rate": m.rate} for m in results]})
        return 0 if all(m.verified for m in results) else 1


def stage_only(args) -> int:
    """Stage ``args.videos`` random ids with COPY and with INSERTs, alternating."""
    import uuid

    with contextlib.ExitStack() as stack:
        _work, _pg, engine = postgres_library(stack, args.work_dir, "bulkops-stage-")
        from videolib.manifests import CHUNK
        from videolib.staging import drop_staged, stage_manifest

        ids = [str(uuid.uuid4()) for _ in range(args.videos)]
        ids += ids[: len(ids) // 100]  # 1% repeated lines, as a real manifest may have
        parts = [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]
        times: dict[str, list[float]] = {"(s) COPY": [], "(i) INSERT": []}
        counts: dict[str, int] = {}
        for round_ in range(3):
            for name in (("(s) COPY", "(i) INSERT") if round_ % 2 == 0 else ("(i) INSERT", "(s) COPY")):
                op = str(uuid.uuid4())
                began = time.monotonic()
                staged = stage_manifest(engine, op, iter(parts), pg_copy=name.startswith("(s)"))
                times[name].append(time.monotonic() - began)
                counts[name] = staged.ids
                with engine.connect() as conn:
                    first = conn.exec_driver_sql(
                        "SELECT video_id FROM staged_ids WHERE operation_id = %(op)s ORDER BY seq LIMIT 1",
                        {"op": op}).scalar()
                assert first == ids[0] and staged.ids == args.videos, (name, first, staged.ids)
                drop_staged(engine, op)
        del ids, parts
        library = whole_library(engine, args.videos)
        engine.dispose()
        best = {name: min(values) for name, values in times.items()}
        machine = machine_info(postgresql="15")
        console.print()
        console.rule(f"staging a manifest of {args.videos + args.videos // 100:,} lines ({args.videos:,} distinct "
                     "ids) on PostgreSQL")
        console.print(machine_line(machine))
        base = best["(i) INSERT"]
        console.print(results_table(
            "staging (best of 3, alternating)",
            ["variant", "ids", "best s", "all s", "ids/s", "vs (i)"],
            [[name, f"{counts[name]:,}", f"{best[name]:.1f}", ", ".join(f"{t:.1f}" for t in times[name]),
              f"{args.videos / best[name]:,.0f}", f"{base / best[name]:.2f}x"] for name in times],
            left=("variant", "all s")))
        lbest = {name: min(m["seconds"]) for name, m in library.items()}
        console.print(results_table(
            f"a delete's --all of {args.videos:,} videos (best of 3, alternating)",
            ["variant", "ids", "batches", "best s", "all s", "traced peak", "time vs (l)"],
            [[name, f"{m['ids']:,}", str(m["batches"]), f"{lbest[name]:.1f}",
              ", ".join(f"{t:.1f}" for t in m["seconds"]), human_bytes(m["traced_peak"]),
              f"{lbest[name] / lbest['(l) listed']:.2f}x"] for name, m in library.items()],
            left=("variant", "all s", "traced peak")))
        write_json(args.json, {"benchmark": "manifest-stage", "machine": machine,
                               "lines": args.videos + args.videos // 100, "ids": args.videos, "seconds": times,
                               "library": library})
        return 0


def whole_library(engine, videos: int) -> dict[str, dict[str, Any]]:
    """Seed ``videos`` rows of one creator, then select them as a delete's ``--all`` does,
    staged (a) and listed (l), three rounds each, alternating; then once more each under
    ``tracemalloc`` for the memory it holds (not timed: tracing slows it)."""
    import tracemalloc
    import uuid

    import flows.selection
    from config import get_settings
    from videolib.operation import OperationResult, effective_batch_size
    from videolib.seed import seed_library
    from videolib.staging import drop_staged

    note(f"seeding {videos:,} videos (rows only) ...")
    seed_library(engine, None, None, videos=videos, creators=1, seed=SEED, chunks_per_video=0,
                 transcript_ratio=0.0, status="ready")
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    variants = {"(a) staged": 0, "(l) listed": 10**12}  # STAGE_LIBRARY_ABOVE for each
    out: dict[str, dict[str, Any]] = {name: {"seconds": []} for name in variants}
    limit = flows.selection.STAGE_LIBRARY_ABOVE

    def select(name: str) -> tuple[int, int]:
        flows.selection.STAGE_LIBRARY_ABOVE = variants[name]
        op = str(uuid.uuid4())
        result = OperationResult(op, "delete", CREATOR)
        try:
            plan = flows.selection.select_library(result, creator_id=CREATOR, batch_size=1000)
            if isinstance(plan, list):  # the flow cuts a list into batches this size
                settings = get_settings()
                size = effective_batch_size(len(plan), 1000, settings.max_batches, workers=settings.task_workers)
                return result.requested, -(-len(plan) // size)
            return result.requested, len(plan.batches)
        finally:
            drop_staged(engine, op)

    try:
        for round_ in range(3):
            for name in (list(variants) if round_ % 2 == 0 else list(reversed(variants))):
                began = time.monotonic()
                out[name]["ids"], out[name]["batches"] = select(name)
                out[name]["seconds"].append(time.monotonic() - began)
                assert out[name]["ids"] == videos, (name, out[name])
        for name in variants:
            tracemalloc.start()
            select(name)
            out[name]["traced_peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    finally:
        flows.selection.STAGE_LIBRARY_ABOVE = limit
    return out


if __name__ == "__main__":
    sys.exit(main())
