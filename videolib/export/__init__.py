"""Export a creator's video metadata to one Parquet or CSV file in storage, streaming.

Rows leave the database as Arrow record batches (ADBC drivers for SQLite and
PostgreSQL), one batch range per task, and each task writes its rows as a part file.
One writer then streams the parts, in order, into the single file the user downloads.
Memory holds one part's record batch and one row group at a time, whatever the
library's size.

- Parquet: the parts are Arrow IPC (cheap: no compression, no encoding) and the writer
  encodes them once, into a pyarrow ``ParquetWriter`` (zstd, row groups of ~64k rows).
  Encoding every part as Parquet and merging would encode twice: Parquet row groups
  cannot be appended as bytes.
- CSV: each task encodes its own part as CSV (formula guard applied, no header), so
  the encoding runs in parallel with the reads; the writer writes the header and
  appends the parts' bytes. CSV concatenates.

Why parts + one writer: the database reads run in parallel, the file's order does not
depend on which task finished first, and the user downloads one file.

The package: ``spec`` (columns, formats, filter, formula guard), ``plan`` (counts, id
ranges, quota, leftovers), ``readers`` (SQL to Arrow; ``sqlite_arrow`` the SQLite fast
path) and ``writers`` (parts, and the one writer of the file).
"""

from videolib.export.plan import (
    DENSE_SHARE,
    count_selected,
    estimate_bytes,
    export_leftovers,
    ids_in_range,
    leftover_operation,
    plan_export_batches,
    resolve_export_ids,
    small_cache_connection,
    used_export_bytes,
)
from videolib.export.readers import (
    PG_READERS,
    BadValueError,
    close_idle_pg_connections,
    conform,
    held_readers,
    pg_connection,
    read_batch,
    select_list,
    sqlite_readers,
)
from videolib.export.spec import (
    DEFAULT_COLUMNS,
    EXPORT_COLUMNS,
    FILTER_STATUSES,
    FORMATS,
    TS,
    ExportBatch,
    ExportFilter,
    check_format,
    export_key,
    guard_formulas,
    part_key,
    parse_timestamp,
    parts_prefix,
    resolve_columns,
    schema_for,
)
from videolib.export.writers import (
    CSV_ENCODE_ROWS,
    ROW_GROUP_ROWS,
    ExportWriter,
    copy_csv_part,
    csv_header,
    encode_csv,
    encode_csv_pieces,
    read_part,
    write_csv_part,
    write_part,
)

__all__ = [
    "CSV_ENCODE_ROWS", "DEFAULT_COLUMNS", "DENSE_SHARE", "EXPORT_COLUMNS", "FILTER_STATUSES", "FORMATS",
    "PG_READERS", "ROW_GROUP_ROWS", "TS", "BadValueError", "ExportBatch", "ExportFilter", "ExportWriter",
    "check_format", "close_idle_pg_connections", "conform", "copy_csv_part", "count_selected", "csv_header",
    "encode_csv", "encode_csv_pieces", "estimate_bytes", "export_key", "export_leftovers", "guard_formulas",
    "held_readers", "ids_in_range", "leftover_operation", "parse_timestamp", "part_key", "parts_prefix",
    "pg_connection", "plan_export_batches", "read_batch", "read_part", "resolve_columns", "resolve_export_ids",
    "schema_for", "select_list", "small_cache_connection", "sqlite_readers", "used_export_bytes",
    "write_csv_part", "write_part",
]
