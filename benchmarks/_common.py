"""What the benchmarks share: Prefect's settings (imported first, before prefect), the
library's settings pointed at a scenario, SQLite template files, CPU accounting from
/proc, rounds with a rotating order and the median run, ratios against targets, the
tables they are printed in, the machine's description and a hash of the library's
sources (which code the numbers belong to).

Each benchmark keeps what is its own: its variants, its measurement, its verification.
"""

from __future__ import annotations

import os

# Before anything imports prefect.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import contextlib  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
CREATOR = "creator-001"
SEED = 20261124

console = Console(highlight=False, width=None if sys.stdout.isatty() else 190)


def note(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def human_count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


# --------------------------------------------------------------------------- the library's settings


def reset_caches() -> None:
    """Settings, cached stores and engines are read again from the environment."""
    from config import get_settings
    from tasks.resources import _store
    from videolib.db.engine import dispose_engines

    get_settings.cache_clear()
    _store.cache_clear()
    dispose_engines()


def point_settings_at(database_url: str, storage_url: str, data_dir: Path | str, endpoint: str | None = None) -> None:
    os.environ["BULKOPS_DATABASE_URL"] = database_url
    os.environ["BULKOPS_STORAGE_URL"] = storage_url
    os.environ["BULKOPS_DATA_DIR"] = str(data_dir)
    if endpoint:
        os.environ["BULKOPS_S3_ENDPOINT_URL"] = endpoint
    else:
        os.environ.pop("BULKOPS_S3_ENDPOINT_URL", None)
    reset_caches()


def load_servers_module():
    """tests/servers.py by path (``tests`` is not an installed package): PostgreSQL and
    SeaweedFS on loopback, as the tests start them."""
    spec = importlib.util.spec_from_file_location("bulkops_test_servers", REPO / "tests" / "servers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def prefect_server(needed: bool) -> Iterator[None]:
    """Prefect's test server while the block runs, unless not ``needed`` or
    ``PREFECT_API_URL`` names a server to use instead."""
    if not needed or os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.testing.utilities import prefect_test_harness

    note("starting Prefect's test server (prefect_test_harness) ...")
    with prefect_test_harness(server_startup_timeout=120):
        yield


# --------------------------------------------------------------------------- SQLite templates


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def checkpoint_and_close(db_path: Path) -> None:
    """Fold the WAL into the main file so that a plain file copy is the whole database."""
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def copy_tree(src: Path, dst: Path) -> None:
    if shutil.which("cp"):
        subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    else:
        shutil.copytree(src, dst, symlinks=True)


def settle() -> None:
    """Write dirty pages out so a variant does not pay for its own setup's writeback."""
    os.sync()
    time.sleep(0.5)


# --------------------------------------------------------------------------- CPU from /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process (with its ended helper processes, such as
    reprocess's chunking workers) and by its running child processes (the Prefect test
    server, SeaweedFS), read from /proc (children: 0 where that is missing)."""
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK")
    children = 0.0
    with contextlib.suppress(OSError):
        for pid in child_pids():
            fields = _stat_fields(pid)
            if fields is not None:
                children += (int(fields[11]) + int(fields[12])) / tick
    return own, children


def child_pids() -> list[int]:
    """This process's direct children right now (the Prefect test server, SeaweedFS)."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == me:
                out.append(int(entry))
    return out


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of these processes and all their descendants (live ones, plus the
    reaped ones through cutime/cstime): the Prefect server, PostgreSQL and its backends."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        stats[int(entry)] = fields
        parents.setdefault(int(fields[1]), []).append(int(entry))
    total = 0.0
    seen: set[int] = set()
    stack = [p for p in pids if p in stats]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += sum(int(x) for x in stats[pid][11:15]) / tick
        stack.extend(parents.get(pid, []))
    return total


# --------------------------------------------------------------------------- rounds, medians, ratios


ETA_POINTS = (0.10, 0.25, 0.50, 0.75)
ETA_GOAL = 0.25  # within +-25 % of the time really left, from 25 % on


def running_events(events: list) -> list:
    """``(time, event)`` of a flow's progress while it runs (not the announcement of the
    run, not the final event carrying the result)."""
    return [(t, e) for t, e in events if e.result is None and getattr(e, "phase", "running") == "running"]


def eta_accuracy(events: list, ended: float) -> list[dict[str, Any]]:
    """At 10, 25, 50 and 75 % of the items done: the ETA the progress showed then, against
    the time that was really left until the run ended."""
    rows = []
    running = [(t, e) for t, e in running_events(events) if e.total and e.eta_seconds is not None]
    for point in ETA_POINTS:
        hit = next(((t, e) for t, e in running if e.current / e.total >= point), None)
        if hit is None:
            rows.append({"at": point, "done": None, "predicted_s": None, "left_s": None, "error": None})
            continue
        t, e = hit
        left = ended - t
        rows.append({"at": point, "done": round(e.current / e.total, 3), "predicted_s": round(e.eta_seconds, 1),
                     "left_s": round(left, 1), "error": round(e.eta_seconds / left - 1, 3) if left > 0 else None})
    return rows


def eta_lines(label: str, rows: list[dict[str, Any]]) -> list[str]:
    """One line per point, for people: predicted, really left, error, within the goal."""
    lines = []
    for row in rows:
        if row["error"] is None:
            lines.append(f"{label}: ETA at {row['at']:.0%}: no reading")
            continue
        goal = "" if row["at"] < 0.25 else (" (within goal)" if abs(row["error"]) <= ETA_GOAL else " (OFF goal)")
        lines.append(f"{label}: ETA at {row['at']:.0%} (done {row['done']:.0%}): predicted {row['predicted_s']:.1f} s, "
                     f"really {row['left_s']:.1f} s left, {row['error']:+.0%}{goal}")
    return lines


def rounds(order: list[str], repeat: int, *, name: str = "") -> Iterator[list[str]]:
    """The variants of each round: round r starts the order r places later, so that no
    variant always runs first (a cold cache, a busy neighbour)."""
    for round_index in range(repeat):
        shift = round_index % len(order)
        if repeat > 1:
            note(f"{name + ': ' if name else ''}round {round_index + 1}/{repeat}: "
                 f"{' '.join(order[shift:] + order[:shift])}")
        yield order[shift:] + order[:shift]


def median_run(samples: list, *, merge: Callable[[Any, list], None] | None = None):
    """The median run by time (the lower middle one for an even count), carrying every
    run's times in ``extra``, verified only if every run verified; ``merge(median,
    samples)`` adds what else a benchmark keeps of all runs (memory: the largest)."""
    ordered = sorted(samples, key=lambda m: (m.seconds != m.seconds, m.seconds))
    m = ordered[(len(ordered) - 1) // 2]
    if len(samples) > 1:
        m.extra["runs_s"] = [round(x.seconds, 2) for x in samples]
        m.extra["runs_steady_s"] = [round(x.steady_seconds, 2) for x in samples]
        m.verified = all(x.verified for x in samples)
        if merge is not None:
            merge(m, samples)
    return m


Target = tuple[str, float, str]  # ("<=" or ">=", bound, what it means)


def ratio(results: dict[str, Any], name: str, *, targets: dict[str, Target], applies: bool = True) -> dict | None:
    """The time ratio ``name`` (``"a/b"``: time of (a) / time of (b)), total and steady,
    and whether it meets its target (None: information only, or no target here)."""
    num, den = name.split("/")
    if num not in results or den not in results:
        return None
    total = results[num].seconds / results[den].seconds
    steady = results[num].steady_seconds / results[den].steady_seconds
    target = targets.get(name) if applies else None
    op, bound, text = target or ("", 0.0, "information only")
    met = None
    if target:
        met = {k: (v <= bound if op == "<=" else v >= bound) for k, v in (("total", total), ("steady", steady))}
    return {"ratio": name, "total": total, "steady": steady, "target": f"{op} {bound:g}" if target else "(info)",
            "met": met, "text": text}


def ratios(results: dict[str, Any], names: list[str], *, targets: dict[str, Target],
           applies: Callable[[str], bool] = lambda _name: True) -> list[dict]:
    rows = (ratio(results, name, targets=targets, applies=applies(name)) for name in names)
    return [row for row in rows if row is not None]


def ratio_table(all_ratios: dict[str, list[dict]]) -> Table:
    """The ratios of every scenario, with targets met or not."""
    table = Table(title="time ratios (a/b = time of (a) / time of (b))")
    for col in ("scenario", "ratio", "total", "steady", "target", "met (total / steady)"):
        table.add_column(col, justify="right" if col in ("total", "steady") else "left")
    for scenario, rows in all_ratios.items():
        for r in rows:
            met = "-" if r["met"] is None else (
                f"{'yes' if r['met']['total'] else 'NO'} / {'yes' if r['met']['steady'] else 'NO'}")
            table.add_row(scenario, r["ratio"], f"{r['total']:.2f}", f"{r['steady']:.2f}", r["target"], met)
    return table


def results_table(title: str, columns: list[str], rows: list[list[str]], *, left: tuple[str, ...]) -> Table:
    """One row per measured variant; ``left`` columns are text, the others numbers."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    for row in rows:
        table.add_row(*row)
    return table


# --------------------------------------------------------------------------- the machine, the code


def library_fingerprint() -> str:
    """A hash of the library's Python sources (config, videolib, tasks, flows, service, api): which
    version of the library these numbers belong to."""
    digest = hashlib.sha256()
    for package in ("config", "videolib", "tasks", "flows", "service", "api"):
        for path in sorted((REPO / package).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine_info(**more: str) -> dict[str, Any]:
    import prefect

    info = {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "prefect": prefect.__version__,
        "platform": platform.platform(),
        "library_sha256": library_fingerprint(),
    }
    with contextlib.suppress(Exception):
        import sqlalchemy

        info["sqlalchemy"] = sqlalchemy.__version__
    info.update(more)
    return info


def machine_line(machine: dict[str, Any]) -> str:
    return (f"machine: nproc={machine['nproc']} (usable {machine['cpus_usable']}), python {machine['python']}, "
            f"sqlite {machine['sqlite']}, prefect {machine['prefect']}, {machine['platform']}; "
            f"library sources sha256: {machine['library_sha256']}")


def write_json(path: Path | None, document: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps({"date": datetime.now(UTC).date().isoformat(), **document}, indent=2,
                                   default=str))


def failures(measurements: list) -> int:
    """How many variants did not verify (said in red); the benchmark exits 1 if any."""
    failed = [m for m in measurements if not m.verified]
    if failed:
        console.print(f"[red]{len(failed)} variant(s) did not verify[/red]")
    return len(failed)


# --------------------------------------------------------------------------- seeded SQLite templates


def db_counts(engine) -> tuple[int, int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        videos = conn.execute(text("SELECT count(*) FROM videos WHERE creator_id = :c"), {"c": CREATOR}).scalar_one()
        chunks = conn.execute(text("SELECT count(*) FROM video_chunks")).scalar_one()
    return int(videos), int(chunks)


def object_keys(engine) -> list[str]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT storage_key, thumbnail_key FROM videos WHERE creator_id = :c ORDER BY id"), {"c": CREATOR}
        ).all()
    return [key for row in rows for key in row if key]


def tree_bytes(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


def age_tree(root: Path, seconds: float) -> None:
    """Every file under ``root`` last modified ``seconds`` ago."""
    when = time.time() - seconds
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(dirpath, name), (when, when))


@dataclass
class Template:
    db_path: Path
    storage: Path
    videos: int
    chunks: int
    objects: int
    keys: list[str]
    db_bytes: int
    storage_bytes: int
    seed_seconds: float


def build_template(
    base: Path, videos: int, *, embed: bool, chunks_per_video: int, analyze: bool = False,
    creator_id_index: bool = False, object_age_s: float = 0.0,
) -> Template:
    """Seed one creator's library once: a SQLite file and a local storage tree (its
    objects ``object_age_s`` old)."""
    from videolib.db.engine import create_db_engine
    from videolib.db.migrate import upgrade
    from videolib.embedders import get_embedder
    from videolib.seed import seed_library
    from videolib.storage import ObjectStore

    base.mkdir(parents=True, exist_ok=True)
    db_path = base / "template.db"
    storage = base / "storage"
    started = time.monotonic()
    engine = create_db_engine(sqlite_url(db_path))
    upgrade(engine)
    store = ObjectStore.from_url(str(storage))
    last = [time.monotonic()]

    def progress(_n: int) -> None:
        if time.monotonic() - last[0] > 15:
            last[0] = time.monotonic()
            note(f"  seeding ... {time.monotonic() - started:.0f} s")

    report = seed_library(
        engine,
        store,
        get_embedder("hashing") if embed else None,
        videos=videos,
        creators=1,
        seed=SEED,
        chunks_per_video=chunks_per_video,
        transcript_ratio=1.0,
        on_progress=progress,
    )
    keys = object_keys(engine)
    engine.dispose()
    if analyze or creator_id_index:
        conn = sqlite3.connect(db_path)
        if creator_id_index:
            conn.execute("CREATE INDEX IF NOT EXISTS ix_videos_creator_id ON videos (creator_id, id)")
        if analyze:
            conn.execute("ANALYZE")
        conn.commit()
        conn.close()
    checkpoint_and_close(db_path)
    if object_age_s:
        age_tree(storage, object_age_s)
    files, size = tree_bytes(storage)
    return Template(
        db_path=db_path,
        storage=storage,
        videos=report.videos,
        chunks=report.chunks,
        objects=files,
        keys=keys,
        db_bytes=db_path.stat().st_size,
        storage_bytes=size,
        seed_seconds=time.monotonic() - started,
    )
