#!/usr/bin/env python
"""Bulk export, three ways, side by side on the same seeded data.

(a) flow      the ``bulk-export`` Prefect flow, all of the creator's videos: mapped tasks
              read id ranges into Arrow IPC part files, one writer streams the parts in
              order into the file (Parquet; ``a-csv``: the same flow writing CSV)
(b) raw       no Prefect and no library code: one query, the fastest reader for the
              database -> a pyarrow ``ParquetWriter`` (zstd, row groups of 64k rows).
              ADBC for both: ``adbc-driver-sqlite`` in the process (the library runs it
              in helper processes), ``adbc-driver-postgresql``
(c) baseline  the seed-style way: the Python ``csv`` module, row by row, the whole file in
              an ``io.StringIO``, then one ``put`` to storage

Scenarios: ``sqlite`` (one creator's videos in a SQLite file, at 100k and 1M rows, so that
memory can be compared across sizes) and ``pg`` (200k rows in PostgreSQL 15, started on
loopback by ``tests/servers.py``). Rows are seeded with ``videolib.seed.seed_library``
without files (the export reads rows only). Exports are read-only, so every variant reads
the same database; each writes to its own storage directory, removed after verification.

Every run of a variant happens in a fresh child process (``--child``), so that its peak
RSS is its own: the child imports everything first (the same modules for every variant),
notes its RSS, runs an untimed warm-up flow run (flow variants only), resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``), runs the variant, and reports the peak
(``VmHWM``). The parent seeds, starts the servers, verifies every output (row count, ids in
order, schema) and prints the tables.

    python benchmarks/export.py                        # 100k + 1M SQLite, 200k PostgreSQL
    python benchmarks/export.py --smoke                # tiny sizes, a quick check
    python benchmarks/export.py --only sqlite --repeat 3 --json results.json

Timings on a small shared machine vary from run to run: use ``--repeat``. Rates are rows/s.
Ratios are time ratios (a/b = time of (a) / time of (b)). "steady" leaves out the flow's
fixed costs: what comes before its first batch starts (flow-run creation, counting and
planning the id ranges, the size estimate) and after the file is complete (link,
artifacts, the end of the flow run). It runs from the moment the batches are planned to
the moment the flow's writer closes the complete file. For (b) and (c) it is their time.
"""

from __future__ import annotations

import _common  # noqa: F401 - first: Prefect's settings before anything imports prefect
import argparse
import contextlib
import gc
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    CREATOR,
    eta_accuracy,
    running_events,
    REPO,
    SEED,
    child_pids,
    console,
    failures,
    human_bytes,
    human_count,
    load_servers_module,
    machine_line,
    median_run,
    note,
    point_settings_at,
    ratio_table,
    ratios,
    reset_caches,
    results_table,
    rounds,
    tree_cpu_seconds,
    write_json,
)

ROW_GROUP_ROWS = 64 * 1024  # (b): the library's row group size

VARIANTS = ("a", "a-csv", "b", "c")
LETTERS = {"a": "a", "b": "b", "c": "c"}  # --variants abc (letters; a-csv needs the comma form)
LABELS = {
    "a": "(a) flow, Parquet",
    "a-csv": "(a) flow, CSV",
    "b": "(b) raw -> ParquetWriter",
    "c": "(c) seed-style csv module",
}
FORMATS = {"a": "parquet", "a-csv": "csv", "b": "parquet", "c": "csv"}
FLOW_VARIANTS = ("a", "a-csv")

TIME_TARGETS = {
    "a/b": ("<=", 1.5, "(a) within 1.5x of (b) (Parquet vs Parquet)"),
    "c/a-csv": (">=", 2.5, "(a) at least 2.5x faster than (c) (CSV vs CSV)"),
    "c/a": (">=", 2.5, "(a) Parquet against (c) CSV"),
}
MEMORY_BOUND_MB = 350
FLAT_TOLERANCE = (0.25, 25)  # "flat": the big size grows at most 25 % or 25 MB more than the small one


# --------------------------------------------------------------------------- /proc


