"""staged ids: the distinct ids of a manifest, one operation's selection at a time

A selection from an id manifest (``videolib/manifests.py``) can list millions of ids:
they are never one list in memory nor one flow parameter. The run streams the manifest
into ``staged_ids`` (the primary key collapses duplicates), keeps the creator's own
(the rest are reported ``not_found``), and its batches are ranges of ``seq`` that each
batch reads back. The run removes its rows when it ends; cleanup removes those of runs
that died.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staged_ids",
        sa.Column("operation_id", sa.String(36), nullable=False),
        sa.Column("video_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("operation_id", "video_id", name="pk_staged_ids"),
    )
    op.create_index("ix_staged_ids_seq", "staged_ids", ["operation_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_staged_ids_seq", table_name="staged_ids")
    op.drop_table("staged_ids")
