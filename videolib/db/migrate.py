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
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, current_revision(engine) or ""


def ensure_schema(engine: Engine) -> None:
    """Upgrade only when the schema is not at head (cheap when it already is)."""
    if current_revision(engine) != head_revision():
        upgrade(engine)