def _proc_status(field_name: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in kB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def rss_kb() -> int:
    return _proc_status("VmRSS")


def reset_peak_rss() -> bool:
    """Set the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- shared SQL


def export_sql(dialect: str) -> str:
    """The library's SELECT (same column expressions), over all of the creator's rows."""
    from videolib.export import DEFAULT_COLUMNS, select_list

    placeholder = "?" if dialect == "sqlite" else "$1"
    return (f"SELECT {select_list(DEFAULT_COLUMNS, dialect)} FROM videos v WHERE v.creator_id = {placeholder} "
            "AND v.status <> 'deleting' ORDER BY v.id")


# =========================================================================== child


def import_everything() -> None:
    """The same imports in every child, before its RSS baseline is taken."""
    import csv  # noqa: F401
    import io  # noqa: F401

    import adbc_driver_postgresql.dbapi  # noqa: F401
    import polars  # noqa: F401
    import prefect  # noqa: F401
    import psycopg  # noqa: F401
    import pyarrow  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.ipc  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sqlalchemy  # noqa: F401

    import flows.bulk_export  # noqa: F401
    import flows.operation  # noqa: F401
    import tasks.export  # noqa: F401
    import videolib.db.engine  # noqa: F401
    import videolib.export  # noqa: F401
    import videolib.storage  # noqa: F401


def child_flow(spec: dict, fmt: str) -> dict:
    """(a): the bulk-export flow, all of the creator's videos."""
    from flows.bulk_export import bulk_export
    from flows.progress import add_progress_listener, remove_progress_listener
    from videolib.export import ExportWriter

    point_settings_at(spec["database_url"], spec["storage"], spec["data_dir"])
    events: list[tuple[float, Any]] = []
    lock = threading.Lock()

    def listener(event) -> None:
        with lock:
            events.append((time.monotonic(), event))

    # The file is complete when the flow's writer closes it (the last parts are written
    # on the flow's writer thread after the last batch's progress event): time that.
    closed: list[float] = []
    original_close = ExportWriter.close

    def close(self) -> None:
        original_close(self)
        closed.append(time.monotonic())

    kwargs = {"batch_size": spec["batch_size"]} if spec.get("batch_size") else {}
    add_progress_listener(listener)
    ExportWriter.close = close
    try:
        started = time.monotonic()
        state = bulk_export(creator_id=CREATOR, format=fmt, return_state=True, **kwargs)
        ended = time.monotonic()
    finally:
        ExportWriter.close = original_close
        remove_progress_listener(listener)
    document = state.result() if state.is_completed() else None
    planned = [t for t, e in running_events(events) if e.batches_done == 0]
    batch_done = [(t, e) for t, e in running_events(events) if e.batches_done > 0]
    steady = (closed[-1] - planned[0]) if planned and closed else ended - started
    output = (document or {}).get("output") or {}
    return {
        "seconds": ended - started,
        "steady_seconds": steady,
        "started": started,
        "ended": ended,
        "batches": batch_done[-1][1].batches if batch_done else 0,
        "eta": eta_accuracy(events, ended),
        "state": f"{state.type.value}/{state.name}",
        "message": state.message,
        "document": {k: document.get(k) for k in ("status", "requested", "succeeded", "failed", "skipped",
                                                  "operation_id", "output")} if document else None,
        "path": output.get("path"),
        "rows": output.get("rows"),
        "bytes": output.get("bytes"),
        "extra": {
            "until_planned_s": round(planned[0] - started, 3) if planned else None,
            "until_first_batch_done_s": round(batch_done[0][0] - started, 3) if batch_done else None,
            "until_last_batch_done_s": round(batch_done[-1][0] - started, 3) if batch_done else None,
            "until_file_closed_s": round(closed[-1] - started, 3) if closed else None,
            "after_file_closed_s": round(ended - closed[-1], 3) if closed else None,
        },
    }


def _sqlite_arrays(rows: list[tuple], schema) -> list:
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = []
    for values, target in zip(zip(*rows), schema, strict=True):
        if pa.types.is_timestamp(target.type):  # SQLAlchemy's naive UTC text
            arrays.append(pc.assume_timezone(pa.array(values, pa.string()).cast(pa.timestamp("us")), "UTC"))
        elif pa.types.is_boolean(target.type):
            arrays.append(pa.array([None if v is None else bool(v) for v in values], pa.bool_()))
        else:
            arrays.append(pa.array(values, target.type))
    return arrays


def child_raw(spec: dict) -> dict:
    """(b): one query, fastest reader -> ParquetWriter (zstd, 64k-row groups), no Prefect."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from videolib.export import DEFAULT_COLUMNS, schema_for

    schema = schema_for(DEFAULT_COLUMNS)
    path = Path(spec["storage"]) / "raw.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    pending: list = []
    pending_rows = 0
    started = time.monotonic()
    writer = pq.ParquetWriter(str(path), schema, compression="zstd")

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=ROW_GROUP_ROWS)
            pending, pending_rows = [], 0

    def add(batch) -> None:
        nonlocal rows, pending_rows
        rows += batch.num_rows
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= ROW_GROUP_ROWS:
            flush()

    if spec["kind"] == "sqlite":
        # ADBC's SQLite driver, in this process: nothing else here opens the database
        # (the library runs the driver in helper processes; videolib/sqlite_arrow.py).
        # Its type inference needs a select list without NULLs, and it returns
        # timestamps as text: the same SQL and casts the library uses.
        from urllib.parse import quote

        import adbc_driver_sqlite.dbapi as adbc_sqlite

        from videolib.export import conform
        from videolib.export.sqlite_arrow import BATCH_ROWS, restore_nulls

        conn = adbc_sqlite.connect("file:" + quote(spec["db_path"]) + "?mode=ro")
        try:
            cursor = conn.cursor()
            cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
            cursor.execute(export_sql("sqlite"), [CREATOR])
            for batch in cursor.fetch_record_batch():
                add(conform(restore_nulls(batch), schema))
            cursor.close()
        finally:
            conn.close()
        how = f"ADBC SQLite (batches of {BATCH_ROWS} rows, in-process)"
    else:
        import adbc_driver_postgresql.dbapi as adbc

        conn = adbc.connect(spec["adbc_uri"])
        try:
            cursor = conn.cursor()
            cursor.execute(export_sql("postgresql"), [CREATOR])
            for batch in cursor.fetch_record_batch():
                if batch.schema != schema:
                    batch = batch.cast(schema)  # has_transcript int -> bool
                add(batch)
            cursor.close()
        finally:
            conn.close()
        how = "ADBC PostgreSQL (COPY, Arrow batches)"
    flush()
    writer.close()
    ended = time.monotonic()
    return {"seconds": ended - started, "steady_seconds": ended - started, "started": started, "ended": ended,
            "path": str(path.relative_to(spec["storage"])), "rows": rows, "bytes": path.stat().st_size,
            "extra": {"how": how}}


def child_baseline(spec: dict) -> dict:
    """(c): csv module row by row into an io.StringIO, then one put."""
    import csv
    import io

    from sqlalchemy import text

    from videolib.db.engine import create_db_engine
    from videolib.export import DEFAULT_COLUMNS
    from videolib.storage import ObjectStore

    engine = create_db_engine(spec["database_url"])
    store = ObjectStore.from_url(spec["storage"])
    sql = export_sql(engine.dialect.name).replace("?", ":c").replace("$1", ":c")
    key = f"exports/{CREATOR}/baseline.csv"
    rows = 0
    started = time.monotonic()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(DEFAULT_COLUMNS)
    with engine.connect() as conn:
        for row in conn.execute(text(sql), {"c": CREATOR}):
            writer.writerow(row)
            rows += 1
    data = buffer.getvalue().encode("utf-8")
    store.put(key, data)
    ended = time.monotonic()
    size = len(data)
    del data, buffer
    engine.dispose()
    return {"seconds": ended - started, "steady_seconds": ended - started, "started": started, "ended": ended,
            "path": key, "rows": rows, "bytes": size, "extra": {"how": "SQLAlchemy text() rows -> csv.writer -> put"}}


def warm_up(spec: dict, fmt: str) -> None:
    """One tiny flow run first (untimed), so (a) is not charged Prefect's first-run costs
    that a long-running worker pays once."""
    from flows.bulk_export import bulk_export

    point_settings_at(spec["warmup_url"], str(Path(spec["storage"]) / "warmup"), spec["data_dir"])
    state = bulk_export(creator_id=CREATOR, format=fmt, return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"warm-up flow run ended {state.type.value}: {state.message}")
    reset_caches()
    shutil.rmtree(Path(spec["storage"]) / "warmup", ignore_errors=True)


def child_main(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    variant = spec["variant"]
    import_everything()
    gc.collect()
    rss_after_imports = rss_kb()
    if variant in FLOW_VARIANTS and spec["warm_up"]:
        warm_up(spec, FORMATS[variant])
    gc.collect()
    from videolib.export.sqlite_arrow import HELPER_RSS_KB

    HELPER_RSS_KB.clear()  # the warm-up's helpers
    rss_before = rss_kb()
    peak_reset = reset_peak_rss()
    servers0 = tree_cpu_seconds(spec["server_pids"])
    cpu0 = os.times()
    if variant in FLOW_VARIANTS:
        out = child_flow(spec, FORMATS[variant])
    elif variant == "b":
        out = child_raw(spec)
    else:
        out = child_baseline(spec)
    cpu1 = os.times()
    servers1 = tree_cpu_seconds(spec["server_pids"])
    peak = _proc_status("VmHWM") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The export's SQLite reader processes are its memory too. Measured as ours is: each
    # one's peak over its RSS after its own imports, added to our peak (as if they all
    # peaked together).
    helpers_kb = sum(peak_kb - after_kb for after_kb, peak_kb in HELPER_RSS_KB.values())
    peak += helpers_kb
    out.update(
        rss_after_imports_kb=rss_after_imports,
        rss_before_kb=rss_before,
        peak_kb=peak,
        rss_after_kb=rss_kb(),
        peak_method=("VmHWM after clear_refs" if peak_reset else "ru_maxrss (whole process)")
        + (f" + {len(HELPER_RSS_KB)} reader process(es)' VmHWM over their imports ({helpers_kb // 1024} MB; "
           f"{sum(a for a, _ in HELPER_RSS_KB.values()) // 1024} MB after imports)" if HELPER_RSS_KB else ""),
        # children_*: the SQLite reader processes, reaped by the end of the run
        cpu_s=(cpu1.user + cpu1.system + cpu1.children_user + cpu1.children_system)
        - (cpu0.user + cpu0.system + cpu0.children_user + cpu0.children_system),
        server_cpu_s=servers1 - servers0,
    )
    Path(spec["result"]).write_text(json.dumps(out, default=str))
    return 0


# =========================================================================== parent


@dataclass
class Measurement:
    scenario: str
    variant: str
    label: str
    fmt: str
    rows: int
    seconds: float
    steady_seconds: float
    batches: int = 0
    out_bytes: int = 0
    growth_mb: float = 0.0  # peak RSS - RSS after imports
    growth_run_mb: float = 0.0  # peak RSS - RSS just before the run (after the warm-up)
    rss_after_imports_mb: float = 0.0
    cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    verified: bool = False
    verify_detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")

    @property
    def steady_rate(self) -> float:
        return self.rows / self.steady_seconds if self.steady_seconds else float("inf")


@dataclass
class Scenario:
    name: str  # sqlite-100k, sqlite-1M, pg-200k
    kind: str  # sqlite | pg
    rows: int
    database_url: str
    db_path: str | None = None
    adbc_uri: str | None = None
    db_bytes: int = 0
    chunks: int = 0
    seed_seconds: float = 0.0
    server_pids: list[int] = field(default_factory=list)

    def expected_ids(self):
        """The creator's exported ids in export order, as an Arrow array."""
        if self.name not in _EXPECTED_IDS:
            import pyarrow as pa

            sql = "SELECT id FROM videos WHERE creator_id = ? AND status <> 'deleting' ORDER BY id"
            if self.kind == "sqlite":
                conn = sqlite3.connect(self.db_path)
                try:
                    ids = [r[0] for r in conn.execute(sql, (CREATOR,))]
                finally:
                    conn.close()
            else:
                import psycopg
                from sqlalchemy.engine import make_url

                url = make_url(self.database_url)
                with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as conn:
                    ids = [r[0] for r in conn.execute(sql.replace("?", "%s"), (CREATOR,))]
            _EXPECTED_IDS[self.name] = pa.array(ids, pa.large_string())
        return _EXPECTED_IDS[self.name]


_EXPECTED_IDS: dict[str, Any] = {}


def seed_rows(engine, rows: int, *, chunks_per_video: int | None, creators: int = 1) -> tuple[int, float]:
    """Seed rows only (no files, no embeddings), then mark ready videos embedded, as an
    embedding pass would (the export has an ``embedded_at`` column)."""
    from sqlalchemy import text

    from videolib.seed import seed_library

    started = time.monotonic()
    last = [started]

    def progress(_n: int) -> None:
        if time.monotonic() - last[0] > 20:
            last[0] = time.monotonic()
            note(f"  seeding ... {time.monotonic() - started:.0f} s")

    report = seed_library(engine, None, None, videos=rows, creators=creators, seed=SEED,
                          chunks_per_video=chunks_per_video, on_progress=progress)
    with engine.begin() as conn:
        conn.execute(text("UPDATE videos SET embedded_at = updated_at, embedding_model = 'hashing' "
                          "WHERE status = 'ready'"))
    return report.chunks, time.monotonic() - started


def build_sqlite(base: Path, rows: int, *, chunks_per_video: int | None, reuse: bool) -> Scenario:
    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade

    base.mkdir(parents=True, exist_ok=True)
    tag = f"sqlite-{rows}-{chunks_per_video or 'var'}"
    db_path = base / f"{tag}.db"
    marker = base / f"{tag}.json"
    name = f"sqlite-{human_count(rows)}"
    if reuse and marker.exists() and db_path.exists():
        info = json.loads(marker.read_text())
        note(f"{name}: reusing the template {db_path} (seeded earlier in {info['seed_seconds']:.0f} s)")
        return Scenario(name, "sqlite", rows, f"sqlite:///{db_path}", db_path=str(db_path),
                        db_bytes=db_path.stat().st_size, chunks=info["chunks"], seed_seconds=info["seed_seconds"])
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db_path}{suffix}")
    marker.unlink(missing_ok=True)
    note(f"{name}: seeding {rows:,} rows into {db_path} ...")
    engine = create_db_engine(f"sqlite:///{db_path}")
    upgrade(engine)
    chunks, seconds = seed_rows(engine, rows, chunks_per_video=chunks_per_video)
    engine.dispose()
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    marker.write_text(json.dumps({"rows": rows, "chunks": chunks, "seed_seconds": seconds}))
    return Scenario(name, "sqlite", rows, f"sqlite:///{db_path}", db_path=str(db_path),
                    db_bytes=db_path.stat().st_size, chunks=chunks, seed_seconds=seconds)


