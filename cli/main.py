"""``bulkops``: bulk delete, export and reprocess of a video library, from a terminal.

Every reporting command takes ``--json`` and then prints exactly one JSON document
on stdout; progress and logs go to stderr. Exit status: 0 done, 1 the operation ended
partial/failed/cancelled, 2 refused before any flow run (CONTRACT.md).

Commands that run no flow (``--help``, ``init``, ``seed``) never import prefect: it
costs over a second before anything happens.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console

try:  # typer >= 0.20 carries its own copy of click, with its own exception classes
    from typer._click import exceptions as _tclick

    _USAGE_ERRORS: tuple[type[Exception], ...] = (click.UsageError, _tclick.UsageError)
    _NO_ARGS: tuple[type[Exception], ...] = (_tclick.NoArgsIsHelpError,)
except ImportError:  # pragma: no cover - older typer uses click itself
    _USAGE_ERRORS = (click.UsageError,)
    _NO_ARGS = ()
_EXITS: tuple[type[BaseException], ...] = (click.exceptions.Exit, typer.Exit)
_ABORTS: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort)

from videolib.ids import RequestError

app = typer.Typer(
    name="bulkops",
    help="Bulk delete, export and reprocess for a video library, run as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
# Repeatable: `--ids A --ids B,C` selects all three (a repeated option must never drop ids).
IdsOpt = Annotated[list[str] | None, typer.Option("--ids", help="Comma-separated video ids (repeatable).")]
IdsFileOpt = Annotated[
    list[Path] | None, typer.Option("--ids-file", help="File with one video id per line (repeatable).")
]


class Refused(Exception):
    """Refused before any flow run: exit 2."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _prefect_env() -> None:
    # No internet here: Prefect's telemetry attempt makes the ephemeral server's start
    # fail with "database is locked". Per-task INFO lines would drown the progress bar.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _settings():
    from config import get_settings

    return get_settings()


# ----------------------------------------------------------------------------- init / seed


@app.command()
def init(json_out: JsonOpt = False) -> None:
    """Create or upgrade the database schema (Alembic)."""
    from videolib.db.engine import get_engine
    from videolib.db.migrate import upgrade

    settings = _settings()
    before, after = upgrade(get_engine(settings.database_url))
    document = {"database": _redact(settings.database_url), "before": before, "revision": after}
    if json_out:
        emit(document)
    else:
        what = "created" if before is None else ("upgraded" if before != after else "already up to date")
        out.print(f"Schema {what} at revision {after} in {document['database']}")


