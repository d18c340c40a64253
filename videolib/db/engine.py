"""Engines and sessions, with the per-connection settings each database needs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    # SQLite enforces foreign keys (so the chunk cascade) only per connection, and
    # several writer threads need WAL plus a busy timeout instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    # Checkpoint the WAL every ~40 MB rather than every 4 MB: each checkpoint fsyncs, and
    # bulk writers (reprocess: ~10 MB of chunks per batch) paid one every few commits
    # (20k videos reprocessed: 11.7-11.9 s instead of 12.4-12.6 s).
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    # 64 MiB of page cache instead of 2 MiB: bulk deletes walk large indexes.
    cursor.execute("PRAGMA cache_size=-65536")
    # Debian builds SQLite with secure_delete on, which zero-fills every freed page and
    # made bulk deletes ~30% slower here. PostgreSQL does not zero deleted tuples
    # either; erasure evidence is the audit manifest, not a zeroed file.
    cursor.execute("PRAGMA secure_delete=OFF")
    # Savepoint and statement journals in memory, not in temp files: once the
    # sub-journal outgrew 64 KiB it became a file for the rest of the transaction, and
    # reprocess (a savepoint per video) wrote 1.1 GB of it for 20k videos (DB path
    # 8.2 -> 6.9-7.7 s). Our statements touch at most ~1000 rows each (ids are
    # chunked), so the journal stays a few MB; no temp tables here.
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


class DatabaseUnavailable(RuntimeError):
    """The configured database cannot be used at all (its directory cannot be made)."""


def create_db_engine(url: str, *, data_dir: str | None = None) -> Engine:
    """A new engine for ``url``.

    A SQLite file's directory is created only when it is ``data_dir`` (the embedded
    default's ``.data/``) or lies inside it; any other directory must exist: a typo in
    the URL must not create folders at the filesystem's root and answer "no videos".
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).expanduser().absolute().parent
            if not folder.is_dir():
                home = Path(data_dir).expanduser().absolute() if data_dir else None
                if home is None or not (folder == home or home in folder.parents):
                    what = "is not a directory" if folder.exists() else "does not exist"
                    raise DatabaseUnavailable(f"the directory {str(folder)!r} of the SQLite file {what}; "
                                              "create it first, or fix the URL")
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DatabaseUnavailable(f"cannot create the directory {str(folder)!r}: {exc.strerror}") from exc
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: the configured database)."""
    from config import get_settings

    settings = get_settings()
    if url is None:
        url = settings.database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = create_db_engine(url, data_dir=settings.data_dir)
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def set_lock_timeout(conn: Connection, lock_timeout_ms: int) -> None:
    """PostgreSQL: give up on row locks after ``lock_timeout_ms`` in this transaction."""
    if conn.dialect.name == "postgresql" and lock_timeout_ms > 0:
        # SET LOCAL lasts for this transaction only; a blocked batch fails and is retried
        # rather than waiting behind another operation's row locks indefinitely.
        conn.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'"))


def begin_write(conn: Connection) -> None:
    """Open the transaction on ``conn`` as a writer now.

    pysqlite opens its transaction lazily, at the first INSERT/UPDATE/DELETE: a
    SAVEPOINT issued before that starts a transaction of its own (and its RELEASE
    commits it) instead of nesting in ours. ``BEGIN IMMEDIATE`` opens it at once and
    takes SQLite's write lock up front (waiting with the busy timeout), so the
    transaction cannot fail later on upgrading a read lock. PostgreSQL needs nothing:
    its transaction is already open.
    """
    if conn.dialect.name != "sqlite":
        return
    driver = conn.connection.driver_connection
    if driver is not None and not driver.in_transaction:
        driver.execute("BEGIN IMMEDIATE")