def build_pg(pg, rows: int, *, chunks_per_video: int | None) -> Scenario:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade

    name = f"pg-{human_count(rows)}"
    url = pg.create_database("bench_export")
    note(f"{name}: seeding {rows:,} rows into PostgreSQL on port {pg.port} ...")
    engine = create_db_engine(url)
    upgrade(engine)
    chunks, seconds = seed_rows(engine, rows, chunks_per_video=chunks_per_video)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    engine.dispose()
    adbc_uri = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pid_file = pg.base_dir / "data" / "postmaster.pid"
    pids = [int(pid_file.read_text().split()[0])] if pid_file.exists() else []
    return Scenario(name, "pg", rows, url, adbc_uri=adbc_uri, db_bytes=int(size), chunks=chunks,
                    seed_seconds=seconds, server_pids=pids)


def build_warmup(base: Path) -> str:
    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade
    from videolib.seed import seed_library

    base.mkdir(parents=True, exist_ok=True)
    db = base / "warmup.db"
    engine = create_db_engine(f"sqlite:///{db}")
    upgrade(engine)
    seed_library(engine, None, None, videos=40, creators=1, seed=1, chunks_per_video=2)
    engine.dispose()
    return f"sqlite:///{db}"


def verify(scenario: Scenario, variant: str, out: dict, storage: Path) -> tuple[bool, str, dict]:
    """The output file really holds the creator's rows: count, ids in order, columns."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    from videolib.export import DEFAULT_COLUMNS

    problems: list[str] = []
    info: dict[str, Any] = {}
    expected = scenario.expected_ids()
    n = len(expected)
    if variant in FLOW_VARIANTS:
        doc = out.get("document")
        if doc is None:
            return False, f"flow ended {out.get('state')}: {out.get('message')}", info
        if doc.get("status") != "completed" or doc.get("succeeded") != n or out.get("rows") != n:
            problems.append(f"flow {out.get('state')}, status {doc.get('status')}, succeeded "
                            f"{doc.get('succeeded')}, output rows {out.get('rows')} (expected {n})")
        parts = storage / "exports" / CREATOR / f"{doc.get('operation_id')}.parts"
        if parts.exists() and any(parts.iterdir()):
            problems.append(f"part files left in {parts}")
    path = storage / out["path"] if out.get("path") else None
    if path is None or not path.exists():
        problems.append(f"no output file ({out.get('path')})")
        return False, "; ".join(problems), info
    if FORMATS[variant] == "parquet":
        pf = pq.ParquetFile(path)
        groups = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        info["row_groups"] = len(groups)
        info["max_row_group"] = max(groups) if groups else 0
        if pf.metadata.num_rows != n:
            problems.append(f"{pf.metadata.num_rows} rows in the file, expected {n}")
        if pf.schema_arrow.names != list(DEFAULT_COLUMNS):
            problems.append(f"columns {pf.schema_arrow.names}")
        ids = pf.read(columns=["id"]).column("id").combine_chunks().cast(pa.large_string())
        del pf
    else:
        header = pl.read_csv(path, n_rows=0).columns
        if header != list(DEFAULT_COLUMNS):
            problems.append(f"CSV header {header}")
        ids = pl.read_csv(path, columns=["id"], infer_schema=False)["id"].to_arrow().cast(pa.large_string())
        if len(ids) != n:
            problems.append(f"{len(ids)} CSV records, expected {n}")
    if len(ids) == n and not ids.equals(expected):
        problems.append("ids differ from the database's (order or values)")
    detail = f"{n:,} rows, ids in order" if not problems else "; ".join(problems)
    if "row_groups" in info:
        detail += f", {info['row_groups']} row groups (max {info['max_row_group']:,} rows)"
    return not problems, detail, info


def run_one(scenario: Scenario, variant: str, work: Path, ctx: dict, run_index: int) -> Measurement:
    run_dir = work / "runs" / f"{scenario.name}-{variant}-{run_index}"
    storage = run_dir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    spec = {
        "variant": variant,
        "kind": scenario.kind,
        "database_url": scenario.database_url,
        "db_path": scenario.db_path,
        "adbc_uri": scenario.adbc_uri,
        "storage": str(storage),
        "data_dir": str(run_dir / "data"),
        "warmup_url": ctx["warmup_url"],
        "warm_up": ctx["warm_up"],
        "batch_size": ctx["batch_size"],
        "server_pids": scenario.server_pids + ctx["prefect_pids"],
        "result": str(run_dir / "result.json"),
    }
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO))
    if ctx.get("api_url"):
        env["PREFECT_API_URL"] = ctx["api_url"]
    os.sync()
    note(f"{scenario.name}: running {LABELS[variant]} in a fresh process ...")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
    if ctx.get("profile"):
        profile = ctx["profile"] / f"{scenario.name}-{variant}-{run_index}.txt"
        command = [ctx["py_spy"], "record", "--format", "raw", "--threads", "--rate", "250", "--nonblocking",
                   "-o", str(profile), "--", *command]
    proc = subprocess.run(command,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=ctx["timeout"])
    result_path = Path(spec["result"])
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        note(f"{scenario.name}: {LABELS[variant]} FAILED (exit {proc.returncode}):\n{tail}")
        m = Measurement(scenario.name, variant, LABELS[variant], FORMATS[variant], scenario.rows,
                        float("nan"), float("nan"), verify_detail=f"child exited {proc.returncode}")
        shutil.rmtree(run_dir, ignore_errors=True)
        return m
    out = json.loads(result_path.read_text())
    ok, detail, info = verify(scenario, variant, out, storage)
    m = Measurement(
        scenario.name, variant, LABELS[variant], FORMATS[variant], scenario.rows, out["seconds"],
        out["steady_seconds"], batches=out.get("batches", 0), out_bytes=out.get("bytes") or 0,
        growth_mb=(out["peak_kb"] - out["rss_after_imports_kb"]) / 1024,
        growth_run_mb=(out["peak_kb"] - out["rss_before_kb"]) / 1024,
        rss_after_imports_mb=out["rss_after_imports_kb"] / 1024,
        cpu_s=out["cpu_s"], server_cpu_s=out["server_cpu_s"], verified=ok, verify_detail=detail,
        extra={**out.get("extra", {}), **info, "peak_method": out["peak_method"],
               "rss_before_mb": round(out["rss_before_kb"] / 1024, 1), "peak_mb": round(out["peak_kb"] / 1024, 1),
               "rss_after_mb": round(out["rss_after_kb"] / 1024, 1)},
    )
    if variant in FLOW_VARIANTS:
        m.extra["state"] = out.get("state")
    shutil.rmtree(run_dir, ignore_errors=True)
    status = "verified" if m.verified else "NOT VERIFIED"
    note(f"{scenario.name}: {m.label}: {m.seconds:.2f} s (steady {m.steady_seconds:.2f} s), "
         f"{m.rate:,.0f} rows/s, peak RSS +{m.growth_mb:.0f} MB over imports "
         f"(+{m.growth_run_mb:.0f} MB over the run's start), {human_bytes(m.out_bytes)}; {status}: {m.verify_detail}")
    return m


def _keep_largest_memory(median: Measurement, samples: list[Measurement]) -> None:
    """Memory of several runs: the largest growth (a bound), with every run's growth."""
    median.extra["runs_growth_mb"] = [round(x.growth_mb, 1) for x in samples]
    median.growth_mb = max(x.growth_mb for x in samples)
    median.growth_run_mb = max(x.growth_run_mb for x in samples)


