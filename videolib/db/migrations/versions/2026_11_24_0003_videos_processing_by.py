"""videos.processing_by: which reprocess operation holds a video's `processing` claim

A reprocess batch sets its videos to ``processing`` (compare-and-set) before it
chunks and embeds them, and to ``ready`` or ``failed`` when it writes. The column
names the operation (flow run id) that holds the claim, so that a retry of the same
batch takes its own claims back, another operation reports the video as busy, and a
claim left by a crashed run can be taken over once it is older than the lease
(``BULKOPS_REPROCESS_LEASE_S``). ``processing`` without an owner belongs to some other
pipeline (an upload being processed) and is never taken.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.add_column(sa.Column("processing_by", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.drop_column("processing_by")
