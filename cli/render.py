"""What a person sees: progress bars on stderr, result summaries and tables on stdout."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any

from cli.app import err, out


class BatchWarnings(logging.Filter):
    """Per-batch warnings of the run (Prefect's ``prefect.task_runs`` loggers) kept off the
    terminal while the bar runs: counted, the first few kept for the summary, and shown
    as they come only with ``--verbose``. Prefect still stores every line with the run
    (its API log handler is not filtered): the Prefect UI shows them all."""

    KEEP = 5

    def __init__(self, *, verbose: bool, on_count=None) -> None:
        super().__init__()
        self.verbose, self.on_count = verbose, on_count
        self.count = 0
        self.first: list[str] = []
        self._handlers: list[logging.Handler] = []
        self._last: logging.LogRecord | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect.task_runs") or record.levelno < logging.WARNING:
            return True
        if record is self._last:  # the same record at another console handler
            return self.verbose
        self._last = record
        self.count += 1
        if len(self.first) < self.KEEP:
            self.first.append(record.getMessage())
        if self.on_count is not None:
            self.on_count(self.count)
        return self.verbose

    def attach(self) -> None:
        """On the console handlers Prefect set up (they exist once the run started)."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler not in self._handlers:
                handler.addFilter(self)
                self._handlers.append(handler)

    def detach(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self)
        self._handlers.clear()

    def summary(self) -> str | None:
        if not self.count:
            return None
        lines = [f"{self.count} warning{'s' if self.count != 1 else ''} from the batches"
                 + ("" if self.verbose else " (all of them in the run's logs in the Prefect UI, or with --verbose)")
                 + ":"]
        lines += [f"  {line}" for line in self.first]
        if self.count > len(self.first):
            lines.append(f"  … and {self.count - len(self.first)} more")
        return "\n".join(lines)


class OperationBar:
    """A Rich progress bar driven by an operation's progress events (stderr); plain lines
    every few seconds when stderr is not a terminal (a log file, CI). Warnings of the
    batches are counted on it (:class:`BatchWarnings`), not printed through it."""

    def __init__(self, *, enabled: bool, label: str) -> None:
        self.enabled = enabled and err.is_terminal or (enabled and os.environ.get("BULKOPS_PROGRESS") == "1")
        self.plain = enabled and not self.enabled
        self.label = label
        self._last_plain = 0.0
        self._progress = None
        self._task = None
        self.warnings = 0
        self._batches = ""

    def __enter__(self) -> OperationBar:
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

    def count_warnings(self, count: int) -> None:
        self.warnings = count
        if self._progress is not None:
            self._progress.update(self._task, batches=self._fields())

    def _fields(self) -> str:
        warned = f" · {self.warnings} warning{'s' if self.warnings != 1 else ''}" if self.warnings else ""
        return self._batches + warned

    def note(self, text: str) -> None:
        """A line for the user on stderr, above the bar (shown with or without one)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            err.print(text, markup=False, highlight=False, soft_wrap=True)

    def update(self, event) -> None:
        if event.result is not None:
            return
        # (a run followed through `bulkops serve` knows no batches: ``batches`` None)
        self._batches = f"{event.batches_done}/{event.batches} batches" if event.batches is not None else ""
        if self._progress is not None:
            self._progress.update(self._task, total=event.total, completed=event.current, batches=self._fields())
        elif self.plain:
            now = time.monotonic()
            if event.batches_done in (0, 1, event.batches) or now - self._last_plain >= 5.0:
                self._last_plain = now
                eta = "" if event.eta_seconds is None else f", ETA {event.eta_seconds:.0f}s"
                batches = f", {self._batches}" if self._batches else ""
                unit = "items" if self.label.startswith("cleanup") else "videos"
                err.print(f"{self.label}: {event.current}/{event.total} {unit}{batches}{eta}")


@contextmanager
def counting_bar(enabled: bool, label: str, total: int):
    """A transient bar for plain counting work (seeding); yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def print_result(document: dict[str, Any]) -> None:
    from rich.table import Table

    from service.status import describe_not_selected

    status = document.get("status", "failed")
    colour = {"completed": "green", "partial": "yellow", "cancelled": "yellow"}.get(status, "red")
    title = f"{document.get('operation', 'operation')} {'(dry run) ' if document.get('dry_run') else ''}"
    out.print(f"[bold]{title}[/bold][{colour}]{status}[/{colour}]  operation {document.get('operation_id', '-')}")
    table = Table(show_header=True, header_style="bold")
    for column in ("requested", "succeeded", "failed", "skipped"):
        table.add_column(column, justify="right")
    table.add_row(*(str(document.get(c, 0)) for c in ("requested", "succeeded", "failed", "skipped")))
    out.print(table)
    if document.get("manifest"):
        m = document["manifest"]
        out.print(f"Ids from manifest {m['key']} ({m['lines']} lines, sha256 {m['sha256'][:12]}…)", markup=False)
    if document.get("not_selected") and any(document["not_selected"].values()):
        out.print(f"Not selected (left out on purpose, not failures): {describe_not_selected(document['not_selected'])}",
                  markup=False)
    if document.get("cleanup") is not None:
        _print_cleanup(document)
    elif document.get("plan"):
        plan = document["plan"]
        out.print(
            f"Would delete {plan.get('videos', 0)} videos: {plan.get('objects', 0)} objects, "
            f"{human_bytes(plan.get('bytes', 0))}. Nothing was changed."
        )
    _print_errors(document.get("errors") or [], failed=document.get("failed"),
                  truncated=bool(document.get("errors_truncated")))
    output = document.get("output")
    if output:
        out.print(
            f"Exported {output['rows']} rows to {output['path']} ({human_bytes(output['bytes'])}, {output['format']})"
        )
        out.print(f"Download (until {output['expires_at']}): {output['url']}", markup=False, soft_wrap=True)
    if document.get("report_path"):
        out.print(f"Per-item report: {document['report_path']} (in storage)")
    if document.get("trashed"):
        out.print(f"Trashed {document['trashed']} videos (kept, hidden): restorable until {document.get('purge_after')} "
                  f"with `bulkops restore --creator {document.get('creator_id')} --operation "
                  f"{document.get('operation_id')}`; cleanup purges them after that", markup=False)
    verified = document.get("verified")
    if verified and verified.get("videos"):
        out.print(f"Verified gone: {verified['videos']} videos, read back after the delete "
                  f"({verified.get('objects_absent', 0)} objects absent from storage, "
                  f"{verified.get('rows_absent', 0)} rows and their chunks absent from the database)")
    if document.get("manifest_path"):
        out.print(f"Audit manifest: {document['manifest_path']} (in storage)")
    if document.get("message"):
        out.print(document["message"], markup=False)
    if "duration_s" in document:
        out.print(f"Took {document['duration_s']:.1f}s")


_CLEANUP_WORDS = {
    "tombstones_finished": "videos left 'deleting' by a crashed delete, finished",
    "claims_released": "reprocess claims of ended runs, released",
    "exports_expired": "expired export files, removed", "parts_removed": "leftover parts and temporary files, removed",
    "reports_expired": "old reports and audit manifests, removed", "orphans_found": "orphaned videos found",
    "orphans_deleted": "orphaned videos, removed", "runs_archived": "runs archived to storage (they had no record)",
    "runs_pruned": "old runs removed from Prefect (their records stay)",
}


def _print_cleanup(document: dict[str, Any]) -> None:
    """What a cleanup did (or, on a dry run, would do), kind by kind."""
    counts = document["cleanup"]
    would = document.get("dry_run")
    lines = [f"  {n:>8}  {_CLEANUP_WORDS[name]}" for name, n in counts.items() if n and name in _CLEANUP_WORDS]
    out.print(("Would do:" if would else "Done:") if lines else "Nothing to clean.", markup=False)
    for line in lines:
        out.print(line, markup=False)
    if counts.get("orphans_found") and not counts.get("orphans_deleted") and not would:
        out.print("Orphans are kept: set BULKOPS_CLEANUP_DELETE_ORPHANS=true to remove them.", markup=False)
    if would and document.get("plan"):
        plan = document["plan"]
        out.print(f"{plan.get('objects', 0)} objects, {human_bytes(plan.get('bytes', 0))}. Nothing was changed.")


def _print_errors(errors: list[dict[str, Any]], *, failed: int | None = None, truncated: bool = False) -> None:
    """The failed items by kind, the first ten (past 10,000 the document lists the first)."""
    if not errors:
        return
    total = failed if truncated and failed else len(errors)
    kinds = ", ".join(f"{n} {name}" for name, n in sorted(Counter(item["error"] for item in errors).items()))
    out.print(f"Failed items: {total} (the result lists the first {len(errors)}: {kinds})" if truncated
              else f"Failed items: {kinds}")
    for item in errors[:10]:
        detail = item["detail"] if len(item["detail"]) <= 160 else item["detail"][:157] + "..."
        out.print(f"  {item['video_id']!r}: {item['error']} — {detail}", markup=False)
    if total > 10:
        out.print(f"  … and {total - 10} more")


def print_status(document: dict[str, Any]) -> None:
    p = document["progress"]
    out.print(
        f"{document['operation']} {document['operation_id']} for {document['creator_id']}: "
        f"[bold]{document['status']}[/bold] — {p['current']}/{p['total']} ({p['percent']:.0f}%)"
    )
    if document["result"]:
        print_result(document["result"])
    hook = document.get("webhook")
    if hook:
        last = f", last answer HTTP {hook['last_status']}" if hook["last_status"] is not None else ""
        out.print(f"Webhook: {'delivered' if hook['delivered'] else 'not delivered yet'} "
                  f"({hook['attempts']} attempt{'s' if hook['attempts'] != 1 else ''}{last})", markup=False)


def print_operations(page: dict[str, Any]) -> None:
    """A page of operations (``bulkops list``), newest first."""
    from rich.table import Table

    if not page["items"]:
        out.print("No operations.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("operation id", "operation", "creator", "status", "done", "failed"):
        table.add_column(column, justify="right" if column in ("done", "failed") else "left")
    for item in page["items"]:
        result, progress = item.get("result") or {}, item["progress"]
        table.add_row(item["operation_id"], item["operation"], str(item["creator_id"]), item["status"],
                      f"{progress['current']}/{progress['total']}", str(result.get("failed", "")))
    out.print(table)
    if page.get("next_cursor"):
        out.print(f"More: bulkops list --cursor {page['next_cursor']}", markup=False)


def print_search(document: dict[str, Any], query: str) -> None:
    results = document["results"]
    out.print(f"[bold]{len(results)} best of {document['searched_chunks']} chunks[/bold] "
              f"({document['model']}) for {query!r}", markup=True)
    for rank, hit in enumerate(results, 1):
        when = "" if hit["start_s"] is None else f" @ {clock(hit['start_s'])}–{clock(hit['end_s'] or hit['start_s'])}"
        out.print(f"{rank:>2}. {hit['score']:.3f}  {hit['title']!r} (video {hit['video_id']}, "
                  f"chunk {hit['chunk_index']}{when})", markup=False)
        text = hit["content"] if len(hit["content"]) <= 200 else hit["content"][:197] + "..."
        out.print(f"    {text}", markup=False)
    if document.get("message"):
        out.print(document["message"], markup=False)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
