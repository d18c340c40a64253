#!/usr/bin/env python
"""Cleanup, side by side with what it stands beside, on the same seeded data, in one process.

Tombstones (SQLite file + local directory, 100k videos by default):

(a) cleanup   the ``cleanup`` flow (``service.launch.run(CleanupRequest.build())``)
              finishing N videos a crashed delete left ``deleting`` 2 hours ago: the
              whole run, its scans included (tombstones, claims, ``exports/``,
              ``reports/``, ``requests/``, ``audit/``, every creator folder under
              ``videos/`` for orphans, Prefect's run history)
(b) delete    the baseline: the ``bulk-delete`` flow deleting the same N videos
              (``service.launch.run(DeleteRequest.build(all_videos=True))``)

Each video has a file, a thumbnail and 10 transcript chunks (384-dim embeddings on ready
videos); its objects are aged 2 days, as in a library in use, so the orphan scan looks
their ids up as it does in production (fresh objects are inside the orphan grace and
are never looked up). One template is seeded; every variant gets its own copy of the
database file and of the objects. Setup (copies, the ``deleting`` UPDATE) is never timed.

Orphans (objects under ``videos/{creator}/{video}/``, two empty objects per video, 10
creator folders, a row for every video but one in a hundred: those are the orphans):

(a) scan      the flow's orphan scan, ``flows.cleanup.scan_orphans(rules, workers=8)``:
              every creator folder listed (8 at once), grouped by video, the ids looked
              up in the database; ``Rules(orphan_grace=0)``: every object is old enough
(b) listing   a plain listing of the same prefix: ``store.list_modified("videos")``
(c) serial    for information: ``videolib.cleanup.find_orphans`` one folder after another

Scenarios: ``local`` (1M objects by default) and ``s3`` (SeaweedFS S3 on loopback, 100k
objects by default); the database is a SQLite file in both. Nothing is changed by
the variants, so they all read the same objects.

    python benchmarks/cleanup.py                          # full size: 100k tombstones, 1M + 100k objects
    python benchmarks/cleanup.py --smoke                  # tiny sizes, a quick check
    python benchmarks/cleanup.py --only orphans --skip-s3 --repeat 3

Timings on a small shared machine vary a lot from run to run (see README.md): use
``--repeat`` before reading anything into a difference under ~25 %.

Rates are videos/s (tombstones) and objects/s (orphans). Ratios are time ratios (a/b =
time of a / time of b). For the flows, "steady" leaves out the fixed cost before the
first batch starts (flow-run creation, and for cleanup its scans); it is measured from
the moment the batches are planned to the moment the last batch finishes.
"""

from __future__ import annotations

import _common  # noqa: F401 - first: Prefect's settings before anything imports prefect
import argparse
import contextlib
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    Template,
    build_template,
    db_counts,
    CREATOR,
    REPO,
    SEED,
    checkpoint_and_close,
    console,
    copy_tree,
    cpu_seconds,
    eta_accuracy,
    eta_lines,
    failures,
    human_bytes,
    human_count,
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
    running_events,
    settle,
    sqlite_url,
    write_json,
)

CHUNKS_PER_VIDEO = 10
WORKERS = 8  # the flow's default (config: task_workers)
TOMBSTONE_AGE_S = 2 * 3600  # past the default tombstone grace (1 h)
OBJECT_AGE_S = 2 * 86400  # past the default orphan grace (1 day)
ORPHAN_CREATORS = 10
OBJECTS_PER_VIDEO = 2  # file + thumbnail, as a seeded video has
ORPHAN_EVERY = 100  # one video in a hundred has no row

TARGETS = {
    "a/b": ("<=", 1.2, "(a) within 1.2x of (b)"),
}

LABELS = {
    "tombstones": {
        "a": "(a) cleanup flow (tombstones)",
        "b": "(b) bulk-delete flow (baseline)",
    },
    "orphans": {
        "a": "(a) orphan scan (scan_orphans, 8 workers)",
        "b": "(b) plain listing (list_modified)",
        "c": "(c) find_orphans, one folder at a time",
    },
}


# --------------------------------------------------------------------------- results


@dataclass
class Measurement:
    scenario: str
    variant: str  # a | b | c
    label: str
    items: int  # videos (tombstones) or objects (orphans)
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
        return self.items / self.seconds if self.seconds else float("inf")

    @property
    def steady_rate(self) -> float:
        return self.items / self.steady_seconds if self.steady_seconds else float("inf")


