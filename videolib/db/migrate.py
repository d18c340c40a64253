"""Create or upgrade the schema with Alembic (``bulkops init``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine


# The Alembic scripts live beside this module (videolib/db/migrations/), so no import
# points up the house.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config() -> Config:
    folder = MIGRATIONS
    cfg = Config(str(folder / "alembic.ini"))
    cfg.set_main_option("script_location", str(folder))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; returns (before, after)."""
    before = current_revision(engine)
    _migrate(engine, command.upgrade, "head")
    return before, current_revision(engine) or ""


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (for an operator undoing an upgrade, and tests)."""
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, step, revision: str) -> None:
    """Run an Alembic step on one connection. On SQLite a revision that changes a
    constraint rebuilds its table (Alembic's batch mode: copy, drop, rename), and
    dropping ``videos`` with foreign keys on would delete every transcript chunk by
    ``ON DELETE CASCADE``. So, as SQLite's own procedure for schema changes says, foreign
    keys are off for the step (a pragma that only takes effect outside a transaction),
    checked after it, and on again."""
    cfg = _config()
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                step(cfg, revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration left {len(broken)} rows whose foreign keys point "
                                           f"nowhere (first: {broken[0]}); nothing was changed")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def ensure_schema(engine: Engine) -> None:
    """Upgrade only when the schema is not at head (cheap when it already is)."""
    if current_revision(engine) != head_revision():
        upgrade(engine)
