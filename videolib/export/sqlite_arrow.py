"""Arrow record batches from a SQLite file, read by ADBC in helper processes.

ADBC's SQLite driver reads rows into Arrow in C, but it bundles its own copy of
SQLite, and two copies of SQLite in one process that open the same WAL database
corrupt it: the second copy does not see the first one's POSIX locks, so its last
close checkpoints and deletes the WAL under the other (sqlite.org/howtocorrupt.html,
2.2.1). Our process also writes that database (through Python's sqlite3), so the
driver runs in child processes of its own: across processes the locks work as
designed. A child serves one query at a time and streams the batches back over a
pipe, framed, each batch an Arrow IPC stream; its CPU is its own, not our GIL's.

Measured on 1M rows of a 2-core machine (benchmarks/README.md, export): Python's
sqlite3 ``fetchmany`` plus conversion to Arrow read ~87k rows/s under the GIL; one
ADBC child read the same query ~1.5x faster, and two children read two id ranges at
once.

The driver infers a column's type from its first batch and fails when a later batch
disagrees (a column NULL for the first rows becomes int64, then a string arrives).
So :func:`null_safe_select` never hands it a NULL: every nullable column is read as
``COALESCE(expr, <zero of its type>)`` with a ``<name>__null`` flag beside it, and
:func:`restore_nulls` puts the NULLs back.

Protocol (stdin/stdout of the child, little endian): a request is an 8-byte length and
a JSON document (``{"queries": [{"sql": ..., "params": [...]}, ...]}``, run in one read
transaction, or ``{"stats": true}``); the reply is a series of frames, each one kind byte
and an 8-byte length: ``B`` one record batch (Arrow IPC stream), ``E`` the end of one
query's result, ``X`` an error (UTF-8 text; the request ends there), ``S`` stats (JSON). The child imports only pyarrow and the driver, so it starts in a fraction of
a second.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

_LEN = struct.Struct("<Q")
_FRAME = struct.Struct("<cQ")
NULL_SUFFIX = "__null"
# Rows per batch the driver builds (and infers types from, though every column it sees
# is non-NULL). Larger batches: fewer frames; 8192 rows of export metadata ~ 2-3 MB.
BATCH_ROWS = 8192


class SqliteReaderError(RuntimeError):
    """The helper process failed a query or died."""


# --------------------------------------------------------------------------- SQL


def null_safe_select(columns: Sequence[tuple[str, str, pa.DataType, bool]]) -> str:
    """A select list for ``(name, sql_expr, arrow_type, nullable)`` columns that yields no NULLs."""
    parts = []
    for name, expr, arrow_type, nullable in columns:
        if not nullable:
            parts.append(f"{expr} AS {name}")
            continue
        if pa.types.is_floating(arrow_type):
            zero = "0.0"
        elif pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
            zero = "0"
        else:  # text, and timestamps (SQLite keeps them as text)
            zero = "''"
        parts.append(f"COALESCE({expr}, {zero}) AS {name}")
        parts.append(f"(({expr}) IS NULL) AS {name}{NULL_SUFFIX}")
    return ", ".join(parts)


def restore_nulls(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Undo :func:`null_safe_select`: drop the flags and put the NULLs back."""
    names = batch.schema.names
    arrays, fields = [], []
    for i, name in enumerate(names):
        if name.endswith(NULL_SUFFIX):
            continue
        column = batch.column(i)
        flag = name + NULL_SUFFIX
        if flag in names:
            is_null = pc.not_equal(batch.column(flag), 0)
            if pc.any(is_null).as_py():
                column = pc.if_else(is_null, pa.scalar(None, column.type), column)
        arrays.append(column)
        fields.append(pa.field(name, column.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


# --------------------------------------------------------------------------- parent side


class SqliteArrowReader:
    """One helper process reading one SQLite file (read-only)."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = str(Path(db_path).resolve())
        self._proc = subprocess.Popen(
            [sys.executable, "-s", "-P", str(Path(__file__).resolve()), self.db_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True,
        )
        self.broken = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _send(self, request: dict) -> None:
        data = json.dumps(request).encode("utf-8")
        try:
            self._proc.stdin.write(_LEN.pack(len(data)) + data)
            self._proc.stdin.flush()
        except OSError as exc:
            self.broken = True
            raise self._died() from exc

    def _frame(self) -> tuple[bytes, bytes]:
        head = self._proc.stdout.read(_FRAME.size)
        if len(head) < _FRAME.size:
            self.broken = True
            raise self._died()
        kind, size = _FRAME.unpack(head)
        body = self._proc.stdout.read(size) if size else b""
        if len(body) < size:
            self.broken = True
            raise self._died()
        return kind, body

    def _died(self) -> SqliteReaderError:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        err = b""
        if code is not None and self._proc.stderr is not None:
            err = self._proc.stderr.read()[-2000:]
        return SqliteReaderError(
            f"the SQLite reader process (pid {self._proc.pid}) exited unexpectedly "
            f"(code {code}): {err.decode('utf-8', 'replace').strip() or 'no message'}"
        )

    def query(self, sql: str, params: Sequence[object] = ()) -> Iterator[pa.RecordBatch]:
        """The query's rows as record batches (types as the driver infers them)."""
        for _index, batch in self.results([(sql, params)]):
            yield batch

    def results(self, queries: Sequence[tuple[str, Sequence[object]]]) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Several queries in one read transaction (one snapshot of the database):
        ``(query index, batch)`` pairs, the queries' results one after the other."""
        if self.broken:
            raise SqliteReaderError("this SQLite reader process is broken")
        self._send({"queries": [{"sql": sql, "params": list(params)} for sql, params in queries]})
        ended = 0
        try:
            while ended < len(queries):
                kind, body = self._frame()
                if kind == b"B":
                    with ipc.open_stream(pa.py_buffer(body)) as stream:
                        yield ended, stream.read_next_batch()
                elif kind == b"E":
                    ended += 1
                elif kind == b"X":
                    ended = len(queries)
                    raise SqliteReaderError(body.decode("utf-8", "replace"))
                else:
                    self.broken = True
                    raise SqliteReaderError(f"unexpected frame {kind!r} from the SQLite reader")
        finally:
            if ended < len(queries):  # abandoned mid-result (the caller stopped, or an
                self.broken = True  # error): the rest of the reply is still in the pipe
                self.close()

    def stats(self) -> dict:
        """The helper's own figures: ``rss_after_imports_kb`` and ``peak_rss_kb`` (VmHWM)."""
        self._send({"stats": True})
        kind, body = self._frame()
        if kind != b"S":
            self.broken = True
            raise SqliteReaderError(f"unexpected frame {kind!r} from the SQLite reader")
        return json.loads(body)

    def __enter__(self) -> SqliteArrowReader:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            try:
                proc.stdin.close()  # EOF: the child ends its loop
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


class ReaderPool:
    """Up to ``size`` reader processes for one SQLite file, started on first use."""

    def __init__(self, db_path: str | os.PathLike[str], size: int) -> None:
        self.db_path = str(db_path)
        self.size = max(1, size)
        self._idle: queue.LifoQueue[SqliteArrowReader] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._all: list[SqliteArrowReader] = []
        self.rss_kb: dict[int, tuple[int, int]] = {}  # of stopped helpers, by pid: see HELPER_RSS_KB

    def start(self, count: int | None = None) -> None:
        """Start helpers ahead of the first query (they import while the caller plans)."""
        with self._lock:
            missing = min(self.size, count or self.size) - len(self._all)
        for _ in range(max(0, missing)):
            self._idle.put(self._new())

    def _new(self) -> SqliteArrowReader:
        reader = SqliteArrowReader(self.db_path)
        with self._lock:
            self._all.append(reader)
        return reader

    @contextmanager
    def reader(self) -> Iterator[SqliteArrowReader]:
        with self._slots:
            try:
                reader = self._idle.get_nowait()
            except queue.Empty:
                reader = self._new()
            try:
                yield reader
            finally:
                if reader.broken:
                    self._forget(reader)
                else:
                    self._idle.put(reader)

    def query(self, sql: str, params: Sequence[object] = ()) -> Iterator[pa.RecordBatch]:
        with self.reader() as reader:
            yield from reader.query(sql, params)

    def results(self, queries: Sequence[tuple[str, Sequence[object]]]) -> Iterator[tuple[int, pa.RecordBatch]]:
        with self.reader() as reader:
            yield from reader.results(queries)

    def _forget(self, reader: SqliteArrowReader) -> None:
        reader.close()
        with self._lock:
            if reader in self._all:
                self._all.remove(reader)

    def close(self) -> None:
        """Stop every helper (idle ones at once; a busy one when its query ends is not waited for)."""
        with self._lock:
            readers, self._all = self._all, []
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        for reader in readers:
            if not reader.broken:
                try:
                    stats = reader.stats()
                    figures = (int(stats["rss_after_imports_kb"]), int(stats["peak_rss_kb"]))
                    self.rss_kb[reader.pid] = HELPER_RSS_KB[reader.pid] = figures
                except (SqliteReaderError, OSError, ValueError, KeyError):
                    pass
            reader.close()


_pools: dict[str, ReaderPool] = {}
# Memory of every helper this process stopped, by pid: (RSS after its imports, peak RSS),
# KiB. An export's memory outside its own process (benchmarks/export.py counts it).
HELPER_RSS_KB: dict[int, tuple[int, int]] = {}
_holders: dict[str, int] = {}
_pools_lock = threading.Lock()


def pool_for(db_path: str | os.PathLike[str], size: int) -> ReaderPool:
    """The process's reader pool for this SQLite file."""
    key = str(Path(db_path).resolve())
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ReaderPool(key, size)
        return pool


@contextmanager
def held_pool(db_path: str | os.PathLike[str], size: int, *, start: bool = True) -> Iterator[ReaderPool]:
    """Keep the file's pool (its helpers started now) while the block runs; the last
    holder to leave stops the helpers, so a long-lived process does not keep them idle."""
    pool = pool_for(db_path, size)
    with _pools_lock:
        _holders[pool.db_path] = _holders.get(pool.db_path, 0) + 1
    try:
        if start:
            pool.start()
        yield pool
    finally:
        with _pools_lock:
            _holders[pool.db_path] -= 1
            last = _holders[pool.db_path] == 0
            if last:
                del _holders[pool.db_path]
                if _pools.get(pool.db_path) is pool:
                    del _pools[pool.db_path]
        if last:
            pool.close()


def close_pools() -> None:
    """Stop every helper process."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


atexit.register(close_pools)


# --------------------------------------------------------------------------- child side


def _status_kb(name: str) -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_update(conn, sql: str) -> None:
    import adbc_driver_manager as manager

    statement = manager.AdbcStatement(conn)
    try:
        statement.set_sql_query(sql)
        statement.execute_update()
    finally:
        statement.close()


def _serve(db_path: str) -> int:
    # The driver manager's low-level API: its DB-API layer imports polars and pandas
    # glue (+40 MB in every helper) for features a reader does not use.
    import adbc_driver_manager as manager
    import adbc_driver_sqlite

    rss_after_imports = _status_kb("VmRSS")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def frame(kind: bytes, body: bytes | memoryview = b"") -> None:
        stdout.write(_FRAME.pack(kind, len(body)))
        if len(body):
            stdout.write(body)

    database = adbc_driver_sqlite.connect("file:" + quote(db_path) + "?mode=ro")
    conn = manager.AdbcConnection(database)
    try:
        while True:
            head = stdin.read(_LEN.size)
            if len(head) < _LEN.size:
                return 0
            (size,) = _LEN.unpack(head)
            request = json.loads(stdin.read(size))
            if request.get("stats"):
                frame(b"S", json.dumps({"rss_after_imports_kb": rss_after_imports,
                                        "peak_rss_kb": _status_kb("VmHWM")}).encode())
                stdout.flush()
                continue
            queries = request["queries"]
            snapshot = len(queries) > 1
            try:
                if snapshot:  # one read transaction: every query sees the same data
                    run_update(conn, "BEGIN")
                for query in queries:
                    statement = manager.AdbcStatement(conn)
                    try:
                        statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
                        statement.set_sql_query(query["sql"])
                        params = query.get("params") or []
                        if params:
                            statement.bind(pa.record_batch([pa.array([v]) for v in params],
                                                           names=[str(i) for i in range(len(params))]))
                        handle, _rows = statement.execute_query()
                        for batch in pa.RecordBatchReader._import_from_c_capsule(handle.__arrow_c_stream__()):
                            sink = pa.BufferOutputStream()
                            with ipc.new_stream(sink, batch.schema) as writer:
                                writer.write_batch(batch)
                            frame(b"B", memoryview(sink.getvalue()))
                    finally:
                        statement.close()
                    frame(b"E")
            except Exception as exc:  # noqa: BLE001 - reported to the parent, the child lives on
                frame(b"X", f"{type(exc).__name__}: {exc}".encode("utf-8", "replace"))
            finally:
                if snapshot:
                    try:
                        run_update(conn, "COMMIT")
                    except Exception:  # noqa: BLE001, S110 - no transaction left (BEGIN failed)
                        pass
            stdout.flush()
    finally:
        conn.close()
        database.close()


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