def run_scenario(scenario: Scenario, order: list[str], work: Path, ctx: dict, repeat: int) -> dict[str, Measurement]:
    samples: dict[str, list[Measurement]] = {v: [] for v in order}
    for run_index, round_order in enumerate(rounds(order, repeat, name=scenario.name)):
        for variant in round_order:
            samples[variant].append(run_one(scenario, variant, work, ctx, run_index))
    return {variant: median_run(runs, merge=_keep_largest_memory) for variant, runs in samples.items()}


def time_ratios(results: dict[str, Measurement], *, targets: bool = True) -> list[dict[str, Any]]:
    """The ratios; ``targets=False`` (the small SQLite scenario, there for memory
    flatness: the time targets are for the large SQLite and the PostgreSQL sizes) shows
    them all as information."""
    return ratios(results, ["a/b", "a-csv/b", "c/a-csv", "c/a"], targets=TIME_TARGETS, applies=lambda _n: targets)


def memory_rows(all_results: dict[str, dict[str, Measurement]], small: str | None, big: str | None) -> list[dict]:
    """Peak RSS growth per variant at the two SQLite sizes: bound and flatness."""
    rows = []
    names = [s for s in (small, big) if s and s in all_results]
    variants = [v for v in VARIANTS if any(v in all_results[s] for s in names)]
    for variant in variants:
        growth = {s: all_results[s][variant].growth_mb for s in names if variant in all_results[s]}
        row: dict[str, Any] = {"variant": variant, "growth_mb": growth,
                               "bound_met": all(g <= MEMORY_BOUND_MB for g in growth.values()), "flat": None}
        if small in growth and big in growth:
            rel, absolute = FLAT_TOLERANCE
            row["flat"] = growth[big] - growth[small] <= max(absolute, rel * growth[small])
        rows.append(row)
    return rows


