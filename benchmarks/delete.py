#!/usr/bin/env python
"""Bulk delete, four ways, side by side on the same seeded data, in one process.

(a) flow      the ``bulk-delete`` Prefect flow (batches mapped as task runs, 8 workers)
(b) library   the same library code without Prefect: ``plan_batches`` + ``delete_batch``
              over a ThreadPoolExecutor(8)
(c) baseline  the seed-style way the old system did it: one video at a time, individual
              statements, one storage ``delete`` per object, a progress write + commit
              per 10 videos
(d) floor     removing the same objects and nothing else: an ``os.unlink`` loop on
              local storage; ``ObjectStore.delete_many`` (1000-key DeleteObjects
              requests, several in flight) on S3
(d+)          local only, for information: (d) plus the rmdir of every emptied video
              directory, which the library also does
(e)           (b) without the proof: ``delete_batch(verify=False)`` trusts what the delete
              calls answered and reads nothing back; b/e is what the proof costs

Scenarios: ``local`` (SQLite file + local directory, 100k videos by default) and ``s3``
(SQLite file + SeaweedFS S3 on loopback, 10k videos by default). Each video has a
file, a thumbnail and 10 transcript chunks (384-dim embeddings on ready videos). One template is
seeded per scenario; every variant gets its own copy of the database file and of the
objects, so all four start from identical data. Setup (copies, uploads) is never timed.

    python benchmarks/delete.py                      # full size: 100k local, 10k S3
    python benchmarks/delete.py --smoke              # tiny sizes, a quick check
    python benchmarks/delete.py --only s3 --repeat 3 --json results.json   # medians of 3

Timings on a small shared machine vary a lot from run to run (see README.md): use
``--repeat`` before reading anything into a difference under ~25 %.

Rates are videos/s. Ratios are time ratios (a/b = time of a / time of b). "steady"
leaves out the fixed cost before the first batch starts (for the flow: flow-run
creation, parameter validation, id resolution); it is measured from the moment the
batches are planned to the moment the last batch finishes.
"""

from __future__ import annotations

import _common  # noqa: F401 - first: Prefect's settings before anything imports prefect
import argparse
import contextlib
import inspect
import os
import random
import shutil
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    Template,
    build_template,
    db_counts,
    CREATOR,
    eta_accuracy,
    eta_lines,
    running_events,
    REPO,
    console,
    copy_tree,
    cpu_seconds,
    failures,
    human_bytes,
    load_servers_module,
    machine_info,
    machine_line,
    median_run,
    note,
    point_settings_at,
    prefect_server,
    ratio_table,
    ratios,
    reset_caches,
    results_table,
    rounds,
    settle,
    sqlite_url,
    write_json,
)

CHUNKS_PER_VIDEO = 10
MAX_BATCHES = 300  # the flow's default (config: max_batches)
WORKERS = 8  # the flow's default (config: task_workers)
PROGRESS_EVERY = 10  # (c): a progress write + commit per 10 videos
S3_VERIFY_SAMPLE = 500

TARGETS = {
    "a/b": ("<=", 1.25, "(a) within 1.25x of (b)"),
    "a/d": ("<=", 1.5, "(a) within 1.5x of (d)"),
    "c/a": (">=", 6.0, "(c) at least 6x slower than (a) (S3)"),
    "b/e": ("<=", 1.10, "the read-back proof costs at most 10 % (b within 1.1x of e)"),
}


# --------------------------------------------------------------------------- results


@dataclass
class Measurement:
    scenario: str
    variant: str  # a | b | c | d
    label: str
    videos: int
    objects: int
    seconds: float
    steady_seconds: float
    batches: int = 0
    verified: bool = False
    verify_detail: str = ""
    cpu_s: float = 0.0  # this process, during the timed part and its verification
    server_cpu_s: float = 0.0  # child processes (Prefect server, SeaweedFS) meanwhile
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.videos / self.seconds if self.seconds else float("inf")

    @property
    def steady_rate(self) -> float:
        return self.videos / self.steady_seconds if self.steady_seconds else float("inf")


