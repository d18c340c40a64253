"""Alembic environment: runs on the connection ``videolib.db.migrate`` hands over,
or on ``BULKOPS_DATABASE_URL`` when run as ``alembic -c videolib/db/migrations/alembic.ini``."""

from __future__ import annotations

from alembic import context

from videolib.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from videolib.db.engine import get_engine

    with get_engine().connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `bulkops init`")
run_migrations_online()
