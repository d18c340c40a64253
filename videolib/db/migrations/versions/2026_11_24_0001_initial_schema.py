"""videos and video_chunks

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("creator_id", sa.String(64), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("storage_key", sa.String(1024)),
        sa.Column("thumbnail_key", sa.String(1024)),
        sa.Column("transcript", sa.Text()),
        sa.Column("duration_s", sa.Float()),
        sa.Column("size_bytes", sa.BigInteger()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("embedded_at", sa.DateTime(timezone=True)),
        sa.Column("embedding_model", sa.String(128)),
        sa.CheckConstraint(
            "status IN ('uploaded', 'processing', 'ready', 'failed', 'deleting')",
            name="ck_videos_status",
        ),
    )
    op.create_index("ix_videos_creator_status", "videos", ["creator_id", "status"])
    op.create_table(
        "video_chunks",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column(
            "video_id", sa.String(36), sa.ForeignKey("videos.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("start_s", sa.Float()),
        sa.Column("end_s", sa.Float()),
        sa.Column("embedding", sa.LargeBinary()),
        sa.Column("model", sa.String(128)),
        sa.UniqueConstraint("video_id", "chunk_index", name="uq_video_chunks_video_index"),
    )


def downgrade() -> None:
    op.drop_table("video_chunks")
    op.drop_index("ix_videos_creator_status", table_name="videos")
    op.drop_table("videos")
