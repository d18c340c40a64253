"""What an export is: its columns (the only names that ever reach SQL), formats, the
filter of a whole-library export, where its files go, what one task reads, and the CSV
formula guard."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from videolib.db.models import GONE_STATUSES, VIDEO_STATUSES, Video
from videolib.ids import RequestError
from videolib.report import FORMULA_PREFIXES

FORMATS = ("parquet", "csv")
TS = pa.timestamp("us", tz="UTC")

# name -> (SQL expression over ``v`` (videos), Arrow type). Only these names ever
# reach SQL: user input selects from this table, it is never interpolated.
EXPORT_COLUMNS: dict[str, tuple[str, pa.DataType]] = {
    "id": ("v.id", pa.string()),
    "title": ("v.title", pa.string()),
    "description": ("v.description", pa.string()),
    "status": ("v.status", pa.string()),
    "duration_s": ("v.duration_s", pa.float64()),
    "size_bytes": ("v.size_bytes", pa.int64()),
    "created_at": ("v.created_at", TS),
    "updated_at": ("v.updated_at", TS),
    "storage_key": ("v.storage_key", pa.string()),
    "thumbnail_key": ("v.thumbnail_key", pa.string()),
    "has_transcript": (
        "CASE WHEN v.transcript IS NOT NULL AND v.transcript <> '' THEN 1 ELSE 0 END",
        pa.bool_(),
    ),
    "chunk_count": ("(SELECT count(*) FROM video_chunks c WHERE c.video_id = v.id)", pa.int64()),
    "embedded_at": ("v.embedded_at", TS),
}
# PostgreSQL compresses and moves long transcripts out of the row (TOAST): comparing one
# with '' decompresses it, octet_length reads its stored size. 200k rows: see
# benchmarks/README.md (export).
_POSTGRES_COLUMNS = {"has_transcript": "CASE WHEN octet_length(v.transcript) > 0 THEN 1 ELSE 0 END"}
DEFAULT_COLUMNS = tuple(EXPORT_COLUMNS)
# What `status` may filter on: any status but the tombstones', which no export reads.
FILTER_STATUSES = tuple(s for s in VIDEO_STATUSES if s not in GONE_STATUSES)


def export_key(creator_id: str, operation_id: str, fmt: str) -> str:
    return f"exports/{creator_id}/{operation_id}.{fmt}"


def parts_prefix(creator_id: str, operation_id: str) -> str:
    return f"exports/{creator_id}/{operation_id}.parts"


def part_key(creator_id: str, operation_id: str, index: int, fmt: str = "parquet") -> str:
    """Batch ``index``'s part file: Arrow IPC for a Parquet export, CSV text for CSV."""
    return f"{parts_prefix(creator_id, operation_id)}/part-{index:05d}.{'csv' if fmt == 'csv' else 'arrow'}"


def check_format(fmt: object) -> str:
    if fmt not in FORMATS:
        raise RequestError("unknown_format", f"`format` must be 'parquet' or 'csv', got {str(fmt)[:40]!r}")
    return fmt  # type: ignore[return-value]


def resolve_columns(columns: Sequence[str] | None) -> list[str]:
    """The requested columns in the order given (default: all), or ``unknown_column``."""
    if not columns:
        return list(DEFAULT_COLUMNS)
    chosen: list[str] = []
    for name in columns:
        name = name.strip() if isinstance(name, str) else name
        if name not in EXPORT_COLUMNS:
            raise RequestError(
                "unknown_column",
                f"unknown column {str(name)[:40]!r}; choose from {', '.join(DEFAULT_COLUMNS)}",
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def schema_for(columns: Sequence[str]) -> pa.Schema:
    return pa.schema([(name, EXPORT_COLUMNS[name][1]) for name in columns])


@dataclass(frozen=True)
class ExportFilter:
    """Which of the creator's videos: optionally one status and a created_at window."""

    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in FILTER_STATUSES:
            raise RequestError(
                "bad_filter", f"`status` must be one of {', '.join(FILTER_STATUSES)}; got {str(self.status)[:40]!r}"
            )
        for name in ("created_after", "created_before"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        if self.created_after and self.created_before and self.created_after >= self.created_before:
            raise RequestError("bad_filter", "`created_after` must be earlier than `created_before`")

    def clauses(self):
        out = [Video.status.not_in(GONE_STATUSES)]
        if self.status:
            out.append(Video.status == self.status)
        if self.created_after:
            out.append(Video.created_at >= self.created_after)
        if self.created_before:
            out.append(Video.created_at < self.created_before)
        return out


def parse_timestamp(value: str, *, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise RequestError("bad_filter", f"`{name}` must be an ISO 8601 date or time, got {str(value)[:40]!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class ExportBatch:
    """One task's share: explicit ids, or an inclusive id range under the filter
    (``hi`` None: no upper bound)."""

    ids: list[str] | None = None
    lo: str | None = None
    hi: str | None = None
    rows: int = 0
    # The creator holds most of the table's videos (so most ids in any range): a range
    # batch then counts chunks in one walk of the chunk index over its id range, where a
    # probe per video costs more (see ``DENSE_SHARE``).
    dense: bool = False
    # A manifest's batch: a range of its staged ids (videolib/staging.py), read by the task.
    staged: dict | None = None


def guard_formulas(batch: pa.RecordBatch) -> pa.RecordBatch:
    """OWASP CSV injection guard: prefix ``'`` to string cells a spreadsheet would run."""
    pattern = "^[" + "".join("\\" + c if c in "-+" else c for c in FORMULA_PREFIXES) + "]"
    arrays = []
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            risky = pc.match_substring_regex(column, pattern)
            if pc.any(risky).as_py():  # most batches have none: no copy of the column
                column = pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)