# --------------------------------------------------------------------------- helpers


class PhaseTimes:
    """Seconds spent in named functions of the product code while a variant runs (the
    module attributes are wrapped for the run and restored after): which phase costs
    what. Functions run by the batches on several threads are summed over the threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def wrapped(self, targets: list[tuple[Any, str, str]]) -> Iterator[None]:
        saved = []
        for module, attr, name in targets:
            real = getattr(module, attr)
            saved.append((module, attr, real))
            setattr(module, attr, self._timed(real, name))
        try:
            yield
        finally:
            for module, attr, real in saved:
                setattr(module, attr, real)

    def _timed(self, real, name: str):
        def timed(*args, **kwargs):
            started = time.monotonic()
            try:
                return real(*args, **kwargs)
            finally:
                spent = time.monotonic() - started
                with self._lock:
                    self.seconds[name] = self.seconds.get(name, 0.0) + spent
                    self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    def to_dict(self) -> dict[str, Any]:
        return {name: {"s": round(s, 3), "calls": self.calls[name]} for name, s in self.seconds.items()}


def cleanup_phases() -> list[tuple[Any, str, str]]:
    """The cleanup flow's scans (flows/cleanup.py's ``scan``), its per-batch work, and the
    delete both flows end in."""
    import flows.cleanup
    import tasks.cleanup
    import videolib.cleanup

    return [(flows.cleanup, name, f"scan: {name}") for name in (
        "running_creators", "find_tombstones", "find_claims", "find_exports", "find_reports", "scan_orphans",
        "history_items")] + [
        (flows.cleanup, "scan", "scan (all)"),
        (tasks.cleanup, "finish_tombstones", "batches: finish_tombstones (summed)"),
        (videolib.cleanup, "delete_batch", "batches: delete_batch (summed)"),
        (flows.cleanup, "write_manifest", "finish: write_manifest"),
    ]


def delete_phases() -> list[tuple[Any, str, str]]:
    import tasks.delete

    return [(tasks.delete, "delete_batch", "batches: delete_batch (summed)")]


# --------------------------------------------------------------------------- tombstones: template




@dataclass
class Instance:
    """One variant's private copy: database file + storage root."""

    variant: str
    db_path: Path
    database_url: str
    storage_url: str
    local_root: Path
    data_dir: Path

    def store(self):
        from videolib.storage import ObjectStore

        return ObjectStore.from_url(self.storage_url)

    def cleanup(self) -> None:
        from videolib.db.engine import dispose_engines

        dispose_engines()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.db_path}{suffix}")
        shutil.rmtree(self.local_root, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def make_instance(template: Template, work: Path, variant: str) -> Instance:
    db_path = work / f"tombstones-{variant}.db"
    shutil.copyfile(template.db_path, db_path)
    root = work / f"tombstones-{variant}-storage"
    copy_tree(template.storage, root)
    return Instance(variant, db_path, sqlite_url(db_path), str(root), root, work / f"tombstones-{variant}-data")


def mark_tombstones(db_path: Path, seconds_ago: float) -> int:
    """What a crashed delete leaves: every video of the creator ``deleting``, last
    touched ``seconds_ago``. The number of rows marked."""
    from sqlalchemy import update

    from videolib.db.engine import create_db_engine
    from videolib.db.models import Video

    engine = create_db_engine(sqlite_url(db_path))
    try:
        with engine.begin() as conn:
            marked = conn.execute(update(Video).where(Video.creator_id == CREATOR).values(
                status="deleting", updated_at=datetime.now(UTC) - timedelta(seconds=seconds_ago))).rowcount
    finally:
        engine.dispose()
    checkpoint_and_close(db_path)
    return int(marked)


def verify_deleted(instance: Instance, keys: list[str]) -> tuple[bool, str]:
    """Rows and chunks gone, and every object gone (stat'ed)."""
    from videolib.db.engine import create_db_engine

    problems = []
    engine = create_db_engine(instance.database_url)
    try:
        videos, chunks = db_counts(engine)
    finally:
        engine.dispose()
    if videos or chunks:
        problems.append(f"{videos} videos and {chunks} chunks left")
    sizes = instance.store().sizes(keys)
    present = [key for key, size in sizes.items() if size is not None]
    if present:
        problems.append(f"{len(present)} of {len(keys)} objects still present (e.g. {present[0]})")
    detail = f"rows {videos}/{chunks}, {len(keys)} objects checked" if not problems else "; ".join(problems)
    return not problems, detail


# --------------------------------------------------------------------------- tombstones: the variants


def run_flow(instance: Instance, variant: str, template: Template) -> Measurement:
    """(a) cleanup or (b) bulk-delete, through ``service.launch.run`` as the CLI runs them."""
    from service.launch import run
    from service.requests import CleanupRequest, DeleteRequest

    point_settings_at(instance.database_url, instance.storage_url, instance.data_dir)
    request = CleanupRequest.build() if variant == "a" else DeleteRequest.build(creator_id=CREATOR, all_videos=True)
    events: list[tuple[float, Any]] = []
    lock = threading.Lock()

    def listener(event) -> None:
        with lock:
            events.append((time.monotonic(), event))

    phases = PhaseTimes()
    with phases.wrapped(cleanup_phases() if variant == "a" else delete_phases()):
        started = time.monotonic()
        document = run(request, listener=listener)
        ended = time.monotonic()
    videos = template.videos
    planned = [t for t, e in running_events(events) if e.batches_done == 0]
    batch_done = [(t, e) for t, e in running_events(events) if e.batches_done > 0]
    steady = (batch_done[-1][0] - planned[0]) if planned and batch_done else ended - started
    first_done = batch_done[0][0] - started if batch_done else None
    m = Measurement(
        "tombstones", variant, LABELS["tombstones"][variant], videos, template.objects, ended - started, steady,
        batches=document.get("batches") or (batch_done[-1][1].batches if batch_done else 0),
        extra={
            "status": document.get("status"),
            "until_planned_s": round(planned[0] - started, 3) if planned else None,
            "until_first_batch_done_s": round(first_done, 3) if first_done is not None else None,
            "after_last_batch_s": round(ended - batch_done[-1][0], 3) if batch_done else None,
            "phases": phases.to_dict(),
            "eta": eta_accuracy(events, ended),
        },
    )
    if variant == "a":
        m.extra["cleanup"] = document.get("cleanup")
    for line in eta_lines(f"tombstones ({variant})", m.extra["eta"]):
        note(line)
    reset_caches()
    ok, detail = verify_deleted(instance, template.keys)
    done = (document.get("cleanup") or {}).get("tombstones_finished") if variant == "a" else document.get("succeeded")
    what = "tombstones_finished" if variant == "a" else "succeeded"
    if document.get("status") != "completed" or done != videos:
        ok = False
        detail = (f"status {document.get('status')}, {what} {done}/{videos}"
                  f"{': ' + str(document.get('message')) if document.get('message') else ''}; " + detail)
    else:
        detail = f"completed, {what} {done}; " + detail
    m.verified, m.verify_detail = ok, detail
    return m


def run_tombstone_variant(variant: str, template: Template, work: Path) -> Measurement:
    label = LABELS["tombstones"][variant]
    note(f"tombstones: preparing a private copy for {label} ...")
    t = time.monotonic()
    instance = make_instance(template, work, variant)
    if variant == "a":
        marked = mark_tombstones(instance.db_path, TOMBSTONE_AGE_S)
        if marked != template.videos:
            raise RuntimeError(f"marked {marked} tombstones, expected {template.videos}")
    settle()
    note(f"tombstones: copy ready in {time.monotonic() - t:.1f} s; running {label} ...")
    cpu0 = cpu_seconds()
    try:
        m = run_flow(instance, variant, template)
    finally:
        cpu1 = cpu_seconds()
        instance.cleanup()
    m.cpu_s, m.server_cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    status = "[green]verified[/green]" if m.verified else "[red]NOT VERIFIED[/red]"
    note(f"tombstones: {m.label}: {m.seconds:.2f} s, {m.rate:,.0f} videos/s "
         f"(steady {m.steady_rate:,.0f}/s) {status}: {m.verify_detail}")
    return m


def warm_up_flows(work: Path) -> None:
    """One tiny run of each flow first, so that neither is charged Prefect's first-run
    costs (flow registration, client set-up, imports done lazily) that a long-running
    worker pays once."""
    from service.launch import run
    from service.requests import CleanupRequest, DeleteRequest
    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade
    from videolib.seed import seed_library
    from videolib.storage import ObjectStore

    base = work / "warmup"
    db = base / "warmup.db"
    base.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(sqlite_url(db))
    upgrade(engine)
    seed_library(engine, ObjectStore.from_url(str(base / "storage")), None, videos=20, creators=1, seed=1,
                 chunks_per_video=2, transcript_ratio=1.0)
    engine.dispose()
    mark_tombstones(db, TOMBSTONE_AGE_S)
    point_settings_at(sqlite_url(db), str(base / "storage"), base / "data")
    for request in (CleanupRequest.build(), DeleteRequest.build(creator_id=CREATOR, all_videos=True)):
        if request.flow_name == "bulk-delete":  # the cleanup took them all: 20 more
            engine = create_db_engine(sqlite_url(db))
            seed_library(engine, ObjectStore.from_url(str(base / "storage")), None, videos=20, creators=1, seed=2,
                         chunks_per_video=2, transcript_ratio=1.0)
            engine.dispose()
            reset_caches()
        document = run(request)
        if document.get("status") != "completed":
            raise RuntimeError(f"warm-up {request.flow_name} run ended {document.get('status')}: "
                               f"{document.get('message')}")
    reset_caches()
    shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- orphans


@dataclass
class OrphanLibrary:
    scenario: str
    database_url: str
    storage_url: str
    endpoint: str | None
    data_dir: Path
    objects: int
    videos: int
    orphan_ids: set[str]
    build_seconds: float

    def store(self):
        from videolib.storage import ObjectStore

        return ObjectStore.from_url(self.storage_url, endpoint_url=self.endpoint)


def orphan_layout(objects: int) -> tuple[dict[str, list[str]], set[str]]:
    """``{creator folder: [video ids]}`` holding ``objects`` objects (two per video, over
    10 folders), and the ids with no row (one in a hundred, at least one)."""
    videos = max(ORPHAN_CREATORS, -(-objects // OBJECTS_PER_VIDEO))
    folders: dict[str, list[str]] = {f"creator-{i + 1:03d}": [] for i in range(ORPHAN_CREATORS)}
    names = list(folders)
    orphans: set[str] = set()
    for n in range(videos):
        vid = str(uuid.UUID(int=(SEED << 64) + n))
        folders[names[n % ORPHAN_CREATORS]].append(vid)
        if n % ORPHAN_EVERY == ORPHAN_EVERY // 2 or (videos < ORPHAN_EVERY and n == 0):
            orphans.add(vid)
    return folders, orphans


def build_orphan_library(scenario: str, base: Path, objects: int, s3=None) -> OrphanLibrary:
    """The objects (empty ones: two per video) and a row for every video but the orphans."""
    from sqlalchemy import insert

    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade
    from videolib.db.models import Video
    from videolib.storage import ObjectStore

    started = time.monotonic()
    base.mkdir(parents=True, exist_ok=True)
    db_path = base / "orphans.db"
    engine = create_db_engine(sqlite_url(db_path))
    upgrade(engine)
    folders, orphans = orphan_layout(objects)
    if s3 is None:
        url, endpoint = str(base / "storage"), None
    else:
        url, endpoint = f"s3://{s3.bucket}/bench-orphans-{uuid.uuid4().hex[:8]}", s3.endpoint_url
    store = ObjectStore.from_url(url, endpoint_url=endpoint)
    created = datetime(2024, 1, 1, tzinfo=UTC)
    rows: list[dict[str, Any]] = []
    items: dict[str, bytes] = {}
    last = [time.monotonic()]
    written = 0

    def flush() -> None:
        nonlocal written
        if rows:
            with engine.begin() as conn:
                conn.execute(insert(Video), rows)
            rows.clear()
        if items:
            store.put_many(items, max_in_flight=32, atomic=False)
            written += len(items)
            items.clear()
        if time.monotonic() - last[0] > 15:
            last[0] = time.monotonic()
            note(f"  {scenario}: {written:,} objects written ... {time.monotonic() - started:.0f} s")

    step = 20_000 if s3 is None else 5000
    for folder, ids in folders.items():
        for vid in ids:
            file_key, thumb_key = f"videos/{folder}/{vid}/file.mp4", f"videos/{folder}/{vid}/thumb.jpg"
            items[file_key] = items[thumb_key] = b""
            if vid not in orphans:
                rows.append({"id": vid, "creator_id": folder, "title": "", "status": "ready", "storage_key": file_key,
                             "thumbnail_key": thumb_key, "created_at": created, "updated_at": created})
            if len(items) >= step:
                flush()
    flush()
    engine.dispose()
    checkpoint_and_close(db_path)
    videos = sum(len(ids) for ids in folders.values())
    return OrphanLibrary(scenario, sqlite_url(db_path), url, endpoint, base / "data", videos * OBJECTS_PER_VIDEO,
                         videos, orphans, time.monotonic() - started)


def verify_orphans(library: OrphanLibrary, found: list[list[str]]) -> tuple[bool, str]:
    """Exactly the orphans, each with both its objects."""
    ids = {group[0].split("/")[2] for group in found}
    wrong = [group for group in found if len(group) != OBJECTS_PER_VIDEO]
    problems = []
    if ids != library.orphan_ids or len(found) != len(library.orphan_ids):
        problems.append(f"found {len(found)} orphans, expected {len(library.orphan_ids)} "
                        f"({len(ids - library.orphan_ids)} wrong, {len(library.orphan_ids - ids)} missed)")
    if wrong:
        problems.append(f"{len(wrong)} orphans without {OBJECTS_PER_VIDEO} objects (e.g. {wrong[0]})")
    return not problems, "; ".join(problems) or f"{len(found):,} orphans found, as planted"


def run_orphan_variant(library: OrphanLibrary, variant: str) -> Measurement:
    from flows.cleanup import scan_orphans
    from videolib.cleanup import Rules, find_orphans, orphan_creators

    point_settings_at(library.database_url, library.storage_url, library.data_dir, library.endpoint)
    label = LABELS["orphans"][variant]
    settle()
    note(f"{library.scenario}: running {label} ...")
    cpu0 = cpu_seconds()
    extra: dict[str, Any] = {}
    if variant == "a":
        started = time.monotonic()
        found = scan_orphans(Rules(now=time.time(), orphan_grace=0), workers=WORKERS)
        ended = time.monotonic()
    elif variant == "b":
        store = library.store()
        started = time.monotonic()
        listing = store.list_modified("videos")
        ended = time.monotonic()
    else:
        from videolib.db.engine import get_engine

        engine, store = get_engine(library.database_url), library.store()
        started = time.monotonic()
        rules = Rules(now=time.time(), orphan_grace=0)
        found = [group for folder in orphan_creators(store) for group in find_orphans(engine, store, folder, rules)]
        ended = time.monotonic()
    cpu1 = cpu_seconds()
    m = Measurement(library.scenario, variant, label, library.objects, library.objects, ended - started,
                    ended - started, extra=extra)
    m.cpu_s, m.server_cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    if variant == "b":
        ok = len(listing) == library.objects
        detail = f"{len(listing):,} objects listed" + ("" if ok else f", expected {library.objects:,}")
        del listing
    else:
        ok, detail = verify_orphans(library, found)
    m.verified, m.verify_detail = ok, detail
    reset_caches()
    status = "[green]verified[/green]" if m.verified else "[red]NOT VERIFIED[/red]"
    note(f"{library.scenario}: {m.label}: {m.seconds:.2f} s, {m.rate:,.0f} objects/s {status}: {m.verify_detail}")
    return m


# --------------------------------------------------------------------------- scenarios


def run_tombstones(template: Template, work: Path, repeat: int) -> dict[str, Measurement]:
    samples: dict[str, list[Measurement]] = {"a": [], "b": []}
    for round_order in rounds(["a", "b"], repeat, name="tombstones"):
        for variant in round_order:
            samples[variant].append(run_tombstone_variant(variant, template, work))
    return {variant: median_run(runs) for variant, runs in samples.items()}


def run_orphans(library: OrphanLibrary, repeat: int) -> dict[str, Measurement]:
    samples: dict[str, list[Measurement]] = {"a": [], "b": [], "c": []}
    for round_order in rounds(["a", "b", "c"], repeat, name=library.scenario):
        for variant in round_order:
            samples[variant].append(run_orphan_variant(library, variant))
    return {variant: median_run(runs) for variant, runs in samples.items()}


def scenario_ratios(results: dict[str, Measurement], scenario: str) -> list[dict[str, Any]]:
    if scenario == "tombstones":
        return ratios(results, ["a/b"], targets=TARGETS)
    return ratios(results, ["a/b", "c/b", "c/a"], targets={})


def import_library() -> None:
    """Import everything the variants use now, so that every variant of a run uses the
    same code even if the sources change on disk while the benchmark runs."""
    import flows.bulk_delete  # noqa: F401
    import flows.cleanup  # noqa: F401
    import flows.operation  # noqa: F401
    import service.launch  # noqa: F401
    import service.requests  # noqa: F401
    import service.slots  # noqa: F401
    import tasks.cleanup  # noqa: F401
    import tasks.delete  # noqa: F401
    import tasks.history  # noqa: F401
    import tasks.resources  # noqa: F401
    import videolib.cleanup  # noqa: F401
    import videolib.db.engine  # noqa: F401
    import videolib.db.migrate  # noqa: F401
    import videolib.delete  # noqa: F401
    import videolib.embedders  # noqa: F401
    import videolib.records  # noqa: F401
    import videolib.seed  # noqa: F401
    import videolib.storage  # noqa: F401


def print_report(machine, template, libraries, all_results, all_ratios, args) -> None:
    console.print()
    console.rule("cleanup benchmark")
    console.print(machine_line(machine))
    console.print(f"runs per variant: {args.repeat} (median shown); {WORKERS} workers; "
                  f"embeddings: {'hashing, 384 dims' if not args.no_embed else 'none (--no-embed)'}")
    if template is not None:
        console.print(
            f"tombstones: {template.videos:,} videos, {template.chunks:,} chunks, {template.objects:,} objects "
            f"(db {human_bytes(template.db_bytes)}, objects {human_bytes(template.storage_bytes)}, 2 days old; "
            f"seeded in {template.seed_seconds:.0f} s); (a) marks them all 'deleting', 2 h ago")
    for name, lib in libraries.items():
        console.print(f"{name}: {lib.objects:,} objects of {lib.videos:,} videos in {ORPHAN_CREATORS} creator folders, "
                      f"{len(lib.orphan_ids):,} orphans ({lib.storage_url.split('://')[0] if lib.endpoint else 'local'}; "
                      f"built in {lib.build_seconds:.0f} s)")
    rows = [
        [scenario, m.label, f"{m.items:,}", f"{m.objects:,}", f"{m.seconds:.2f}",
         f"{m.rate:,.0f} {'videos' if scenario == 'tombstones' else 'objects'}/s",
         f"{m.steady_seconds:.2f}", f"{m.steady_rate:,.0f}", str(m.batches or "-"),
         f"{m.cpu_s:.1f} / {m.server_cpu_s:.1f}", "yes" if m.verified else f"NO: {m.verify_detail}"]
        for scenario, results in all_results.items() for m in results.values()
    ]
    console.print(results_table(
        "items per second (higher is better)",
        ["scenario", "variant", "items", "objects", "time s", "rate", "steady s", "steady rate", "batches",
         "cpu s (proc/srv)", "verified"], rows, left=("scenario", "variant", "rate", "verified")))
    console.print(ratio_table(all_ratios))
    console.print("target: finishing N tombstones with cleanup within 1.2x of deleting the same N with bulk-delete "
                  "(a/b); the orphan ratios are for information.")
    for scenario, results in all_results.items():
        for m in results.values():
            if scenario == "tombstones":
                console.print(f"tombstones {m.label}: until planned {m.extra.get('until_planned_s')} s, "
                              f"first batch done {m.extra.get('until_first_batch_done_s')} s, "
                              f"after the last batch {m.extra.get('after_last_batch_s')} s")
                for name, phase in m.extra.get("phases", {}).items():
                    console.print(f"    {name}: {phase['s']:.2f} s ({phase['calls']} calls)")
                if m.extra.get("cleanup"):
                    console.print(f"    counts: {m.extra['cleanup']}")
            if "runs_s" in m.extra:
                console.print(f"{scenario} {m.label}: runs {m.extra['runs_s']} s "
                              f"(steady {m.extra.get('runs_steady_s', m.extra['runs_s'])}); median shown")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=100_000, help="tombstones to finish (and videos to delete)")
    parser.add_argument("--orphan-objects", type=int, default=1_000_000, help="objects in the local orphan scan")
    parser.add_argument("--s3-objects", type=int, default=100_000, help="objects in the S3 orphan scan")
    parser.add_argument("--only", choices=("tombstones", "orphans"))
    parser.add_argument("--skip-s3", action="store_true", help="no S3 orphan scan (no SeaweedFS)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (300 tombstones, 4,000 local and 1,000 S3 objects): a quick check")
    parser.add_argument("--no-embed", action="store_true", help="seed chunks without embeddings (faster setup)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every variant this many times (rotating the order) and report the median")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (templates) afterwards")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if args.smoke:
        args.videos, args.orphan_objects, args.s3_objects = 300, 4000, 1000
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if min(args.videos, args.orphan_objects, args.s3_objects) < 1:
        parser.error("sizes must be at least 1")
    parts = [p for p in ("tombstones", "orphans") if args.only in (None, p)]

    work = args.work_dir / f"run-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    import_library()
    note(f"machine: {machine}")
    template: Template | None = None
    libraries: dict[str, OrphanLibrary] = {}
    all_results: dict[str, dict[str, Measurement]] = {}
    all_ratios: dict[str, list] = {}
    s3 = None
    try:
        if "tombstones" in parts:
            with prefect_server(True):
                note("warm-up runs of both flows (untimed) ...")
                warm_up_flows(work)
                note(f"tombstones: seeding the template: {args.videos:,} videos x "
                     f"({CHUNKS_PER_VIDEO} chunks, 2 objects) ...")
                template = build_template(work / "template", args.videos, embed=not args.no_embed,
                                          chunks_per_video=CHUNKS_PER_VIDEO, object_age_s=OBJECT_AGE_S)
                note(f"tombstones: template: {template.videos:,} videos, {template.chunks:,} chunks, "
                     f"{template.objects:,} objects, db {human_bytes(template.db_bytes)} ({template.seed_seconds:.0f} s)")
                all_results["tombstones"] = run_tombstones(template, work, args.repeat)
                all_ratios["tombstones"] = scenario_ratios(all_results["tombstones"], "tombstones")
            shutil.rmtree(work / "template", ignore_errors=True)  # the largest thing on disk
        if "orphans" in parts:
            scenarios = [("local", args.orphan_objects)] + ([] if args.skip_s3 else [("s3", args.s3_objects)])
            for scenario, objects in scenarios:
                name = f"orphans-{scenario}-{human_count(objects)}"
                if scenario == "s3":
                    servers = load_servers_module()
                    note("s3: starting SeaweedFS ...")
                    s3 = servers.start_s3(work / "seaweedfs")
                    os.environ["AWS_ACCESS_KEY_ID"] = s3.key
                    os.environ["AWS_SECRET_ACCESS_KEY"] = s3.secret
                    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
                    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
                        os.environ.pop(var, None)
                note(f"{name}: writing {objects:,} objects and their rows ...")
                library = build_orphan_library(name, work / name, objects, s3=s3)
                libraries[name] = library
                note(f"{name}: {library.objects:,} objects, {len(library.orphan_ids):,} orphans "
                     f"({library.build_seconds:.0f} s)")
                if s3 is not None:
                    settle()
                    time.sleep(3)  # let SeaweedFS finish what the uploads left it to do
                all_results[name] = run_orphans(library, args.repeat)
                all_ratios[name] = scenario_ratios(all_results[name], name)
                if scenario == "local":
                    shutil.rmtree(work / name, ignore_errors=True)
    finally:
        if s3 is not None:
            s3.stop()
        reset_caches()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print_report(machine, template, libraries, all_results, all_ratios, args)
    write_json(args.json, {
        "machine": machine,
        "repeat": args.repeat,
        "sizes": {
            **({"tombstones": {k: v for k, v in asdict(template).items() if k not in ("keys", "db_path", "storage")}}
               if template is not None else {}),
            **{name: {"objects": lib.objects, "videos": lib.videos, "orphans": len(lib.orphan_ids),
                      "build_seconds": lib.build_seconds} for name, lib in libraries.items()},
        },
        "results": {s: {v: {**asdict(m), "rate": m.rate, "steady_rate": m.steady_rate} for v, m in r.items()}
                    for s, r in all_results.items()},
        "ratios": all_ratios,
    })
    return 1 if failures([m for r in all_results.values() for m in r.values()]) else 0


if __name__ == "__main__":
    sys.exit(main())
