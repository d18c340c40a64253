"""Per-item error reports: a CSV in storage that a person can open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

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


def render_error_report(errors: Iterable[ItemError]) -> bytes:
    """RFC 4180 CSV (UTF-8, header row, CRLF) of the errors, formula-guarded.

    Ids are echoed as the request gave them, so a hostile id stays harmless here.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["video_id", "error", "detail"])
    for err in errors:
        writer.writerow([guard_formula(err.video_id), guard_formula(err.error), guard_formula(err.detail)])
    return buffer.getvalue().encode("utf-8")


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
