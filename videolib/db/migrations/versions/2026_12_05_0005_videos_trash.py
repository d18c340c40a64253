"""videos in the trash: the undo window of deletes (``BULKOPS_DELETE_GRACE``)

With an undo window a delete moves its videos to ``trashed`` at once, keeping rows,
chunks and objects; ``bulkops restore`` brings them back unchanged until cleanup
purges them after the window. Three columns say what restore and the purge need:

- ``trashed_at``: when the delete trashed it (the window runs from here);
- ``trashed_by``: the delete operation (flow run id) that did, for ``restore --operation``;
- ``trashed_from``: the status it had, which restore gives back.

``ck_videos_status`` admits ``trashed``; an index on ``trashed_at`` serves cleanup's
search for what is due (restore goes by ``(creator_id, status)``, as selections do).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BEFORE = "status IN ('uploaded', 'processing', 'ready', 'failed', 'deleting')"
AFTER = "status IN ('uploaded', 'processing', 'ready', 'failed', 'deleting', 'trashed')"


def upgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.drop_constraint("ck_videos_status", type_="check")
        batch.create_check_constraint("ck_videos_status", AFTER)
        batch.add_column(sa.Column("trashed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("trashed_by", sa.String(36), nullable=True))
        batch.add_column(sa.Column("trashed_from", sa.String(16), nullable=True))
    op.create_index("ix_videos_trashed", "videos", ["trashed_at"])


def downgrade() -> None:
    op.drop_index("ix_videos_trashed", table_name="videos")
    with op.batch_alter_table("videos") as batch:
        batch.drop_column("trashed_from")
        batch.drop_column("trashed_by")
        batch.drop_column("trashed_at")
        batch.drop_constraint("ck_videos_status", type_="check")
        batch.create_check_constraint("ck_videos_status", BEFORE)