@app.command()
def seed(
    videos: Annotated[int, typer.Option(min=0, max=10_000_000, help="How many videos to create.")] = 100,
    creators: Annotated[int, typer.Option(min=1, max=10_000, help="How many creators own them.")] = 3,
    seed_value: Annotated[
        int | None, typer.Option("--seed", help="Random seed (same seed, same library). Default: random.")
    ] = None,
    no_files: Annotated[bool, typer.Option("--no-files", help="Rows only: no files in storage.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate a demo library: rows, real files and thumbnails, transcript chunks."""
    import random

    from videolib.db.engine import get_engine
    from videolib.db.migrate import ensure_schema
    from videolib.embedders import get_embedder
    from videolib.seed import SeedConflictError, seed_library

    settings = _settings()
    store = None if no_files else _check_storage()
    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    seed_value = random.SystemRandom().randrange(2**31) if seed_value is None else seed_value
    started = time.monotonic()
    with _progress(not json_out and videos >= 1000, "seeding", videos) as advance:
        try:
            report = seed_library(
                engine, store, get_embedder(settings.embedder),
                videos=videos, creators=creators, seed=seed_value, on_progress=advance,
            )
        except SeedConflictError as exc:
            raise Refused("already_seeded", str(exc)) from exc
    document = report.to_dict()
    if json_out:
        emit(document)
        return
    out.print(
        f"Seeded {report.videos} videos ({report.chunks} chunks, {report.objects} objects) "
        f"for {len(report.creators)} creators with seed {seed_value} in {time.monotonic() - started:.1f}s"
    )
    for creator, count in report.creators.items():
        out.print(f"  {creator}: {count} videos")


# ----------------------------------------------------------------------------- operations


def _read_selection(
    ids: list[str] | None, ids_files: list[Path] | None, all_videos: bool, *, allow_all: bool
) -> list[str] | None:
    given = [name for name, value in (("--ids", bool(ids)), ("--ids-file", bool(ids_files)),
                                      ("--all", all_videos)) if value]
    options = "--ids, --ids-file or --all" if allow_all else "--ids or --ids-file"
    if len(given) != 1:
        if not given:
            raise Refused("bad_selection", f"select videos with exactly one of {options}")
        raise Refused("bad_selection", f"{' and '.join(given)} given: use exactly one of {options}")
    if all_videos:
        return None
    items: list[str] = []
    for value in ids or []:
        items.extend(part.strip() for part in value.split(","))
    for path in ids_files or []:
        items.extend(line.strip() for line in _read_ids_file(path).splitlines())
    items = [item for item in items if item]
    if not items:
        raise Refused("empty_selection", "the selection is empty: give at least one video id")
    limit = _settings().max_ids
    if len(items) > limit:
        raise Refused(
            "too_many_ids",
            f"{len(items)} ids given; one request may list at most {limit} "
            "(BULKOPS_MAX_IDS; split the list or use --all)",
        )
    return items


def _read_ids_file(path: Path) -> str:
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first id.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise Refused("ids_file_not_found", f"--ids-file {str(path)!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise Refused("ids_file_unreadable", f"--ids-file {str(path)!r} is a directory") from exc
    except UnicodeDecodeError as exc:
        raise Refused("ids_file_unreadable", f"--ids-file {str(path)!r} is not UTF-8 text") from exc
    except OSError as exc:
        raise Refused("ids_file_unreadable", f"cannot read --ids-file {str(path)!r}: {exc.strerror}") from exc


def _check_creator(creator: str) -> None:
    from videolib.ids import check_creator_id

    try:
        check_creator_id(creator)
    except RequestError as exc:
        raise Refused(exc.code, exc.message) from exc


def _check_all_not_empty(creator: str) -> None:
    from videolib.db.engine import get_engine
    from videolib.selection import count_creator_videos

    if count_creator_videos(get_engine(_settings().database_url), creator) == 0:
        raise Refused("empty_selection", f"creator {creator!r} has no videos: nothing to select with --all")


def _check_storage():
    """The configured store, once it has answered a probe (exit 2 storage_unavailable if not)."""
    from videolib.storage import ObjectStore, StorageUnavailable

    settings = _settings()
    try:
        store = ObjectStore.from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        store.check()
    except StorageUnavailable as exc:
        names = "BULKOPS_STORAGE_URL" + (" and BULKOPS_S3_ENDPOINT_URL" if settings.s3_endpoint_url else "")
        raise Refused("storage_unavailable", f"{exc} (check {names})") from exc
    return store


def _launch_ids(creator: str, items: list[str] | None, store) -> tuple[list[str] | None, str | None]:
    """What a run takes for a listed selection: the distinct valid ids, and the key of
    the malformed ones set aside in storage (they never travel as flow parameters: 10,000
    long junk ids would pass Prefect's 512 KiB limit; the run reports them as invalid_id)."""
    if items is None:
        return None, None
    from videolib.operation import parse_video_ids
    from videolib.selection import stage_invalid_ids

    parsed = parse_video_ids(items, max_ids=_settings().max_ids)
    key = stage_invalid_ids(store, creator, [e.video_id for e in parsed.errors]) if parsed.errors else None
    return parsed.ids, key


def _check_reprocessable(creator: str) -> None:
    """``--all`` selects only what a reprocess can act on: refuse when that is nothing."""
    from videolib.db.engine import get_engine
    from videolib.operation import describe_not_selected
    from videolib.reprocess import any_reprocessable, select_reprocessable

    settings = _settings()
    engine = get_engine(settings.database_url)
    if any_reprocessable(engine, creator, lease_s=settings.reprocess_lease_s):
        return
    left_out = describe_not_selected(
        select_reprocessable(engine, creator, operation_id="", lease_s=settings.reprocess_lease_s).not_selected)
    if not left_out:
        raise Refused("empty_selection", f"creator {creator!r} has no videos: nothing to select with --all")
    raise Refused("empty_selection", f"creator {creator!r} has no videos to reprocess: {left_out}")


def _prepare_database() -> None:
    from videolib.db.engine import get_engine
    from videolib.db.migrate import ensure_schema

    ensure_schema(get_engine(_settings().database_url))


_announced = False


def run_flow(flow_name: str, parameters: dict[str, Any], *, json_out: bool, label: str) -> dict[str, Any]:
    """Run a bulk flow in this process, with a live progress bar on stderr; its result document."""
    _prefect_env()
    started = time.monotonic()
    global _announced
    if not json_out and not _announced:
        _announced = True
        where = os.environ.get("PREFECT_API_URL") or "a temporary local Prefect server (set PREFECT_API_URL to reuse one)"
        err.print(f"[dim]Running on {where}…[/dim]")
    from flows.operation import add_progress_listener, remove_progress_listener

    flow = _load_flow(flow_name)
    final: dict[str, Any] = {}
    bar = _OperationBar(enabled=not json_out, label=label, started=started)

    def listen(event) -> None:
        if event.result is not None:
            final.update(event.result)
        bar.update(event)

    add_progress_listener(listen)
    try:
        with bar:
            state = flow(**parameters, return_state=True)
    finally:
        remove_progress_listener(listen)
    if not final:
        message = state.message or f"the flow run ended {state.name} without a result"
        final = {"status": "failed", "message": message, "operation": label, "requested": 0, "succeeded": 0,
                 "failed": 0, "skipped": 0, "errors": []}
    return final


def _load_flow(name: str):
    if name == "bulk-delete":
        from flows.bulk_delete import bulk_delete

        return bulk_delete
    if name == "bulk-export":
        from flows.bulk_export import bulk_export

        return bulk_export
    if name == "bulk-reprocess":
        from flows.bulk_reprocess import bulk_reprocess

        return bulk_reprocess
    raise ValueError(name)


class _OperationBar:
    """A Rich progress bar driven by the flow's progress events (stderr)."""

    def __init__(self, *, enabled: bool, label: str, started: float) -> None:
        self.enabled = enabled and err.is_terminal or (enabled and os.environ.get("BULKOPS_PROGRESS") == "1")
        self.plain = enabled and not self.enabled
        self.label = label
        self.started = started
        self.first_event: float | None = None
        self._last_plain = 0.0
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[batches]}"), TimeRemainingColumn(), console=err, transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=None, batches="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, event) -> None:
        if self.first_event is None:
            self.first_event = time.monotonic()
        if event.result is not None:
            return
        if self._progress is not None:
            self._progress.update(
                self._task, total=event.total, completed=event.current,
                batches=f"{event.batches_done}/{event.batches} batches",
            )
        elif self.plain:
            # Not a terminal (a log file, CI): a line every few seconds, not one per batch.
            now = time.monotonic()
            if event.batches_done in (0, 1, event.batches) or now - self._last_plain >= 5.0:
                self._last_plain = now
                eta = "" if event.eta_seconds is None else f", ETA {event.eta_seconds:.0f}s"
                err.print(
                    f"{self.label}: {event.current}/{event.total} videos, "
                    f"{event.batches_done}/{event.batches} batches{eta}"
                )


def finish_operation(document: dict[str, Any], *, json_out: bool) -> None:
    if json_out:
        emit(document)
    else:
        print_result(document)
    status = document.get("status")
    # A refused or broken run is "failed" with a message; a dry run that finished exits 0
    # whatever its per-item findings (CONTRACT.md).
    aborted = status == "failed" and bool(document.get("message"))
    ok = status == "completed" or (bool(document.get("dry_run")) and status in {"partial", "failed"} and not aborted)
    raise typer.Exit(0 if ok else 1)


def print_result(document: dict[str, Any]) -> None:
    from rich.table import Table

    status = document.get("status", "failed")
    colour = {"completed": "green", "partial": "yellow", "cancelled": "yellow"}.get(status, "red")
    title = f"{document.get('operation', 'operation')} {'(dry run) ' if document.get('dry_run') else ''}"
    out.print(f"[bold]{title}[/bold][{colour}]{status}[/{colour}]  operation {document.get('operation_id', '-')}")
    table = Table(show_header=True, header_style="bold")
    for column in ("requested", "succeeded", "failed", "skipped"):
        table.add_column(column, justify="right")
    table.add_row(*(str(document.get(c, 0)) for c in ("requested", "succeeded", "failed", "skipped")))
    out.print(table)
    if document.get("not_selected") and any(document["not_selected"].values()):
        from videolib.operation import describe_not_selected

        out.print(f"Not selected (left out on purpose, not failures): {describe_not_selected(document['not_selected'])}",
                  markup=False)
    if document.get("plan"):
        plan = document["plan"]
        out.print(
            f"Would delete {plan.get('videos', 0)} videos: {plan.get('objects', 0)} objects, "
            f"{_human_bytes(plan.get('bytes', 0))}. Nothing was changed."
        )
    errors = document.get("errors") or []
    if errors:
        counts: dict[str, int] = {}
        for item in errors:
            counts[item["error"]] = counts.get(item["error"], 0) + 1
        out.print("Failed items: " + ", ".join(f"{n} {name}" for name, n in sorted(counts.items())))
        for item in errors[:10]:
            detail = item['detail'] if len(item['detail']) <= 160 else item['detail'][:157] + '...'
            out.print(f"  {item['video_id']!r}: {item['error']} — {detail}", markup=False)
        if len(errors) > 10:
            out.print(f"  … and {len(errors) - 10} more")
    output = document.get("output")
    if output:
        out.print(
            f"Exported {output['rows']} rows to {output['path']} ({_human_bytes(output['bytes'])}, {output['format']})"
        )
        out.print(f"Download (until {output['expires_at']}): {output['url']}", markup=False, soft_wrap=True)
    if document.get("report_path"):
        out.print(f"Per-item report: {document['report_path']} (in storage)")
    if document.get("manifest_path"):
        out.print(f"Audit manifest: {document['manifest_path']} (in storage)")
    if document.get("message"):
        out.print(document["message"], markup=False)
    if "duration_s" in document:
        out.print(f"Took {document['duration_s']:.1f}s")


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@app.command()
def delete(
    creator: Annotated[str, typer.Option("--creator", help="Creator whose videos are deleted.")],
    ids: IdsOpt = None,
    ids_file: IdsFileOpt = None,
    all_videos: Annotated[bool, typer.Option("--all", help="Every video of the creator.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be deleted; change nothing.")] = False,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, max=100_000, help="Videos per batch [default: BULKOPS_BATCH_SIZE, 1000]."
    )] = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete videos: rows, files, thumbnails and transcript chunks (tombstone first)."""
    _check_creator(creator)
    selection = _read_selection(ids, ids_file, all_videos, allow_all=True)
    store = _check_storage()
    _prepare_database()
    if selection is None:
        _check_all_not_empty(creator)
    video_ids, invalid_key = _launch_ids(creator, selection, store)
    parameters = {"creator_id": creator, "video_ids": video_ids, "all_videos": selection is None,
                  "dry_run": dry_run, "batch_size": batch_size, "invalid_ids_key": invalid_key}
    document = run_flow("bulk-delete", parameters, json_out=json_out, label="delete")
    finish_operation(document, json_out=json_out)


@app.command()
def export(
    creator: Annotated[str, typer.Option("--creator", help="Creator whose videos are exported.")],
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")],
    ids: IdsOpt = None,
    ids_file: IdsFileOpt = None,
    columns: Annotated[str | None, typer.Option("--columns", help="Comma-separated subset of columns.")] = None,
    status_filter: Annotated[str | None, typer.Option("--status", help="Only videos with this status.")] = None,
    created_after: Annotated[str | None, typer.Option("--created-after", help="ISO 8601 time (inclusive).")] = None,
    created_before: Annotated[str | None, typer.Option("--created-before", help="ISO 8601 time (exclusive).")] = None,
    no_formula_guard: Annotated[
        bool, typer.Option("--no-formula-guard", help="CSV: keep cells starting with = + - @ as they are.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=100, max=1_000_000, help="Rows per task.")] = 20_000,
    json_out: JsonOpt = False,
) -> None:
    """Export video metadata to one Parquet or CSV file in storage, with an expiring download link."""
    from videolib.export import ExportFilter, check_format, parse_timestamp, resolve_columns

    _check_creator(creator)
    try:
        check_format(fmt)
        cols = resolve_columns([c for c in columns.split(",") if c.strip()] if columns else None)
        flt = ExportFilter(
            status=status_filter,
            created_after=parse_timestamp(created_after, name="created-after") if created_after else None,
            created_before=parse_timestamp(created_before, name="created-before") if created_before else None,
        )
    except RequestError as exc:
        raise Refused(exc.code, exc.message) from exc
    selection = None
    if ids or ids_file:
        if status_filter or created_after or created_before:
            raise Refused("bad_selection", "give either ids or a filter (--status, --created-after/before), not both")
        selection = _read_selection(ids, ids_file, False, allow_all=False)
    store = _check_storage()
    _prepare_database()
    if selection is None:
        _check_export_not_empty(creator, flt)
    video_ids, invalid_key = _launch_ids(creator, selection, store)
    parameters = {
        "creator_id": creator, "format": fmt, "video_ids": video_ids, "invalid_ids_key": invalid_key, "columns": cols,
        "status": flt.status, "created_after": flt.created_after, "created_before": flt.created_before,
        "formula_guard": not no_formula_guard, "batch_size": batch_size,
    }
    document = run_flow("bulk-export", parameters, json_out=json_out, label="export")
    finish_operation(document, json_out=json_out)


def _check_export_not_empty(creator: str, flt) -> None:
    from sqlalchemy import func, select

    from videolib.db.engine import get_engine
    from videolib.db.models import Video

    with get_engine(_settings().database_url).connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(Video).where(Video.creator_id == creator, *flt.clauses())
        ).scalar_one()
    if count == 0:
        raise Refused("empty_selection", f"no videos of creator {creator!r} match: nothing to export")


EmbedderOpt = Annotated[
    str | None,
    typer.Option("--embedder", help="hashing (built in, lexical) or minilm (extra); default BULKOPS_EMBEDDER."),
]


def _check_embedder(name: str | None) -> str:
    """The embedder to use, refused (exit 2) when unknown or its extra is missing."""
    name = name or _settings().embedder
    if name not in ("hashing", "minilm"):
        raise Refused("unknown_embedder", f"--embedder must be 'hashing' or 'minilm', got {name[:40]!r}")
    from videolib.embedders import get_embedder

    try:
        get_embedder(name)
    except (ImportError, RuntimeError, ValueError) as exc:
        raise Refused("embedder_unavailable", str(exc)) from exc
    return name


@app.command()
def reprocess(
    creator: Annotated[str, typer.Option("--creator", help="Creator whose videos are reprocessed.")],
    ids: IdsOpt = None,
    ids_file: IdsFileOpt = None,
    all_videos: Annotated[bool, typer.Option("--all", help=(
        "Every video of the creator that has a transcript and that nobody else is processing; "
        "the others are counted as not selected, not as failures."))] = False,
    embedder: EmbedderOpt = None,
    chunk_target: Annotated[int, typer.Option("--chunk-target", help="Most words (or tokens) per chunk.")] = 80,
    chunk_overlap: Annotated[int, typer.Option("--chunk-overlap", help="Words (or tokens) of overlap.")] = 16,
    chunk_unit: Annotated[str, typer.Option("--chunk-unit", help="words or tokens.")] = "words",
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, max=100_000, help="Videos per batch [default: 1000 with hashing, 100 with minilm]."
    )] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-chunk transcripts and recompute embeddings (a video gets all new chunks or keeps its old ones)."""
    from videolib.chunking import chunking_config

    _check_creator(creator)
    chunking_config(chunk_target, chunk_overlap, chunk_unit)  # RequestError -> exit 2
    selection = _read_selection(ids, ids_file, all_videos, allow_all=True)
    name = _check_embedder(embedder)
    store = _check_storage()
    _prepare_database()
    if selection is None:
        _check_reprocessable(creator)
    video_ids, invalid_key = _launch_ids(creator, selection, store)
    parameters = {"creator_id": creator, "video_ids": video_ids, "all_videos": selection is None,
                  "invalid_ids_key": invalid_key, "embedder": name, "batch_size": batch_size,
                  "chunk_target": chunk_target, "chunk_overlap": chunk_overlap, "chunk_unit": chunk_unit}
    document = run_flow("bulk-reprocess", parameters, json_out=json_out, label="reprocess")
    finish_operation(document, json_out=json_out)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for in the transcripts.")],
    creator: Annotated[str, typer.Option("--creator", help="Creator whose chunks are searched.")],
    top: Annotated[int, typer.Option("--top", help="How many chunks to show (1-100).")] = 10,
    embedder: EmbedderOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The transcript chunks most similar to a query (cosine similarity of embeddings)."""
    from videolib.db.engine import get_engine
    from videolib.embedders import get_embedder
    from videolib.search import check_query, search_chunks

    _check_creator(creator)
    try:
        check_query(query, top)
    except RequestError as exc:
        raise Refused(exc.code, exc.message) from exc
    name = _check_embedder(embedder)
    _prepare_database()
    result = search_chunks(get_engine(_settings().database_url), get_embedder(name), creator_id=creator,
                           query=query, top=top)
    document = result.to_dict()
    if not result.searched_chunks:
        document["message"] = (
            f"no chunks of creator {creator!r} are embedded with {result.model}: "
            f"run `bulkops reprocess --creator {creator} --all --embedder {name}` first"
        )
    if json_out:
        emit(document)
        return
    out.print(f"[bold]{len(result.results)} best of {result.searched_chunks} chunks[/bold] "
              f"({result.model}) for {query!r}", markup=True)
    for rank, hit in enumerate(result.results, 1):
        when = "" if hit.start_s is None else f" @ {_clock(hit.start_s)}–{_clock(hit.end_s or hit.start_s)}"
        out.print(f"{rank:>2}. {hit.score:.3f}  {hit.title!r} (video {hit.video_id}, chunk {hit.chunk_index}{when})",
                  markup=False)
        text = hit.content if len(hit.content) <= 200 else hit.content[:197] + "..."
        out.print(f"    {text}", markup=False)
    if document.get("message"):
        out.print(document["message"], markup=False)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# ----------------------------------------------------------------------------- status


@app.command()
def status(
    operation_id: Annotated[str, typer.Argument(help="The operation id (its flow run id).")],
    watch: Annotated[bool, typer.Option("--watch", help="Follow the operation until it ends.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show an operation's status, progress and result (from its Prefect flow run)."""
    import uuid

    try:
        uuid.UUID(operation_id)
    except ValueError as exc:
        raise Refused("unknown_operation", f"{operation_id!r} is not an operation id (a flow run UUID)") from exc
    _prefect_env()
    from flows.status import FINAL, read_status

    document = read_status(operation_id)
    if document is None:
        raise Refused("unknown_operation", f"no bulkops operation with id {operation_id}")
    while watch and document["status"] not in FINAL:
        if not json_out:
            p = document["progress"]
            eta = f", ETA {document['eta_seconds']:.0f}s" if document["eta_seconds"] is not None else ""
            err.print(f"{document['status']}: {p['current']}/{p['total']} ({p['percent']:.0f}%){eta}")
        time.sleep(1.0)
        document = read_status(operation_id) or document
    if json_out:
        emit(document)
        return
    p = document["progress"]
    out.print(
        f"{document['operation']} {document['operation_id']} for {document['creator_id']}: "
        f"[bold]{document['status']}[/bold] — {p['current']}/{p['total']} ({p['percent']:.0f}%)"
    )
    if document["result"]:
        print_result(document["result"])


# ----------------------------------------------------------------------------- demo


@app.command()
def demo(
    videos: Annotated[int, typer.Option(min=10, max=100_000, help="Videos in the demo library.")] = 2000,
) -> None:
    """Seed a demo library and run the bulk operations on it, with summaries."""
    from videolib.db.engine import get_engine
    from videolib.db.migrate import upgrade
    from videolib.embedders import get_embedder
    from videolib.seed import seed_library
    from videolib.selection import iter_creator_video_ids

    settings = _settings()
    store = _check_storage()
    engine = get_engine(settings.database_url)
    upgrade(engine)
    import random

    seed_value = random.SystemRandom().randrange(2**31)
    out.rule("1. seed")
    report = seed_library(engine, store, get_embedder(settings.embedder), videos=videos, creators=3, seed=seed_value)
    out.print(f"Seeded {report.videos} videos, {report.chunks} chunks, {report.objects} objects "
              f"in {settings.database_url} and {store.url}")
    creator = next(iter(report.creators))
    mine = list(iter_creator_video_ids(engine, creator))
    targets = mine[: max(1, len(mine) // 2)]

    # Each step works on what the one before it left: the exports read what reprocess wrote.
    # Reprocess --all takes the videos that have a transcript and that no other pipeline is
    # processing; the others are counted as not selected (the run still completes).
    batch = max(10, len(targets) // 5)
    steps = [
        ("2. reprocess transcripts (re-chunk, re-embed)", "bulk-reprocess",
         {"creator_id": creator, "all_videos": True, "embedder": settings.embedder,
          "batch_size": max(10, len(mine) // 8)}, "reprocess"),
        ("4. export to Parquet", "bulk-export", {"creator_id": creator, "format": "parquet", "batch_size": 200}, "export"),
        ("5. export to CSV (formula guard on)", "bulk-export", {"creator_id": creator, "format": "csv", "batch_size": 200},
         "export"),
        ("6. delete (dry run)", "bulk-delete",
         {"creator_id": creator, "video_ids": targets, "dry_run": True, "batch_size": batch}, "delete (dry run)"),
        ("7. delete", "bulk-delete", {"creator_id": creator, "video_ids": targets, "batch_size": batch}, "delete"),
    ]
    document: dict = {}
    for title, flow_name, parameters, label in steps:
        out.rule(title)
        document = run_flow(flow_name, parameters, json_out=False, label=label)
        print_result(document)
        if document.get("status") != "completed":
            out.print(f"[red]{title} ended {document.get('status')}[/red]")
            raise typer.Exit(1)
        if document.get("output"):
            where = Path(store.root) / document["output"]["path"] if not store.is_s3 else document["output"]["path"]
            out.print(f"File: {where}")
        if flow_name == "bulk-reprocess":
            _demo_search(engine, creator, settings.embedder)
    out.print(f"\nDone. Check a run: bulkops status {document['operation_id']}")


def _demo_search(engine, creator: str, embedder_name: str) -> None:
    from videolib.embedders import get_embedder
    from videolib.search import search_chunks

    query = "what is a common mistake to avoid"
    out.rule(f"3. search: {query!r}")
    result = search_chunks(engine, get_embedder(embedder_name), creator_id=creator, query=query, top=3)
    for rank, hit in enumerate(result.results, 1):
        text = hit.content if len(hit.content) <= 160 else hit.content[:157] + "..."
        out.print(f"{rank}. {hit.score:.3f}  {hit.title!r}, chunk {hit.chunk_index}: {text}", markup=False)
    out.print(f"(searched {result.searched_chunks} chunks embedded with {result.model}; "
              f"try: bulkops search --creator {creator} \"your words\")", markup=False)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class _NullProgress:
    def __enter__(self):
        return lambda n: None

    def __exit__(self, *exc) -> None:
        return None


def _progress(enabled: bool, label: str, total: int):
    if not enabled:
        return _NullProgress()
    from rich.progress import Progress

    class _Ctx:
        def __enter__(self_inner):
            self_inner.p = Progress(console=err, transient=True)
            self_inner.p.__enter__()
            task = self_inner.p.add_task(label, total=total)
            return lambda n: self_inner.p.advance(task, n)

        def __exit__(self_inner, *exc):
            self_inner.p.__exit__(*exc)

    return _Ctx()


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    json_out = "--json" in args
    try:
        # With standalone_mode=False, click returns an Exit's code instead of exiting.
        code = app(args=args, prog_name="bulkops", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except _EXITS as exc:
        return exc.exit_code
    except _ABORTS:
        err.print("Aborted.")
        return 1
    except _NO_ARGS as exc:
        err.print(exc.ctx.get_help() if exc.ctx else "Usage: bulkops COMMAND --help", markup=False)
        return 2
    except _USAGE_ERRORS as exc:
        return _refuse("usage", exc.format_message(), json_out, ctx=exc.ctx)
    except Refused as exc:
        return _refuse(exc.code, exc.message, json_out)
    except RequestError as exc:
        return _refuse(exc.code, exc.message, json_out)
    except Exception as exc:  # noqa: BLE001 - the last resort: --json still gets one document
        known = _environment_error(exc)
        if known is not None:  # bad settings, database or Prefect server: nothing ran
            return _refuse(*known, json_out)
        # A bug of ours. The traceback is for a developer (stderr); --json still gets
        # its one document.
        import traceback

        traceback.print_exc(file=sys.stderr)
        if json_out:
            emit({"error": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
        else:
            err.print(f"Error: unexpected {type(exc).__name__}: {exc}", markup=False)
        return 1


def _environment_error(exc: BaseException) -> tuple[str, str] | None:
    """(code, message) for an error in the set-up rather than the request: settings that
    do not validate, a database that cannot be opened, a Prefect server out of reach.
    Recognised by class, without importing pydantic, SQLAlchemy or httpx for it."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    if "pydantic_core._pydantic_core.ValidationError" in names and getattr(exc, "title", "") == "Settings":
        problems = "; ".join(
            f"BULKOPS_{'_'.join(str(part) for part in e['loc']).upper()}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors()  # type: ignore[attr-defined]
        )
        return "bad_settings", f"invalid setting: {problems} (fix or unset the variable)"
    url = os.environ.get("BULKOPS_DATABASE_URL", "")
    if names & {"sqlalchemy.exc.ArgumentError", "sqlalchemy.exc.NoSuchModuleError"}:
        return "bad_database_url", (
            f"BULKOPS_DATABASE_URL={_redact(url)!r} is not a usable SQLAlchemy URL ({exc}); "
            "e.g. sqlite:///.data/bulkops.db or postgresql+psycopg://user:pass@host/db"
        )
    if names & {"sqlalchemy.exc.OperationalError", "sqlalchemy.exc.InterfaceError",
                 "videolib.db.engine.DatabaseUnavailable"}:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        where = _redact(url) if url else "the default database"
        return "database_unavailable", f"cannot open {where}: {reason} (check BULKOPS_DATABASE_URL and the server)"
    if "videolib.storage.StorageUnavailable" in names:
        return "storage_unavailable", f"{exc} (check BULKOPS_STORAGE_URL)"
    api = os.environ.get("PREFECT_API_URL", "")
    if "httpx.TransportError" in names or (isinstance(exc, RuntimeError) and "Failed to reach API" in str(exc)):
        return "prefect_unreachable", (
            f"cannot reach the Prefect server at {api or 'its configured address'}: {exc}; start it "
            "(prefect server start) or unset PREFECT_API_URL to run on a temporary local one"
        )
    return None


def _refuse(code: str, message: str, json_out: bool, ctx=None) -> int:
    if json_out:
        emit({"error": code, "message": message})
    else:
        if ctx is not None:
            err.print(ctx.get_usage(), markup=False)
        err.print(f"Error: {message}", markup=False)
    return 2


if __name__ == "__main__":
    sys.exit(main())
