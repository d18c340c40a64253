"""One timestamp convention: every writer stores UTC in one form per database, every
export reads what any writer left, and what cannot be read is a per-item ``bad_value``.

Runs on SQLite and on a real PostgreSQL server; flows run under Prefect's test harness.
The bug this guards: reprocess wrote ``embedded_at`` as ``...+00:00`` text on SQLite and
the next export failed every row.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta, timezone

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, text, update

from videolib.db.models import Video
from videolib.db.types import SQLITE_GLOB, UTCDateTime, bind_timestamp, parse_timestamp, sqlite_text

pytestmark = pytest.mark.usefixtures("prefect_harness")

TS_COLUMNS = ("created_at", "updated_at", "embedded_at")
OP = "22222222-2222-4222-8222-222222222222"


# ----------------------------------------------------------------------------- helpers


def _export(creator_id: str, fmt: str, **params) -> dict:
    from flows.bulk_export import bulk_export

    state = bulk_export(creator_id=creator_id, format=fmt, return_state=True, **params)
    from service.status import read_status

    return read_status(str(state.state_details.flow_run_id))["result"]


def _exported(lib, doc) -> dict[str, dict[str, object]]:
    """``{id: {column: value}}`` of an export file; CSV timestamps stay text."""
    data = lib.store.get(doc["output"]["path"])
    if doc["output"]["format"] == "parquet":
        return {row["id"]: row for row in pq.read_table(io.BytesIO(data)).to_pylist()}
    return {row["id"]: row for row in csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))}


def _csv_text(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _db_values(lib, creator_id: str) -> dict[str, tuple]:
    with lib.engine.connect() as conn:
        rows = conn.execute(select(Video.id, Video.created_at, Video.updated_at, Video.embedded_at)
                            .where(Video.creator_id == creator_id, Video.status != "deleting"))
        return {r.id: (r.created_at, r.updated_at, r.embedded_at) for r in rows}


def assert_one_form(lib) -> None:
    """Every stored timestamp is in its database's one form."""
    with lib.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            for column in TS_COLUMNS:
                odd = conn.execute(text(
                    f"SELECT {column} FROM videos WHERE {column} IS NOT NULL "
                    f"AND (typeof({column}) <> 'text' OR {column} NOT GLOB '{SQLITE_GLOB}') LIMIT 3")).scalars().all()
                assert odd == [], f"videos.{column} holds timestamps in another form: {odd}"
        else:
            types = dict(conn.execute(text(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'videos' AND column_name IN ('created_at', 'updated_at', 'embedded_at')")).all())
            assert set(types.values()) == {"timestamp with time zone"}, types


def assert_exports_match_database(lib, creator_id: str) -> None:
    """Both formats export every video, completed, with the database's instants in UTC."""
    expected = _db_values(lib, creator_id)
    for fmt in ("parquet", "csv"):
        doc = _export(creator_id, fmt)
        assert doc["status"] == "completed", (fmt, doc["errors"][:3], doc.get("message"))
        rows = _exported(lib, doc)
        assert set(rows) == set(expected)
        for vid, values in expected.items():
            for column, value in zip(TS_COLUMNS, values, strict=True):
                got = rows[vid][column]
                if fmt == "parquet":
                    assert got == value, (vid, column, got, value)
                else:
                    assert got == _csv_text(value), (vid, column, got, value)


# ----------------------------------------------------------------------------- the type


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("2026-03-04 05:06:07.123456", datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)),
        ("2026-03-04 05:06:07", datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
        ("2026-03-04T05:06:07.5Z", datetime(2026, 3, 4, 5, 6, 7, 500000, tzinfo=UTC)),
        ("2026-03-04 07:06:07.123+02:00", datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)),
        ("2026-03-04T00:06:07-05:00", datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
        ("2026-03-04T05:06:07+0000", datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
        ("2026-03-04 08:06:07+03", datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
        ("2026-03-04 05:06:07.123456789", datetime(2026, 3, 4, 5, 6, 7, 123457, tzinfo=UTC)),
        ("2026-03-04T23:59:59.9999999z", datetime(2026, 3, 5, tzinfo=UTC)),
        ("2026-03-04", datetime(2026, 3, 4, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_reads_every_shape_writers_leave(raw, expected):
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize("raw", ["", "garbage", "2026-02-30 10:00:00", "2026-03-04 25:00:00", "1700000000",
                                 "2026-03-04 05:06:07 +25:00", "10000-01-01 00:00:00", "9999-12-31T23:00:00-02:00",
                                 "2026-03-04 05:06:07; DROP TABLE videos"])
def test_parse_timestamp_refuses_what_is_no_timestamp(raw):
    with pytest.raises(ValueError):
        parse_timestamp(raw)


def test_every_sqlalchemy_write_stores_utc_in_one_form(library):
    """ORM and Core writes of aware (any zone) and naive (taken as UTC) datetimes."""
    library.seed(3, creators=1, files=False)
    vid = library.ids("creator-001")[0]
    tokyo = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=9)))
    naive = datetime(2026, 3, 4, 5, 6, 7, 123456)
    with library.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id == vid).values(created_at=tokyo, updated_at=naive,
                                                                 embedded_at=tokyo))
    assert_one_form(library)
    with library.engine.connect() as conn:
        row = conn.execute(select(Video.created_at, Video.updated_at, Video.embedded_at).where(Video.id == vid)).one()
        assert row.created_at == row.embedded_at == datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
        assert row.updated_at == datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
        assert all(value.tzinfo is not None and value.utcoffset() == timedelta(0) for value in row)
        if conn.dialect.name == "sqlite":
            stored = conn.execute(text("SELECT created_at, updated_at FROM videos WHERE id = :v"), {"v": vid}).one()
            assert tuple(stored) == ("2026-03-04 05:06:07.123456", "2026-03-04 05:06:07.123456")
    with pytest.raises(Exception, match="datetime"):
        with library.engine.begin() as conn:
            conn.execute(update(Video).where(Video.id == vid).values(updated_at="2026-01-01"))


def test_raw_statements_bind_the_same_form(library):
    dialect = library.engine.dialect
    stamp = datetime(2026, 3, 4, 7, 6, 7, 1, tzinfo=timezone(timedelta(hours=2)))
    if dialect.name == "sqlite":
        assert bind_timestamp(dialect, stamp) == "2026-03-04 05:06:07.000001" == sqlite_text(stamp)
        assert sqlite_text(datetime(33, 1, 2, 3, 4, 5)) == "0033-01-02 03:04:05.000000"
    else:
        assert bind_timestamp(dialect, stamp) == stamp and bind_timestamp(dialect, stamp).tzinfo == UTC
    assert UTCDateTime().dialect_impl(dialect).bind_processor(dialect) is not None


# ----------------------------------------------------------------------------- operations, then export

def test_seed_then_export_both_formats(library):
    library.seed(30, creators=2)
    assert_one_form(library)
    assert_exports_match_database(library, "creator-001")


def test_reprocess_then_export_both_formats(library):
    """The user's second command: export after reprocess (it failed every row on SQLite)."""
    from flows.bulk_reprocess import bulk_reprocess

    library.seed(40, creators=2)
    with library.engine.connect() as conn:
        ids = list(conn.execute(select(Video.id).where(
            Video.creator_id == "creator-001", Video.transcript.is_not(None), Video.status != "processing")).scalars())
    before = datetime.now(UTC)
    doc = bulk_reprocess(creator_id="creator-001", video_ids=ids, batch_size=5, return_state=True).result()
    after = datetime.now(UTC)
    assert doc["status"] == "completed" and doc["succeeded"] == len(ids)
    assert_one_form(library)
    values = _db_values(library, "creator-001")
    assert all(before <= values[vid][2] <= after and values[vid][1] == values[vid][2] for vid in ids)
    assert_exports_match_database(library, "creator-001")


def test_failed_reprocess_writes_then_export(library, monkeypatch):
    """The claim, the rollback to 'failed' and the release of claims each write updated_at."""
    from flows.bulk_reprocess import bulk_reprocess

    library.seed(20, creators=1)
    with library.engine.connect() as conn:
        ids = list(conn.execute(select(Video.id).where(
            Video.transcript.is_not(None), Video.status != "processing")).scalars())
    broken = ids[0]

    def hook(stage, vid):
        if vid == broken and stage == "after_insert":
            raise RuntimeError("injected write failure")

    import videolib.reprocess as reprocess

    original = reprocess.reprocess_batch
    monkeypatch.setattr("tasks.reprocess.reprocess_batch",
                        lambda *a, **k: original(*a, **{**k, "hook": hook}))
    doc = bulk_reprocess(creator_id="creator-001", video_ids=ids, return_state=True).result()
    assert doc["status"] == "partial" and [e["error"] for e in doc["errors"]] == ["reprocess_error"]
    assert_one_form(library)
    assert_exports_match_database(library, "creator-001")


def test_delete_then_export_both_formats(library):
    """Tombstones written by a delete whose storage failed, then an export of what is left."""
    from tests.faults import CrashingStore
    from videolib.delete import delete_batch

    library.seed(20, creators=1)
    ids = library.ids("creator-001")
    store = CrashingStore(library.store, fail_delete=True)  # a crash mid-delete: tombstones stay
    with pytest.raises(ConnectionError):
        delete_batch(library.engine, store, creator_id="creator-001", video_ids=ids[:5], operation_id=OP,
                     batch_index=0)
    from flows.bulk_delete import bulk_delete

    doc = bulk_delete(creator_id="creator-001", video_ids=ids[5:8], return_state=True).result()
    assert doc["status"] == "completed"
    with library.engine.connect() as conn:
        assert conn.execute(select(Video.updated_at).where(Video.status == "deleting")).scalars().all()
    assert_one_form(library)
    assert_exports_match_database(library, "creator-001")


# ----------------------------------------------------------------------------- what older or foreign writers left

SHAPES = [  # (stored text, the instant it means)
    ("2026-03-04 05:06:07.123456", datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)),
    ("2026-03-04 05:06:07", datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
    ("2026-03-04T05:06:07.5Z", datetime(2026, 3, 4, 5, 6, 7, 500000, tzinfo=UTC)),
    ("2026-03-04 07:06:07.123+02:00", datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)),
    ("2026-03-04T00:06:07-05:00", datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
    ("2026-03-04 05:06:07.654321+00:00", datetime(2026, 3, 4, 5, 6, 7, 654321, tzinfo=UTC)),
    ("2026-03-04T05:06:07", datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
    ("2026-03-04 05:06:07.123456789", datetime(2026, 3, 4, 5, 6, 7, 123457, tzinfo=UTC)),
]


def _write_raw(lib, vid: str, values: dict[str, object]) -> None:
    """Store ``values`` as a foreign writer would, bypassing the column type (PostgreSQL
    parses the text itself, as it would for any client)."""
    with lib.engine.begin() as conn:
        for column, value in values.items():
            if conn.dialect.name == "sqlite":
                conn.execute(text(f"UPDATE videos SET {column} = :v WHERE id = :id"), {"v": value, "id": vid})
            else:
                conn.execute(text(f"UPDATE videos SET {column} = CAST(:v AS timestamptz) WHERE id = :id"),
                             {"v": value, "id": vid})


def test_every_accepted_shape_in_every_column_exports(library):
    library.seed(len(SHAPES) + 4, creators=1, files=False)
    ids = library.ids("creator-001")
    for vid, (shape, _instant) in zip(ids, SHAPES):
        _write_raw(library, vid, dict.fromkeys(TS_COLUMNS, shape))
    for fmt in ("parquet", "csv"):
        doc = _export("creator-001", fmt)
        assert doc["status"] == "completed", doc["errors"][:3]
        rows = _exported(library, doc)
        assert len(rows) == len(ids)
        for vid, (shape, instant) in zip(ids, SHAPES):
            for column in TS_COLUMNS:
                want = instant if fmt == "parquet" else _csv_text(instant)
                assert rows[vid][column] == want, (fmt, shape, column, rows[vid][column])
    # A filter compares instants, whatever the shape, once the migration has run (SQLite).
    if library.engine.dialect.name == "sqlite":
        from videolib.db.migrate import downgrade, upgrade

        downgrade(library.engine, "0003")  # back before the timestamp revision, data as written
        upgrade(library.engine)
        assert_one_form(library)
    doc = _export("creator-001", "parquet", created_after=datetime(2026, 3, 4, 5, 6, 7, 200000, tzinfo=UTC),
                  created_before=datetime(2026, 3, 4, 5, 6, 8, tzinfo=UTC))
    later = {vid for vid, (_s, instant) in zip(ids, SHAPES) if instant >= datetime(2026, 3, 4, 5, 6, 7, 200000,
                                                                                      tzinfo=UTC)}
    assert set(_exported(library, doc)) == later


def test_a_value_that_cannot_be_converted_is_a_bad_value_and_the_rest_exports(library):
    library.seed(12, creators=1, files=False)
    ids = library.ids("creator-001")
    if library.engine.dialect.name == "sqlite":
        bad = {ids[0]: {"embedded_at": "garbage"}, ids[1]: {"created_at": ""},
               ids[2]: {"updated_at": 1700000000}, ids[3]: {"embedded_at": "2026-02-30 10:00:00"},
               ids[4]: {"created_at": "yesterday", "embedded_at": "soon"}}
    else:  # PostgreSQL stores what its ADBC driver hands over as wrapped-around numbers
        bad = {ids[0]: {"embedded_at": "infinity"}, ids[1]: {"created_at": "-infinity"},
               ids[2]: {"updated_at": "10000-01-01 00:00:00+00"}, ids[3]: {"embedded_at": "294276-12-31 00:00:00+00"},
               ids[4]: {"created_at": "infinity", "embedded_at": "-infinity"}}
    for vid, values in bad.items():
        _write_raw(library, vid, values)
    expected = {vid: "column=" + ",".join(c for c in TS_COLUMNS if c in values) for vid, values in bad.items()}
    for fmt in ("parquet", "csv"):
        doc = _export("creator-001", fmt, batch_size=100)
        assert doc["status"] == "partial"
        assert doc["requested"] == len(ids) and doc["succeeded"] == len(ids) - len(bad) == doc["output"]["rows"]
        assert {e["video_id"]: (e["error"], e["detail"]) for e in doc["errors"]} == {
            vid: ("bad_value", detail) for vid, detail in expected.items()}
        assert set(_exported(library, doc)) == set(ids) - set(bad)
        report = library.store.get(doc["report_path"]).decode()
        assert all(vid in report for vid in bad)
    # Without the id column in the file, the rows left out are still named.
    doc = _export("creator-001", "csv", columns=["title", "created_at"])
    assert {e["video_id"] for e in doc["errors"]} == {vid for vid, values in bad.items() if "created_at" in values}


# ----------------------------------------------------------------------------- the migration


def test_migration_rewrites_rows_written_another_way(sqlite_library):
    lib = sqlite_library
    lib.seed(len(SHAPES) + 2, creators=1, files=False)
    ids = lib.ids("creator-001")
    for vid, (shape, _instant) in zip(ids, SHAPES):
        _write_raw(lib, vid, dict.fromkeys(TS_COLUMNS, shape))
    _write_raw(lib, ids[-1], {"embedded_at": "not a time"})
    from videolib.db.migrate import current_revision, downgrade, head_revision, upgrade

    downgrade(lib.engine, "0003")  # back before the timestamp revision, data as written
    upgrade(lib.engine)
    assert current_revision(lib.engine) == head_revision()
    with lib.engine.connect() as conn:
        for vid, (shape, instant) in zip(ids, SHAPES):
            stored = conn.execute(text("SELECT created_at, updated_at, embedded_at FROM videos WHERE id = :v"),
                                  {"v": vid}).one()
            assert set(stored) == {sqlite_text(instant)}, shape
        # What is no timestamp at all is left for the export to report, not invented.
        assert conn.execute(text("SELECT embedded_at FROM videos WHERE id = :v"), {"v": ids[-1]}).scalar() == "not a time"


def test_migration_converts_a_postgres_column_without_a_zone(pg_library):
    lib = pg_library
    lib.seed(3, creators=1, files=False)
    vid = lib.ids("creator-001")[0]
    with lib.engine.begin() as conn:
        conn.execute(text("ALTER TABLE videos ALTER COLUMN embedded_at TYPE timestamp without time zone"))
        conn.execute(text("UPDATE videos SET embedded_at = '2026-03-04 05:06:07.5' WHERE id = :v"), {"v": vid})
    from videolib.db.migrate import downgrade, upgrade

    downgrade(lib.engine, "0003")  # back before the timestamp revision, the column as altered

    upgrade(lib.engine)
    assert_one_form(lib)
    with lib.engine.connect() as conn:
        value = conn.execute(select(Video.embedded_at).where(Video.id == vid)).scalar_one()
    assert value == datetime(2026, 3, 4, 5, 6, 7, 500000, tzinfo=UTC)
