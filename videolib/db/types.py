"""One timestamp convention for every database, every writer and every reader.

Every timestamp column holds UTC:

- **PostgreSQL**: ``timestamp with time zone`` (the server keeps an instant; any
  offset a writer sends is converted on input).
- **SQLite** (no date type of its own): text in one fixed form, naive UTC with six
  fractional digits, ``YYYY-MM-DD HH:MM:SS.ffffff`` (26 characters). One form matters
  there: SQLite compares the text (filters, the reprocess lease), so
  ``2026-01-01 10:00:00+02:00`` and ``2026-01-01T08:00:00Z`` would sort apart from the
  same instant written canonically.

:class:`UTCDateTime` is the column type that enforces this on every SQLAlchemy write
(ORM, Core, bulk inserts): aware datetimes of any zone are converted to UTC, naive
ones are taken as UTC. Writers that bypass SQLAlchemy's types (raw DBAPI statements)
use :func:`bind_timestamp`. Reads accept what older or foreign writers left
(:func:`parse_timestamp`: with or without an offset, a ``T`` or a space, any number of
fractional digits) and always give aware UTC datetimes. Migration 0004 rewrites rows
stored another way.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# The canonical SQLite text as a GLOB pattern (migration 0004 looks for anything else).
SQLITE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"

# ISO 8601 as writers actually write it: date, optional time (hours; minutes; seconds;
# a fraction of any length, '.' or ','), 'T', 't' or a space between, an optional zone
# ('Z' or an offset of hours, hhmm or hh:mm). Anything else is not a timestamp.
_TIMESTAMP_RE = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?)?"
    r"\s*(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?\s*$"
)


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from a stored timestamp text; ``ValueError`` if it is none.

    Without an offset the text is UTC (what SQLAlchemy has always written on SQLite).
    Fractions finer than a microsecond are rounded to the nearest one, as PostgreSQL
    does on input. Results outside years 1-9999 (an offset pushing 9999-12-31 past the
    end) are refused.
    """
    match = _TIMESTAMP_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a timestamp: {str(text)[:64]!r}")
    year, month, day, hour, minute, second, fraction, _zulu, sign, off_h, off_m = match.groups()
    nanos = int((fraction or "0").ljust(9, "0"))
    try:
        value = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                         tzinfo=UTC) + timedelta(microseconds=round(nanos / 1000))
        if sign:
            offset = timedelta(hours=int(off_h), minutes=int(off_m or 0))
            if offset >= timedelta(hours=24):
                raise ValueError("offset out of range")
            value = value - offset if sign == "+" else value + offset
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid timestamp: {text[:64]!r} ({exc})") from None
    return value


def to_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (a naive one is taken as UTC)."""
    if not isinstance(value, datetime):
        raise TypeError(f"a timestamp must be a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sqlite_text(value: datetime) -> str:
    """The canonical SQLite text of ``value``: naive UTC, six fractional digits (years
    below 1000 zero-padded too, which the C library's ``%Y`` does not do)."""
    v = to_utc(value)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d} "
            f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}")


class _SqliteUTCText(sqlite.DATETIME):
    """SQLite's DATETIME column (same DDL) written and read in the one canonical form."""

    def bind_processor(self, dialect: Dialect):
        def process(value: Any) -> str | None:
            return None if value is None else sqlite_text(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: Any):
        def process(value: Any) -> datetime | None:
            if value is None:
                return None
            if isinstance(value, datetime):
                return to_utc(value)
            return parse_timestamp(str(value))

        return process


class UTCDateTime(TypeDecorator):
    """A timestamp column that stores UTC in the one form of each database (module doc).

    Binds any aware datetime (converted to UTC) or a naive one (taken as UTC); returns
    aware UTC datetimes on every database.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SqliteUTCText())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else to_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else to_utc(value)


def bind_timestamp(dialect: Dialect, value: datetime) -> Any:
    """What a raw DBAPI statement on ``dialect`` must send for ``value`` (SQLite: the
    canonical text; PostgreSQL: the aware UTC datetime)."""
    return sqlite_text(value) if dialect.name == "sqlite" else to_utc(value)
