"""Writing an export: part files (Arrow IPC for Parquet, guarded CSV rows for CSV) and
the single writer that streams them, in order, into the file the user downloads,
published under its name only when complete."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from videolib.export.spec import check_format, guard_formulas
from videolib.storage import ObjectStore

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 64 * 1024


def write_part(store: ObjectStore, key: str, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> int:
    """Write record batches as one Arrow IPC part file; returns its row count."""
    rows = 0
    with store.open(key, "wb") as raw, ipc.new_stream(raw, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def read_part(store: ObjectStore, key: str) -> Iterator[pa.RecordBatch]:
    with store.open(key, "rb") as raw, ipc.open_stream(raw) as reader:
        yield from reader


# Rows encoded at a time. A driver's record batch can be 16 MB (ADBC PostgreSQL), and
# encoding one whole held Polars' copy of it, the CSV buffer and its bytes at once, in
# every task running: a 200k-row PostgreSQL export peaked at +382 MB over its imports.
CSV_ENCODE_ROWS = 8192


def write_csv_part(store: ObjectStore, key: str, batches: Iterator[pa.RecordBatch], *, formula_guard: bool) -> int:
    """Write record batches as CSV rows (no header; the writer adds it); returns the row count."""
    rows = 0
    with store.open(key, "wb") as raw:
        for batch in batches:
            for piece in encode_csv_pieces(batch, formula_guard=formula_guard):
                raw.write(piece)
            rows += batch.num_rows
    return rows


def encode_csv_pieces(batch: pa.RecordBatch, *, formula_guard: bool) -> Iterator[bytes]:
    """``encode_csv`` of the batch, ``CSV_ENCODE_ROWS`` rows at a time."""
    for offset in range(0, batch.num_rows, CSV_ENCODE_ROWS):
        yield encode_csv(batch.slice(offset, CSV_ENCODE_ROWS), formula_guard=formula_guard)


CSV_COPY_BYTES = 1 << 20


def copy_csv_part(store: ObjectStore, key: str) -> Iterator[bytes]:
    """A CSV part's bytes, a MiB at a time."""
    with store.open(key, "rb") as raw:
        while chunk := raw.read(CSV_COPY_BYTES):
            yield chunk


def csv_header(names: Sequence[str]) -> bytes:
    return (",".join(names) + "\r\n").encode("utf-8")


def encode_csv(batch: pa.RecordBatch, *, formula_guard: bool) -> bytes:
    """RFC 4180 CSV rows (no header: ``csv_header``) of a record batch: UTF-8, CRLF, quotes only where needed, NULL an
    empty field and an empty string ``""``, timestamps ISO 8601 UTC."""
    import polars as pl

    if formula_guard:
        batch = guard_formulas(batch)
    buffer = io.BytesIO()
    pl.from_arrow(batch).write_csv(
        buffer, include_header=False, quote_style="necessary",
        line_terminator="\r\n", null_value="", datetime_format="%Y-%m-%dT%H:%M:%S%.6fZ",
    )
    return buffer.getvalue()


@dataclass
class ExportWriter:
    """The single writer of an export: takes record batches in order, writes one file."""

    store: ObjectStore
    key: str
    fmt: str
    schema: pa.Schema
    formula_guard: bool = True
    rows: int = 0
    _raw: object = None
    _staging: str = ""
    _parquet: pq.ParquetWriter | None = None
    _pending: list[pa.RecordBatch] = field(default_factory=list)
    _pending_rows: int = 0
    _header_written: bool = False

    def open(self) -> ExportWriter:
        check_format(self.fmt)
        # Written under a staging name and published whole by close(): a reader never
        # finds half an export under its name, even after a SIGKILL.
        self._staging = self.store.staging_key(self.key)
        self._raw = self.store.open(self._staging, "wb")
        if self.fmt == "parquet":
            self._parquet = pq.ParquetWriter(self._raw, self.schema, compression="zstd")
        return self

    __enter__ = open

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        if self._parquet is not None:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            if self._pending_rows >= ROW_GROUP_ROWS:
                self._flush_row_group()
        else:
            self._write_csv(batch)

    def _flush_row_group(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, schema=self.schema)
            self._parquet.write_table(table, row_group_size=max(table.num_rows, 1))
            self._pending, self._pending_rows = [], 0

    def _write_csv(self, batch: pa.RecordBatch) -> None:
        self._write_csv_header()
        for piece in encode_csv_pieces(batch, formula_guard=self.formula_guard):
            self._raw.write(piece)

    def write_csv_rows(self, chunks: Iterable[bytes], rows: int) -> None:
        """Append ``rows`` rows already encoded as CSV by ``encode_csv`` (a CSV part)."""
        if self.fmt != "csv":
            raise ValueError("encoded CSV rows go into a CSV export only")
        self._write_csv_header()
        for chunk in chunks:
            self._raw.write(chunk)
        self.rows += rows

    def _write_csv_header(self) -> None:
        if not self._header_written:
            self._raw.write(csv_header(self.schema.names))
            self._header_written = True

    def close(self) -> None:
        """Finish the file (Parquet footer, or a CSV header for an empty export) and
        publish it under its name; on any failure nothing appears there."""
        try:
            if self._parquet is not None:
                self._flush_row_group()
                self._parquet.close()
                self._parquet = None
            else:
                self._write_csv_header()  # an empty export is a header
            self._raw.close()
            self.store.publish(self._staging, self.key)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the incomplete file: nobody may download half an export."""
        if self._parquet is not None:
            try:  # or its finaliser writes to the closed stream later
                self._parquet.close()
            except Exception:
                log.debug("closing an aborted Parquet writer failed", exc_info=True)
            self._parquet = None
        self.store.abandon(self._raw, self._staging)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
