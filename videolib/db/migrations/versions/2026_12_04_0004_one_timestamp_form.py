"""one timestamp form per database: canonical UTC text on SQLite, timestamptz on PostgreSQL

Until this revision reprocess wrote ``embedded_at`` and ``updated_at`` on SQLite as
``2026-12-04 15:26:43.893902+00:00`` (an aware datetime handed to the driver as is),
while every other writer stored naive UTC text ``2026-12-04 15:26:43.893902``. Text
compares as text there, and exports could not read the first form at all.

- SQLite: every timestamp that is not in the canonical form
  (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC; ``videolib/db/types.py``) is parsed (any
  offset, a ``T``, any number of fractional digits) and rewritten in it. A value that
  is no timestamp at all is left as it is (an export reports it as ``bad_value``) and
  counted in the log.
- PostgreSQL: the columns are ``timestamp with time zone`` since revision 0001; a
  column found without a zone (a schema made by another tool) is converted, its
  values taken as UTC.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from videolib.db.types import SQLITE_GLOB, parse_timestamp, sqlite_text

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

COLUMNS = ("created_at", "updated_at", "embedded_at")
PAGE = 5000


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        for column in COLUMNS:
            _rewrite_sqlite(conn, column)
    elif conn.dialect.name == "postgresql":
        for column in COLUMNS:
            data_type = conn.execute(
                sa.text("SELECT data_type FROM information_schema.columns "
                        "WHERE table_schema = current_schema() AND table_name = 'videos' AND column_name = :c"),
                {"c": column},
            ).scalar()
            if data_type == "timestamp without time zone":
                op.execute(f"ALTER TABLE videos ALTER COLUMN {column} TYPE timestamptz USING {column} AT TIME ZONE 'UTC'")


def _rewrite_sqlite(conn, column: str) -> None:
    # Column names come from COLUMNS above, never from data.
    odd = sa.text(
        f"SELECT rowid, {column} FROM videos WHERE {column} IS NOT NULL AND rowid > :after "
        f"AND (typeof({column}) <> 'text' OR {column} NOT GLOB '{SQLITE_GLOB}') ORDER BY rowid LIMIT {PAGE}"
    )
    update = sa.text(f"UPDATE videos SET {column} = :value WHERE rowid = :rowid")
    after, rewritten, unreadable = 0, 0, 0
    while True:
        rows = conn.execute(odd, {"after": after}).all()
        if not rows:
            break
        after = rows[-1][0]
        changes = []
        for rowid, value in rows:
            try:
                changes.append({"rowid": rowid, "value": sqlite_text(parse_timestamp(str(value)))})
            except ValueError:
                unreadable += 1
        if changes:
            conn.execute(update, changes)
            rewritten += len(changes)
    if rewritten or unreadable:
        log.info("videos.%s: %s timestamps rewritten as canonical UTC text, %s unreadable left as they are",
                 column, rewritten, unreadable)


def downgrade() -> None:
    # The canonical form is what every earlier revision's readers expect; nothing to undo.
    pass
