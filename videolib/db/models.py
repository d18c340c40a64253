"""The library's tables: ``videos`` and their transcript ``video_chunks``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from videolib.db.types import UTCDateTime

VIDEO_STATUSES = ("uploaded", "processing", "ready", "failed", "deleting", "trashed")
# Gone for every operation: being deleted, or in the undo window's trash.
GONE_STATUSES = ("deleting", "trashed")


class Base(DeclarativeBase):
    pass


class Video(Base):
    __tablename__ = "videos"
    __table_args__ = (
        Index("ix_videos_creator_status", "creator_id", "status"),
        # Batch statements filter creator_id = ? AND id IN (...): see migration 0002.
        Index("ix_videos_creator_id", "creator_id", "id"),
        Index("ix_videos_trashed", "trashed_at"),  # migration 0005
        CheckConstraint(
            "status IN ('uploaded', 'processing', 'ready', 'failed', 'deleting', 'trashed')",
            name="ck_videos_status",
        ),
    )

    # 36-character lowercase UUID text, the same on every database.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    creator_id: Mapped[str] = mapped_column(String(64), nullable=False)
    title: Mapped[str] = mapped_column(Text, nullable=False, default="")
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="uploaded")
    storage_key: Mapped[str | None] = mapped_column(String(1024))
    thumbnail_key: Mapped[str | None] = mapped_column(String(1024))
    transcript: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # UTC on every database, one stored form each (videolib/db/types.py).
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    embedded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    embedding_model: Mapped[str | None] = mapped_column(String(128))
    # The reprocess operation holding this video's `processing` claim (migration 0003).
    processing_by: Mapped[str | None] = mapped_column(String(36))
    # The undo window of deletes (migration 0005): when and by which delete the video
    # was trashed, and the status restore gives back.
    trashed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    trashed_by: Mapped[str | None] = mapped_column(String(36))
    trashed_from: Mapped[str | None] = mapped_column(String(16))


class VideoChunk(Base):
    __tablename__ = "video_chunks"
    # The unique index leads with video_id, so it also serves the cascade from videos.
    __table_args__ = (UniqueConstraint("video_id", "chunk_index", name="uq_video_chunks_video_index"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    video_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("videos.id", ondelete="CASCADE"), nullable=False
    )
    chunk_index: Mapped[int] = mapped_column(Integer, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    start_s: Mapped[float | None] = mapped_column(Float)
    end_s: Mapped[float | None] = mapped_column(Float)
    # Little-endian float32, L2-normalised.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    model: Mapped[str | None] = mapped_column(String(128))


class StagedId(Base):
    """One distinct id of a manifest selection while its operation runs (migration 0006)."""

    __tablename__ = "staged_ids"
    __table_args__ = (Index("ix_staged_ids_seq", "operation_id", "seq"),)

    operation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    video_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