LABELS = {
    "a": "(a) bulk-delete flow (Prefect)",
    "b": "(b) library, no Prefect",
    "c": "(c) seed-style baseline",
    "d": "(d) floor (objects only)",
    "d+": "(d+) floor + emptied dirs",
    "e": "(e) library, no read-back proof",
}


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- template




# --------------------------------------------------------------------------- one variant's data


@dataclass
class Instance:
    """One variant's private copy: database file + storage root."""

    scenario: str
    variant: str
    db_path: Path
    database_url: str
    storage_url: str
    endpoint: str | None
    local_root: Path | None
    data_dir: Path

    def store(self):
        from videolib.storage import ObjectStore

        return ObjectStore.from_url(self.storage_url, endpoint_url=self.endpoint)

    def cleanup(self) -> None:
        from videolib.db.engine import dispose_engines

        dispose_engines()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.db_path}{suffix}")
        if self.local_root is not None:
            shutil.rmtree(self.local_root, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def make_local_instance(template: Template, work: Path, variant: str) -> Instance:
    db_path = work / f"local-{variant}.db"
    shutil.copyfile(template.db_path, db_path)
    root = work / f"local-{variant}-storage"
    copy_tree(template.storage, root)
    return Instance(
        "local", variant, db_path, sqlite_url(db_path), str(root), None, root, work / f"local-{variant}-data"
    )


def make_s3_instance(template: Template, work: Path, variant: str, s3) -> Instance:
    from videolib.storage import ObjectStore

    db_path = work / f"s3-{variant}.db"
    shutil.copyfile(template.db_path, db_path)
    url = f"s3://{s3.bucket}/bench-{variant}-{uuid.uuid4().hex[:8]}"
    store = ObjectStore.from_url(url, endpoint_url=s3.endpoint_url)
    step = 2000
    for start in range(0, len(template.keys), step):
        part = template.keys[start : start + step]
        store.put_many({key: (template.storage / key).read_bytes() for key in part}, max_in_flight=32)
    return Instance("s3", variant, db_path, sqlite_url(db_path), url, s3.endpoint_url, None, work / f"s3-{variant}-data")


def verify(instance: Instance, keys: list[str], *, rows_deleted: bool) -> tuple[bool, str]:
    """Rows and chunks gone (unless only objects were removed) and objects gone (HEAD/stat)."""
    from videolib.db.engine import create_db_engine

    problems = []
    engine = create_db_engine(instance.database_url)
    try:
        videos, chunks = db_counts(engine)
    finally:
        engine.dispose()
    if rows_deleted and (videos or chunks):
        problems.append(f"{videos} videos and {chunks} chunks left")
    store = instance.store()
    if instance.endpoint:  # S3: a random sample, one HEAD each (listing an emptied prefix is slow)
        sample = random.Random(1).sample(keys, min(S3_VERIFY_SAMPLE, len(keys)))
    else:
        sample = keys
    sizes = store.sizes(sample)
    present = [key for key, size in sizes.items() if size is not None]
    if present:
        problems.append(f"{len(present)} of {len(sample)} checked objects still present (e.g. {present[0]})")
    detail = f"rows {videos}/{chunks}, {len(sample)} objects checked" if not problems else "; ".join(problems)
    return not problems, detail


# --------------------------------------------------------------------------- the variants


def run_flow(instance: Instance, *, videos: int, objects: int, batch_size: int) -> Measurement:
    """(a) the bulk-delete flow under Prefect."""
    from flows.bulk_delete import bulk_delete
    from flows.progress import add_progress_listener, remove_progress_listener

    point_settings_at(instance.database_url, instance.storage_url, instance.data_dir, instance.endpoint)
    events: list[tuple[float, Any]] = []
    lock = threading.Lock()

    def listener(event) -> None:
        with lock:
            events.append((time.monotonic(), event))

    add_progress_listener(listener)
    try:
        started = time.monotonic()
        state = bulk_delete(creator_id=CREATOR, all_videos=True, batch_size=batch_size, return_state=True)
        ended = time.monotonic()
    finally:
        remove_progress_listener(listener)
    document = state.result() if state.is_completed() else None
    planned = [t for t, e in running_events(events) if e.batches_done == 0]
    batch_done = [(t, e) for t, e in running_events(events) if e.batches_done > 0]
    steady = (batch_done[-1][0] - planned[0]) if planned and batch_done else ended - started
    batches = batch_done[-1][1].batches if batch_done else 0
    first_done = batch_done[0][0] - started if batch_done else None
    m = Measurement(
        instance.scenario, "a", LABELS["a"], videos, objects, ended - started, steady, batches=batches,
        extra={
            "state": f"{state.type.value}/{state.name}",
            "until_planned_s": round(planned[0] - started, 3) if planned else None,
            "until_first_batch_done_s": round(first_done, 3) if first_done is not None else None,
            "after_last_batch_s": round(ended - batch_done[-1][0], 3) if batch_done else None,
            "eta": eta_accuracy(events, ended),
        },
    )
    for line in eta_lines(f"{instance.scenario} (a)", m.extra["eta"]):
        note(line)
    reset_caches()
    ok, detail = verify(instance, TEMPLATE_KEYS[instance.scenario], rows_deleted=True)
    if document is None:
        ok, detail = False, f"flow ended {state.type.value}/{state.name}: {state.message}; " + detail
    elif document.get("status") != "completed" or document.get("succeeded") != videos:
        ok = False
        detail = f"status {document.get('status')}, succeeded {document.get('succeeded')}/{videos}; " + detail
    else:
        detail = f"completed, succeeded {document['succeeded']}; " + detail
    m.verified, m.verify_detail = ok, detail
    return m


def run_library(instance: Instance, *, videos: int, objects: int, batch_size: int, read_back: bool = True) -> Measurement:
    """(b) the same library code, no Prefect: plan_batches + delete_batch on 8 threads;
    (e) the same without the read-back proof."""
    from videolib.db.engine import get_engine
    from videolib.delete import delete_batch, write_manifest
    from videolib.operation import BatchOutcome, plan_batches
    from videolib.selection import iter_creator_video_ids

    point_settings_at(instance.database_url, instance.storage_url, instance.data_dir, instance.endpoint)
    engine = get_engine(instance.database_url)
    store = instance.store()
    operation_id = str(uuid.uuid4())
    started = time.monotonic()
    started_wall = datetime.now(UTC).isoformat()
    ids = list(iter_creator_video_ids(engine, CREATOR))
    # Plan exactly as the flow does (newer plan_batches also balance small jobs over the workers).
    balance = {"workers": WORKERS} if "workers" in inspect.signature(plan_batches).parameters else {}
    batches = plan_batches(ids, batch_size=batch_size, max_batches=MAX_BATCHES, **balance)
    planned = time.monotonic()
    outcome = BatchOutcome()
    proof = {} if "verify" not in inspect.signature(delete_batch).parameters else {"verify": read_back}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = [
            pool.submit(
                delete_batch, engine, store, creator_id=CREATOR, video_ids=batch,
                operation_id=operation_id, batch_index=index, **proof,
            )
            for index, batch in enumerate(batches)
        ]
        for future in as_completed(futures):
            one = future.result()
            outcome.succeeded.extend(one.succeeded)
            outcome.errors.extend(one.errors)
            outcome.objects += one.objects
    last_done = time.monotonic()
    write_manifest(
        store, operation_id=operation_id, creator_id=CREATOR, started_at=started_wall,
        finished_at=datetime.now(UTC).isoformat(), videos_deleted=len(outcome.succeeded),
        objects_removed=outcome.objects, batches=len(batches),
    )
    ended = time.monotonic()
    variant = "b" if read_back else "e"
    m = Measurement(instance.scenario, variant, LABELS[variant], videos, objects, ended - started,
                    last_done - planned, batches=len(batches))
    reset_caches()
    ok, detail = verify(instance, TEMPLATE_KEYS[instance.scenario], rows_deleted=True)
    if len(outcome.succeeded) != videos or outcome.errors:
        ok = False
        detail = f"succeeded {len(outcome.succeeded)}/{videos}, {len(outcome.errors)} errors; " + detail
    m.verified, m.verify_detail = ok, detail
    return m


def run_baseline(instance: Instance, *, videos: int, objects: int) -> Measurement:
    """(c) one video at a time: file, thumbnail, chunks, row; progress + commit per 10 videos."""
    from sqlalchemy import text

    from videolib.db.engine import create_db_engine

    engine = create_db_engine(instance.database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_progress (id INTEGER PRIMARY KEY, done INTEGER, updated_at TEXT)"))
        conn.execute(text("INSERT OR REPLACE INTO bench_progress (id, done, updated_at) VALUES (1, 0, '')"))
    store = instance.store()
    select_rows = text("SELECT id, storage_key, thumbnail_key FROM videos WHERE creator_id = :c")
    delete_chunks = text("DELETE FROM video_chunks WHERE video_id = :id")
    delete_video = text("DELETE FROM videos WHERE id = :id")
    progress = text("UPDATE bench_progress SET done = :done, updated_at = :at WHERE id = 1")
    started = time.monotonic()
    deleted = 0
    with engine.connect() as conn:
        rows = conn.execute(select_rows, {"c": CREATOR}).all()
        conn.commit()
        for row in rows:
            if row.storage_key:
                store.delete(row.storage_key)
            if row.thumbnail_key:
                store.delete(row.thumbnail_key)
            conn.execute(delete_chunks, {"id": row.id})
            conn.execute(delete_video, {"id": row.id})
            deleted += 1
            if deleted % PROGRESS_EVERY == 0 or deleted == len(rows):
                conn.execute(progress, {"done": deleted, "at": datetime.now(UTC).isoformat()})
                conn.commit()
    ended = time.monotonic()
    engine.dispose()
    m = Measurement(instance.scenario, "c", LABELS["c"], videos, objects, ended - started, ended - started)
    ok, detail = verify(instance, TEMPLATE_KEYS[instance.scenario], rows_deleted=True)
    if deleted != videos:
        ok, detail = False, f"deleted {deleted}/{videos}; " + detail
    m.verified, m.verify_detail = ok, detail
    return m


def run_floor(instance: Instance, *, videos: int, objects: int) -> Measurement:
    """(d) the objects and nothing else: os.unlink loop (local), delete_many (S3)."""
    keys = TEMPLATE_KEYS[instance.scenario]
    if instance.local_root is not None:
        paths = [os.path.join(instance.local_root, key) for key in keys]
        unlink = os.unlink
        started = time.monotonic()
        for path in paths:
            unlink(path)
        ended = time.monotonic()
        errors: dict[str, str] = {}
        how = "os.unlink loop"
        # Not part of (d): the library also removes the per-video directories it
        # empties (one rmdir each); timed separately, reported as (d+).
        directories = sorted({os.path.dirname(path) for path in paths})
        rmdir_started = time.monotonic()
        for directory in directories:
            os.rmdir(directory)
        rmdir_s = time.monotonic() - rmdir_started
    else:
        store = instance.store()
        started = time.monotonic()
        errors = store.delete_many(keys)
        ended = time.monotonic()
        how = "ObjectStore.delete_many (1000-key DeleteObjects, 10 in flight)"
    m = Measurement(instance.scenario, "d", LABELS["d"], videos, objects, ended - started, ended - started,
                    extra={"how": how})
    if instance.local_root is not None:
        m.extra["rmdir_s"] = round(rmdir_s, 3)
        m.extra["directories"] = len(directories)
    ok, detail = verify(instance, keys, rows_deleted=False)
    if errors:
        ok, detail = False, f"{len(errors)} delete errors; " + detail
    m.verified, m.verify_detail = ok, detail
    return m


TEMPLATE_KEYS: dict[str, list[str]] = {}


def warm_up_flow(work: Path) -> None:
    """One tiny flow run first, so that (a) is not charged Prefect's first-run costs
    (flow registration, client set-up, imports done lazily) that a long-running
    worker pays once."""
    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade
    from videolib.seed import seed_library
    from videolib.storage import ObjectStore

    from flows.bulk_delete import bulk_delete

    base = work / "warmup"
    db = base / "warmup.db"
    base.mkdir(parents=True, exist_ok=True)  # only the data directory is made on demand
    engine = create_db_engine(sqlite_url(db))
    upgrade(engine)
    seed_library(engine, ObjectStore.from_url(str(base / "storage")), None, videos=20, creators=1, seed=1,
                 chunks_per_video=2, transcript_ratio=1.0)
    engine.dispose()
    point_settings_at(sqlite_url(db), str(base / "storage"), base / "data")
    state = bulk_delete(creator_id=CREATOR, all_videos=True, batch_size=5, return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"warm-up flow run ended {state.type.value}: {state.message}")
    reset_caches()
    shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- scenarios


def run_one(name: str, variant: str, template: Template, work: Path, batch_size: int, s3=None) -> Measurement:
    note(f"{name}: preparing a private copy for {LABELS[variant]} ...")
    t = time.monotonic()
    instance = (
        make_local_instance(template, work, variant) if s3 is None else make_s3_instance(template, work, variant, s3)
    )
    settle()
    if s3 is not None:
        time.sleep(3)  # let SeaweedFS finish what the uploads left it to do
    note(f"{name}: copy ready in {time.monotonic() - t:.1f} s; running {LABELS[variant]} ...")
    cpu0 = cpu_seconds()
    try:
        if variant == "a":
            m = run_flow(instance, videos=template.videos, objects=template.objects, batch_size=batch_size)
        elif variant == "b":
            m = run_library(instance, videos=template.videos, objects=template.objects, batch_size=batch_size)
        elif variant == "e":
            m = run_library(instance, videos=template.videos, objects=template.objects, batch_size=batch_size,
                            read_back=False)
        elif variant == "c":
            m = run_baseline(instance, videos=template.videos, objects=template.objects)
        else:
            m = run_floor(instance, videos=template.videos, objects=template.objects)
    finally:
        cpu1 = cpu_seconds()
        instance.cleanup()
    m.cpu_s, m.server_cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    status = "[green]verified[/green]" if m.verified else "[red]NOT VERIFIED[/red]"
    note(f"{name}: {m.label}: {m.seconds:.2f} s, {m.rate:,.0f} videos/s "
         f"(steady {m.steady_rate:,.0f}/s) {status}: {m.verify_detail}")
    return m


def run_scenario(name: str, template: Template, work: Path, batch_size: int, order: list[str], s3=None,
                 repeat: int = 1) -> dict[str, Measurement]:
    """Every variant ``repeat`` times (``_common.rounds``); the median run of each."""
    TEMPLATE_KEYS[name] = template.keys
    samples: dict[str, list[Measurement]] = {v: [] for v in order}
    for round_order in rounds(order, repeat, name=name):
        for variant in round_order:
            samples[variant].append(run_one(name, variant, template, work, batch_size, s3))
    results = {variant: median_run(runs) for variant, runs in samples.items()}
    if "d" in samples and all("rmdir_s" in m.extra for m in samples["d"]):
        plus = [m.seconds + m.extra["rmdir_s"] for m in samples["d"]]
        seconds = sorted(plus)[(len(plus) - 1) // 2]
        d = results["d"]
        results["d+"] = Measurement(
            name, "d+", LABELS["d+"], d.videos, d.objects, seconds, seconds, verified=d.verified,
            verify_detail=f"(d) plus {d.extra['directories']:,} rmdir",
            extra={"how": "os.unlink + os.rmdir loops", **({"runs_s": [round(x, 2) for x in plus]} if repeat > 1 else {})},
        )
    return results


def scenario_ratios(results: dict[str, Measurement], scenario: str) -> list[dict[str, Any]]:
    # d+/d: what the emptied directories alone cost next to (d): on a disk where each
    # freed block waits for a discard this is over 1.5 before any database work.
    return ratios(results, ["a/b", "a/d", "a/d+", "d+/d", "c/a", "b/e"], targets=TARGETS,
                  applies=lambda name: name != "c/a" or scenario == "s3")


def import_library() -> None:
    """Import everything the variants use now, so that every variant of a run uses the
    same code even if the sources change on disk while the benchmark runs."""
    import flows.bulk_delete  # noqa: F401
    import flows.operation  # noqa: F401
    import tasks.resources  # noqa: F401
    import videolib.db.engine  # noqa: F401
    import videolib.db.migrate  # noqa: F401
    import videolib.delete  # noqa: F401
    import videolib.embedders  # noqa: F401
    import videolib.operation  # noqa: F401
    import videolib.seed  # noqa: F401
    import videolib.selection  # noqa: F401
    import videolib.storage  # noqa: F401


def print_report(machine, templates, all_results, all_ratios, args) -> None:
    console.print()
    console.rule("bulk delete benchmark")
    console.print(machine_line(machine))
    console.print(f"runs per variant: local {args.repeat}, S3 {args.s3_repeat} (median shown)")
    console.print(f"batch size {args.batch_size}, {WORKERS} workers, max {MAX_BATCHES} batches; "
                  f"embeddings: {'hashing, 384 dims' if not args.no_embed else 'none (--no-embed)'}; "
                  f"template ANALYZEd: {'yes' if args.analyze else 'no'}; "
                  f"extra (creator_id, id) index: {'yes' if args.creator_id_index else 'no'}")
    for name, t in templates.items():
        console.print(
            f"{name}: {t.videos:,} videos, {t.chunks:,} chunks, {t.objects:,} objects "
            f"(db {human_bytes(t.db_bytes)}, objects {human_bytes(t.storage_bytes)}; seeded in {t.seed_seconds:.0f} s)"
        )
    rows = [
        [scenario, m.label, f"{m.videos:,}", f"{m.objects:,}", f"{m.seconds:.2f}", f"{m.rate:,.0f}",
         f"{m.steady_seconds:.2f}", f"{m.steady_rate:,.0f}", str(m.batches or "-"),
         "-" if m.variant == "d+" else f"{m.cpu_s:.1f} / {m.server_cpu_s:.1f}",
         "yes" if m.verified else f"NO: {m.verify_detail}"]
        for scenario, results in all_results.items() for variant in ("a", "b", "c", "d", "d+", "e")
        if (m := results.get(variant)) is not None
    ]
    console.print(results_table(
        "videos deleted per second (higher is better)",
        ["scenario", "variant", "videos", "objects", "time s", "videos/s", "steady s", "steady videos/s", "batches",
         "cpu s (proc/srv)", "verified"], rows, left=("scenario", "variant", "verified")))
    console.print(ratio_table(all_ratios))
    console.print("targets: (a) within 1.25x of (b); (a) within 1.5x of (d); on S3 (a) >= 6x faster than (c); "
                  "the proof (b vs e) costs at most 10 %.")
    console.print("(d+) = (d) plus removing the per-video directories (d) leaves behind, as the library does "
                  "on local storage; a/d+ is for information.")
    for scenario, results in all_results.items():
        if "a" in results:
            console.print(f"{scenario} flow detail: {results['a'].extra}")
        for m in results.values():
            if "runs_s" in m.extra:
                console.print(f"{scenario} {m.label}: runs {m.extra['runs_s']} s "
                              f"(steady {m.extra.get('runs_steady_s', m.extra['runs_s'])}); median shown")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=100_000, help="videos in the local scenario")
    parser.add_argument("--s3-videos", type=int, default=10_000, help="videos in the S3 scenario")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--only", choices=("local", "s3"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (300 local, 100 S3): a quick check")
    parser.add_argument("--variants", default="abcde", help="which variants to run, in this order (default abcde)")
    parser.add_argument("--no-embed", action="store_true", help="seed chunks without embeddings (faster setup)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every variant this many times (rotating the order) and report the median")
    parser.add_argument("--s3-repeat", type=int, help="--repeat for the S3 scenario (default: same as --repeat)")
    parser.add_argument("--creator-id-index", action="store_true",
                        help="experiment: add an index on videos (creator_id, id) to the template (see README)")
    parser.add_argument("--analyze", action="store_true",
                        help="run SQLite ANALYZE on the seeded template (planner statistics; see README)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (templates) afterwards")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if args.smoke:
        args.videos, args.s3_videos = 300, 100
        if args.batch_size == 1000:
            args.batch_size = 50
    order = [v for v in args.variants if v in "abcde"]
    if args.repeat < 1 or (args.s3_repeat is not None and args.s3_repeat < 1):
        parser.error("--repeat and --s3-repeat must be at least 1")
    if args.s3_repeat is None:
        args.s3_repeat = args.repeat
    scenarios = [s for s in ("local", "s3") if args.only in (None, s)]

    work = args.work_dir / f"run-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    import_library()
    note(f"machine: {machine}")
    templates: dict[str, Template] = {}
    all_results: dict[str, dict[str, Measurement]] = {}
    all_ratios: dict[str, list] = {}
    s3 = None
    try:
        with prefect_server("a" in order):
            if "a" in order:
                note("warm-up flow run (untimed) ...")
                warm_up_flow(work)
            for scenario in scenarios:
                videos = args.videos if scenario == "local" else args.s3_videos
                note(f"{scenario}: seeding the template: {videos:,} videos x ({CHUNKS_PER_VIDEO} chunks, 2 objects) ...")
                template = build_template(work / f"template-{scenario}", videos, embed=not args.no_embed, chunks_per_video=CHUNKS_PER_VIDEO,
                                          analyze=args.analyze, creator_id_index=args.creator_id_index)
                templates[scenario] = template
                note(f"{scenario}: template: {template.videos:,} videos, {template.chunks:,} chunks, "
                     f"{template.objects:,} objects, db {human_bytes(template.db_bytes)} ({template.seed_seconds:.0f} s)")
                if scenario == "s3":
                    servers = load_servers_module()
                    note("s3: starting SeaweedFS ...")
                    s3 = servers.start_s3(work / "seaweedfs")
                    os.environ["AWS_ACCESS_KEY_ID"] = s3.key
                    os.environ["AWS_SECRET_ACCESS_KEY"] = s3.secret
                    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
                    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
                        os.environ.pop(name, None)
                results = run_scenario(scenario, template, work, args.batch_size, order, s3=s3,
                                       repeat=args.s3_repeat if scenario == "s3" else args.repeat)
                all_results[scenario] = results
                all_ratios[scenario] = scenario_ratios(results, scenario)
                if scenario == "local":
                    # The template is not needed any more; it is the largest thing on disk.
                    shutil.rmtree(work / f"template-{scenario}", ignore_errors=True)
    finally:
        if s3 is not None:
            s3.stop()
        reset_caches()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print_report(machine, templates, all_results, all_ratios, args)
    write_json(args.json, {
        "machine": machine,
        "batch_size": args.batch_size,
        "analyze": args.analyze,
        "creator_id_index": args.creator_id_index,
        "repeat": {"local": args.repeat, "s3": args.s3_repeat},
        "sizes": {k: {kk: vv for kk, vv in asdict(v).items() if kk not in ("keys", "db_path", "storage")}
                  for k, v in templates.items()},
        "results": {s: {v: {**asdict(m), "rate": m.rate, "steady_rate": m.steady_rate} for v, m in r.items()}
                    for s, r in all_results.items()},
        "ratios": all_ratios,
    })
    return 1 if failures([m for r in all_results.values() for m in r.values()]) else 0


if __name__ == "__main__":
    sys.exit(main())