def machine_info() -> dict[str, Any]:
    """The machine and the library (``_common``), plus the Arrow side's versions."""
    import polars
    import pyarrow

    more = {"pyarrow": pyarrow.__version__, "arrow_memory_pool": pyarrow.default_memory_pool().backend_name,
            "polars": polars.__version__}
    with contextlib.suppress(Exception):
        import adbc_driver_postgresql

        more["adbc_driver_postgresql"] = adbc_driver_postgresql.__version__
    return _common.machine_info(**more)


def print_report(machine, scenarios, all_results, all_ratios, memory, args) -> None:
    from rich.table import Table

    console.print()
    console.rule("bulk export benchmark")
    console.print(machine_line(machine) + f"; pyarrow {machine['pyarrow']} ({machine['arrow_memory_pool']} pool), "
                  f"polars {machine['polars']}")
    console.print(f"runs per variant: SQLite {args.repeat}, PostgreSQL {args.pg_repeat} (median time shown; "
                  f"memory: the largest growth of the runs)")
    console.print(f"flow batch size: {args.batch_size or 'flow default'}; chunks per video: "
                  f"{args.chunks_per_video or 'seed default (2-12, 80 % of videos)'}")
    for s in scenarios:
        console.print(f"{s.name}: {s.rows:,} videos of one creator, {s.chunks:,} chunks "
                      f"(database {human_bytes(s.db_bytes)}; seeded in {s.seed_seconds:.0f} s)")
    rows = [
        [name, m.label, f"{m.rows:,}", f"{m.seconds:.2f}", f"{m.rate:,.0f}", f"{m.steady_seconds:.2f}",
         f"{m.steady_rate:,.0f}", str(m.batches or "-"), human_bytes(m.out_bytes),
         f"{m.growth_mb:.0f} / {m.growth_run_mb:.0f}", f"{m.cpu_s:.1f} / {m.server_cpu_s:.1f}",
         "yes" if m.verified else f"NO: {m.verify_detail}"]
        for name, results in all_results.items() for variant in VARIANTS if (m := results.get(variant)) is not None
    ]
    console.print(results_table(
        "rows exported per second (higher is better)",
        ["scenario", "variant", "rows", "time s", "rows/s", "steady s", "steady rows/s", "batches", "output",
         "peak RSS +MB (imports/run)", "cpu s (proc/srv)", "verified"], rows, left=("scenario", "variant", "verified")))
    console.print(ratio_table(all_ratios))
    if memory:
        mt = Table(title=f"peak RSS growth over the RSS after imports, MB (bound {MEMORY_BOUND_MB} MB; flat: the "
                         f"larger size at most {FLAT_TOLERANCE[0]:.0%} or {FLAT_TOLERANCE[1]} MB above the smaller)")
        sizes = list(memory[0]["growth_mb"]) if memory else []
        for col in ("variant", *sizes, f"<= {MEMORY_BOUND_MB} MB", "flat"):
            mt.add_column(col, justify="left" if col == "variant" else "right")
        for row in memory:
            target = row["variant"] in FLOW_VARIANTS
            mt.add_row(LABELS[row["variant"]], *(f"{row['growth_mb'].get(s, float('nan')):.0f}" for s in sizes),
                       ("yes" if row["bound_met"] else "NO") + ("" if target else " (info)"),
                       "-" if row["flat"] is None else ("yes" if row["flat"] else "NO") + ("" if target else " (info)"))
        console.print(mt)
    console.print("targets: (a) within 1.5x of (b); (a) at least 2.5x faster than (c) (CSV vs CSV is the fair "
                  f"comparison); the flow's peak RSS growth <= {MEMORY_BOUND_MB} MB and flat from the small to the "
                  "large SQLite size.")
    for name, results in all_results.items():
        for variant, m in results.items():
            if variant in FLOW_VARIANTS or "runs_s" in m.extra:
                console.print(f"{name} {m.label}: {m.extra}")


