"""Settings, the schema on SQLite and PostgreSQL, and the demo library."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sqlalchemy import delete, func, inspect, select, text
from sqlalchemy.orm import Session

from config import Settings, get_settings
from videolib.db.engine import begin_write, create_db_engine
from videolib.db.migrate import current_revision, ensure_schema, head_revision, upgrade
from videolib.db.models import Video, VideoChunk
from videolib.embedders import from_blob, get_embedder


def test_settings_defaults_and_env(monkeypatch, tmp_path):
    for name in ("BULKOPS_DATABASE_URL", "BULKOPS_STORAGE_URL", "BULKOPS_MAX_IDS", "BULKOPS_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///.data/bulkops.db"
    assert settings.storage_url == ".data/storage" and settings.max_ids == 10_000
    assert settings.embedder == "hashing" and settings.s3_endpoint_url is None
    monkeypatch.setenv("BULKOPS_MAX_IDS", "25")
    monkeypatch.setenv("BULKOPS_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    try:
        assert get_settings().max_ids == 25 and get_settings().s3_endpoint_url == "http://127.0.0.1:9"
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("name, value", [("BULKOPS_EMBEDDER", "gpt"), ("BULKOPS_MAX_IDS", "0"),
                                         ("BULKOPS_MAX_IDS", "lots")])
def test_settings_refuse_bad_values(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError):
        Settings()


def test_signing_key_generated_once_and_kept(monkeypatch, tmp_path):
    monkeypatch.delenv("BULKOPS_SIGNING_KEY", raising=False)
    settings = Settings(data_dir=str(tmp_path / "d"))
    key = settings.signing_key_bytes()
    assert len(key) == 64 and settings.signing_key_bytes() == key
    assert (tmp_path / "d" / "signing.key").stat().st_mode & 0o777 == 0o600
    assert Settings(signing_key="explicit").signing_key_bytes() == b"explicit"


def test_schema_migrates_on_both_databases(library):
    engine = library.engine
    assert current_revision(engine) == head_revision()
    inspector = inspect(engine)
    assert {"videos", "video_chunks"} <= set(inspector.get_table_names())
    assert {"ix_videos_creator_status", "ix_videos_creator_id"} <= {i["name"] for i in inspector.get_indexes("videos")}
    ensure_schema(engine)  # a no-op at head
    before, after = upgrade(engine)
    assert before == after == head_revision()


def test_chunks_cascade_with_their_video(library):
    library.seed(5, creators=1, chunks_per_video=3, transcript_ratio=1.0)
    vid = library.ids("creator-001")[0]
    with library.engine.begin() as conn:
        conn.execute(delete(Video).where(Video.id == vid))
    with library.engine.connect() as conn:
        left = conn.execute(select(func.count()).select_from(VideoChunk).where(VideoChunk.video_id == vid))
        assert left.scalar_one() == 0


def test_status_is_constrained(library):
    library.seed(2, creators=1)
    vid = library.ids("creator-001")[0]
    with pytest.raises(Exception), library.engine.begin() as conn:
        conn.execute(text("UPDATE videos SET status = 'bogus' WHERE id = :id"), {"id": vid})


def test_begin_write_makes_savepoints_nest_in_one_transaction(library):
    """A savepoint opened right after ``begin_write`` belongs to the outer transaction:
    its RELEASE commits nothing, and an error after it rolls everything back."""
    library.seed(2, creators=1, transcript_ratio=1.0)
    vid = library.ids("creator-001")[0]
    with pytest.raises(RuntimeError), library.engine.begin() as conn:
        begin_write(conn)
        begin_write(conn)  # idempotent
        conn.exec_driver_sql("SAVEPOINT sp")
        conn.execute(text("UPDATE videos SET title = 'changed' WHERE id = :id"), {"id": vid})
        conn.exec_driver_sql("RELEASE SAVEPOINT sp")
        raise RuntimeError("after the savepoint")
    with library.engine.connect() as conn:
        title = conn.execute(select(Video.title).where(Video.id == vid)).scalar_one()
    assert title != "changed"


def test_sqlite_connections_enforce_foreign_keys_and_wal(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x' / 'db.sqlite'}", data_dir=str(tmp_path))
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 60000


def test_only_the_data_directory_is_created_on_demand(tmp_path):
    """A URL naming a directory that does not exist is refused, not created (a typo
    must not make folders at the filesystem's root and answer "no videos")."""
    from videolib.db.engine import DatabaseUnavailable

    for url in (f"sqlite:///{tmp_path / 'nope' / 'x.db'}", "sqlite:////nonexistent-dir-bulkops/x.db"):
        with pytest.raises(DatabaseUnavailable, match="does not exist"):
            create_db_engine(url, data_dir=str(tmp_path / "data"))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DatabaseUnavailable, match="not a directory"):
        create_db_engine(f"sqlite:///{tmp_path / 'a-file' / 'x.db'}", data_dir=str(tmp_path / "data"))
    assert not (tmp_path / "nope").exists() and not os.path.exists("/nonexistent-dir-bulkops")
    # The embedded default's home (and anything inside it) is made when first used.
    engine = create_db_engine(f"sqlite:///{tmp_path / 'data' / 'deep' / 'x.db'}", data_dir=str(tmp_path / "data"))
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert (tmp_path / "data" / "deep" / "x.db").exists()


