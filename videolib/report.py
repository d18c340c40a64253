"""Per-item error reports: a CSV in storage that a person can open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from collections.abc import Iterable, Sequence

from videolib.ids import normalize_video_id
from videolib.operation import BATCH_ERROR, DATABASE_ERROR, STORAGE_ERROR, ItemError

# What a retry takes again (CONTRACT.md): failures of the moment, not of the item.
RETRYABLE = frozenset({"busy", STORAGE_ERROR, DATABASE_ERROR, BATCH_ERROR, "reprocess_error"})

# OWASP CSV injection: a spreadsheet evaluates a cell that starts with one of these.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def guard_formula(value: str) -> str:
    """Prefix ``'`` to a cell a spreadsheet would read as a formula."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def report_key(operation_id: str) -> str:
    return f"reports/{operation_id}.csv"


HEADER = ["video_id", "error", "detail"]
SPOOL_MEMORY = 4 * 1024 * 1024  # report bytes a run keeps in memory before its spool goes to disk


def _rows(errors: Iterable[ItemError], *, header: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    if header:
        writer.writerow(HEADER)
    for err in errors:
        writer.writerow([guard_formula(err.video_id), guard_formula(err.error), guard_formula(err.detail)])
    return buffer.getvalue().encode("utf-8")


def render_error_report(errors: Iterable[ItemError]) -> bytes:
    """RFC 4180 CSV (UTF-8, header row, CRLF) of the errors, formula-guarded.

    Ids are echoed as the request gave them, so a hostile id stays harmless here.
    """
    return _rows(errors, header=True)


class ErrorSpool:
    """The rows of a run's error report (:func:`render_error_report`'s form), written as
    the errors come: in memory up to ``SPOOL_MEMORY`` bytes, then in a temporary file.
    A run of millions of failed items (a manifest of foreign ids) holds them on disk,
    about 80 bytes each, and streams them to storage at the end."""

    def __init__(self, memory: int = SPOOL_MEMORY) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=memory, mode="w+b", prefix="bulkops-report-")
        self.rows = 0

    def add(self, errors: Sequence[ItemError]) -> None:
        self._file.write(_rows(errors, header=False))
        self.rows += len(errors)

    def write_to(self, store, key: str) -> None:
        """The whole report at ``key``: the header, then every row, streamed; the object
        appears under ``key`` only when complete (``store.staging_key``)."""
        staging = store.staging_key(key)
        raw = store.open(staging, "wb")
        try:
            raw.write(_rows((), header=True))
            self._file.seek(0)
            shutil.copyfileobj(self._file, raw, 1024 * 1024)
            self._file.seek(0, io.SEEK_END)
        except BaseException:
            store.abandon(raw, staging)
            raise
        raw.close()
        store.publish(staging, key)

    def close(self) -> None:
        self._file.close()


def read_retryable_ids(store, operation_id: str) -> list[str]:
    """The distinct ids an operation's report lists with a retryable error, in report
    order (streamed: a report of millions of rows is read, not loaded)."""
    ids: dict[str, None] = {}
    try:
        raw = store.open(report_key(operation_id), "rb")
    except FileNotFoundError:
        return []
    with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        reader = csv.reader(text)
        next(reader, None)  # the header
        for row in reader:
            if len(row) >= 2 and row[1] in RETRYABLE:
                vid = normalize_video_id(row[0])
                if vid is not None:
                    ids[vid] = None
    return list(ids)