def parse_variants(value: str) -> list[str]:
    tokens = [t.strip() for t in value.split(",")] if ("," in value or "-" in value) else [
        LETTERS.get(ch, ch) for ch in value]
    bad = [t for t in tokens if t not in VARIANTS]
    if bad or not tokens:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    return list(dict.fromkeys(tokens))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1_000_000, help="videos in the large SQLite scenario")
    parser.add_argument("--small-rows", type=int, default=100_000,
                        help="videos in the small SQLite scenario (memory flatness; 0 skips it)")
    parser.add_argument("--pg-rows", type=int, default=200_000, help="videos in the PostgreSQL scenario")
    parser.add_argument("--only", choices=("sqlite", "pg"))
    parser.add_argument("--variants", type=parse_variants, default=list(VARIANTS),
                        help="comma-separated, in this order: a (flow, Parquet), a-csv (flow, CSV), b, c; "
                             "letters 'abc' also work (default a,a-csv,b,c)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every variant this many times (order rotated) and report the median")
    parser.add_argument("--pg-repeat", type=int, help="--repeat for PostgreSQL (default: same as --repeat)")
    parser.add_argument("--batch-size", type=int, help="the flow's batch_size (default: the flow's own)")
    parser.add_argument("--chunks-per-video", type=int,
                        help="transcript chunks per video when seeding (default: the seed's 2-12)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (2000 SQLite, 1000 PostgreSQL), no warm-up run: a quick check")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="skip the untimed warm-up flow run in the flow variants' processes")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work")
    parser.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    parser.add_argument("--reuse-templates", action="store_true",
                        help="keep the seeded SQLite files in WORK_DIR/templates and reuse them next time")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record a py-spy profile of every variant's process into DIR (collapsed stacks, "
                             "all threads; needs py-spy on PATH or in $PY_SPY; it slows the runs a little)")
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.smoke:
        args.rows, args.small_rows, args.pg_rows = 2000, 0, 1000
        args.no_warm_up = True
    if args.repeat < 1 or (args.pg_repeat is not None and args.pg_repeat < 1):
        parser.error("--repeat and --pg-repeat must be at least 1")
    if args.rows < 1 or args.pg_rows < 1 or not 0 <= args.small_rows < args.rows:
        parser.error("--rows and --pg-rows must be at least 1, --small-rows (0: none) below --rows")
    if args.pg_repeat is None:
        args.pg_repeat = args.repeat
    order = args.variants
    kinds = [k for k in ("sqlite", "pg") if args.only in (None, k)]

    work = args.work_dir / f"run-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    templates = args.work_dir / "templates" if args.reuse_templates else work / "templates"
    machine = machine_info()
    note(f"machine: {machine}")
    scenarios: list[Scenario] = []
    all_results: dict[str, dict[str, Measurement]] = {}
    all_ratios: dict[str, list] = {}
    pg = None
    ctx: dict[str, Any] = {"batch_size": args.batch_size, "prefect_pids": [], "api_url": os.environ.get("PREFECT_API_URL"),
                           "timeout": 3600, "warmup_url": None, "warm_up": not args.no_warm_up}
    if args.profile:
        ctx["py_spy"] = os.environ.get("PY_SPY") or shutil.which("py-spy")
        if not ctx["py_spy"]:
            parser.error("--profile needs py-spy (on PATH, or its path in $PY_SPY)")
        args.profile.mkdir(parents=True, exist_ok=True)
        ctx["profile"] = args.profile.resolve()
    small_name = big_name = None

    def run_and_record(scenario: Scenario, repeat: int, *, targets: bool = True) -> None:
        note(f"{scenario.name}: {scenario.rows:,} videos, {scenario.chunks:,} chunks, "
             f"db {human_bytes(scenario.db_bytes)}")
        scenarios.append(scenario)
        all_results[scenario.name] = run_scenario(scenario, order, work, ctx, repeat)
        all_ratios[scenario.name] = time_ratios(all_results[scenario.name], targets=targets)

    try:
        needs_flow = any(v in FLOW_VARIANTS for v in order)
        with _common.prefect_server(needs_flow and not ctx["api_url"]):
            if needs_flow:
                from prefect.settings import PREFECT_API_URL

                ctx["api_url"] = PREFECT_API_URL.value()
                ctx["prefect_pids"] = child_pids()
                ctx["warmup_url"] = build_warmup(work / "warmup")
                note(f"Prefect API at {ctx['api_url']} (server pids {ctx['prefect_pids']})")
            for kind in kinds:
                if kind == "sqlite":
                    sizes = [r for r in (args.small_rows, args.rows) if r]
                    for rows in sizes:
                        scenario = build_sqlite(templates, rows, chunks_per_video=args.chunks_per_video,
                                                reuse=args.reuse_templates)
                        if rows == args.rows:
                            big_name = scenario.name
                        else:
                            small_name = scenario.name
                        run_and_record(scenario, args.repeat, targets=rows == args.rows)
                else:
                    servers = load_servers_module()
                    note("pg: starting PostgreSQL ...")
                    pg = servers.start_postgres(work / "pg")
                    scenario = build_pg(pg, args.pg_rows, chunks_per_video=args.chunks_per_video)
                    run_and_record(scenario, args.pg_repeat)
    finally:
        if pg is not None:
            pg.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    memory = memory_rows(all_results, small_name, big_name)
    print_report(machine, scenarios, all_results, all_ratios, memory, args)
    write_json(args.json, {
        "machine": machine,
        "batch_size": args.batch_size,
        "chunks_per_video": args.chunks_per_video,
        "repeat": {"sqlite": args.repeat, "pg": args.pg_repeat},
        "scenarios": {s.name: asdict(s) for s in scenarios},
        "results": {s: {v: {**asdict(m), "rate": m.rate, "steady_rate": m.steady_rate} for v, m in r.items()}
                    for s, r in all_results.items()},
        "ratios": all_ratios,
        "memory": memory,
    })
    return 1 if failures([m for r in all_results.values() for m in r.values()]) else 0


if __name__ == "__main__":
    sys.exit(main())