def test_seed_makes_a_realistic_library(sqlite_library):
    lib = sqlite_library
    report = lib.seed(300, creators=3, seed=11)
    assert report.videos == 300 and sum(report.creators.values()) == 300 and report.objects == 600
    with Session(lib.engine) as session:
        videos = session.scalars(select(Video)).all()
        chunks = session.scalars(select(VideoChunk)).all()
    titles = " ".join(v.title for v in videos)
    assert any(c in titles for c in (",", '"', "\n")) and any(ord(ch) > 127 for ch in titles)
    assert any(v.title.startswith(("=", "-")) for v in videos), "formula-like text for the CSV guard"
    assert {v.status for v in videos} >= {"ready", "uploaded", "failed"}
    assert any(v.transcript is None for v in videos) and any(v.transcript for v in videos)
    assert any(v.description is None for v in videos)
    assert len(chunks) == report.chunks > 0
    embedded = [c for c in chunks if c.embedding is not None]
    assert embedded and len(embedded) < len(chunks)
    vector = from_blob(embedded[0].embedding)
    assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    for v in videos[:20]:
        assert v.storage_key == f"videos/{v.creator_id}/{v.id}/source.mp4"
        body = lib.store.get(v.storage_key)
        assert body[4:8] == b"ftyp" and len(body) == v.size_bytes
        assert lib.store.get(v.thumbnail_key).startswith(b"\xff\xd8")
        assert v.created_at is not None and v.duration_s > 0


def test_seed_is_deterministic(sqlite_library, tmp_path):
    from videolib.seed import seed_library

    other = create_db_engine(f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(other)
    seed_library(other, None, None, videos=50, creators=2, seed=3)
    sqlite_library.seed(50, creators=2, seed=3, files=False)
    with other.connect() as a, sqlite_library.engine.connect() as b:
        rows_a = a.execute(select(Video.id, Video.title, Video.creator_id).order_by(Video.id)).all()
        rows_b = b.execute(select(Video.id, Video.title, Video.creator_id).order_by(Video.id)).all()
    assert rows_a == rows_b


def test_hashing_embedder_is_deterministic_and_normalised():
    embedder = get_embedder("hashing")
    texts = ["How to cook pasta with garlic", "", "Kubernetes upgrades, step by step"]
    a = embedder.embed(texts)
    b = get_embedder("hashing").embed(texts)
    assert a.dtype == np.float32 and a.shape == (3, embedder.dim)
    assert np.array_equal(a, b)
    assert abs(np.linalg.norm(a[0]) - 1) < 1e-6 and np.linalg.norm(a[1]) == 0
    near = embedder.embed(["cook pasta with garlic tonight"])[0]
    assert float(a[0] @ near) > float(a[2] @ near)
    with pytest.raises(ValueError, match="embedder"):
        get_embedder("nope")


def test_the_trash_revision_keeps_every_row_and_chunk(library):
    """Revision 0005 rebuilds `videos` on SQLite (a new CHECK): with foreign keys on, the
    rebuild's DROP would delete every chunk by cascade. Down to 0004 and up again with a
    seeded library: every video and chunk is still there, and the cascade still works."""
    from videolib.db.migrate import downgrade

    library.seed(6, creators=1, chunks_per_video=3, transcript_ratio=1.0)

    def counts():
        with library.engine.connect() as conn:
            return (conn.execute(select(func.count()).select_from(Video)).scalar_one(),
                    conn.execute(select(func.count()).select_from(VideoChunk)).scalar_one())

    before = counts()
    assert before == (6, 18)
    downgrade(library.engine, "0004")
    assert current_revision(library.engine) == "0004" and counts() == before
    assert upgrade(library.engine) == ("0004", head_revision())
    assert counts() == before
    vid = library.ids("creator-001")[0]
    with library.engine.begin() as conn:
        conn.execute(delete(Video).where(Video.id == vid))
    assert counts() == (5, 15)
