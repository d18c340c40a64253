"""The set-up every front door needs before an operation: a storage that answers, a
database at the newest schema, Prefect's settings for a process that runs flows; and one
translation of a broken set-up (settings that do not validate, a database or storage
that cannot be used, a Prefect server out of reach) into a refusal with its contract
code (``bad_settings``, ``bad_database_url``, ``database_unavailable``,
``storage_unavailable``, ``prefect_unreachable``).

Nothing here imports prefect: ``bulkops --help``, ``init`` and ``seed`` stay quick.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from config import get_settings
from videolib.ids import RequestError


def ready_store():
    """The configured store, once it has answered a probe (``storage_unavailable`` if not)."""
    from videolib.storage import ObjectStore, StorageUnavailable

    settings = get_settings()
    try:
        store = ObjectStore.from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        store.check()
    except StorageUnavailable as exc:
        raise as_refusal(exc) from exc
    return store


def database():
    """The process's engine for the configured database."""
    from videolib.db.engine import get_engine

    return get_engine(get_settings().database_url)


def ready_database():
    """The engine, with the schema created or upgraded when it is not at the newest revision."""
    from videolib.db.migrate import ensure_schema

    engine = database()
    ensure_schema(engine)
    return engine


LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def prefect_defaults() -> None:
    """Prefect's settings for a process that runs flows, unless the user set them.

    No internet here: Prefect's telemetry attempt makes the ephemeral server's start fail
    with "database is locked". Per-task INFO lines would drown the progress bar.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # A run whose process dies without a word stops its heartbeats; with the automation
    # in prefect-automations.yaml the server then marks it Crashed, and what it held is
    # free at once (videolib/takeover.py). Prefect's minimum is 30 s.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    # The leases of the per-creator slots (flows/slots.py) on disk, under PREFECT_HOME:
    # in the server's memory (Prefect's default) a lease is lost when the server stops,
    # and the slot it held stays taken for good. A temporary server stops with every CLI
    # command.
    os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASE_STORAGE)


def hold_temporary_server() -> str | None:
    """With no Prefect server named (``PREFECT_API_URL`` unset), start Prefect's
    temporary local one now, from the calling (main) thread, tied to this process: the
    kernel sends it SIGTERM when this process ends, however it ends (SIGKILL included),
    so it never outlives the command that started it. Prefect's own client then uses
    this same server. Its API URL, or None when a server is named."""
    if os.environ.get("PREFECT_API_URL") or use_running_serve():
        return None
    prefect_defaults()
    from prefect.server.api import server as prefect_server

    server = prefect_server.SubprocessASGIServer()
    if not server.running:
        start_uvicorn = server._run_uvicorn_command

        def tied() -> Any:
            # Prefect builds the command line; we only add the parent-death signal.
            real = prefect_server.subprocess
            prefect_server.subprocess = _TiedSubprocess(real)
            try:
                return start_uvicorn()
            finally:
                prefect_server.subprocess = real

        server._run_uvicorn_command = tied
        server.start()
    return server.api_url


class _TiedSubprocess:
    """``subprocess`` whose ``Popen`` starts children that die with this process, out of
    the terminal's reach."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Popen(self, *args: Any, **kwargs: Any):  # noqa: N802 - the name it stands in for
        kwargs.setdefault("preexec_fn", die_with_parent(os.getpid()))
        # Its own process group: a Ctrl-C in the terminal goes to the command, which
        # stops its run softly and still needs the server to write the result.
        kwargs.setdefault("start_new_session", True)
        # Its own log: the server's internal errors and tracebacks are not the user's.
        if kwargs.get("stdout") is None and kwargs.get("stderr") is None:
            log = temporary_server_log()
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as sink:
                kwargs["stdout"] = sink
                kwargs["stderr"] = subprocess.STDOUT
                return self._real.Popen(*args, **kwargs)
        return self._real.Popen(*args, **kwargs)


def serve_file() -> Path:
    """Where a running ``bulkops serve`` names its pid and URLs (``api/serve.py``)."""
    return Path(get_settings().data_dir) / "serve.json"


def running_serve() -> dict[str, Any] | None:
    """What ``.data/serve.json`` says, while the ``bulkops serve`` that wrote it lives."""
    import json

    try:
        served = json.loads(serve_file().read_text())
        pid = int(served["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The pid must still be that serve (not a process that got its number since).
    if b"serve" not in cmdline or not served.get("prefect_api_url"):
        return None
    return served


def use_running_serve() -> bool:
    """With ``PREFECT_API_URL`` unset and a ``bulkops serve`` running here, use its Prefect
    server (instead of starting a temporary one); whether one was found."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    served = running_serve()
    if served is None:
        return False
    os.environ["PREFECT_API_URL"] = served["prefect_api_url"]
    return True


def temporary_server_log() -> Path:
    """Where the temporary Prefect server's own output goes (in ``PREFECT_HOME``)."""
    home = os.environ.get("PREFECT_HOME") or str(Path.home() / ".prefect")
    return Path(home).expanduser() / "bulkops-temporary-server.log"


def die_with_parent(parent: int):
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child

    def preexec() -> None:  # in the child, between fork and exec: no imports, no locks
        if prctl is not None:
            prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return preexec


def ui_url() -> str | None:
    """The Prefect UI of the named server, when one is named and its UI answers."""
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api:
        return None
    ui = os.environ.get("PREFECT_UI_URL") or (api[: -len("/api")] if api.endswith("/api") else api)
    try:
        import httpx

        response = httpx.get(ui, timeout=1.0, follow_redirects=True)
    except Exception:  # noqa: BLE001 - no UI to point at
        return None
    return ui if response.status_code == 200 and "html" in response.headers.get("content-type", "") else None


def redact(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: nothing to hide in it
        return url


def as_refusal(exc: BaseException) -> RequestError | None:
    """The refusal for an error in the set-up rather than the request, or None (a bug).
    Recognised by class name, without importing pydantic, SQLAlchemy or httpx for it."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    if "pydantic_core._pydantic_core.ValidationError" in names and getattr(exc, "title", "") == "Settings":
        problems = "; ".join(
            f"BULKOPS_{'_'.join(str(part) for part in e['loc']).upper()}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors()  # type: ignore[attr-defined]
        )
        return RequestError("bad_settings", f"invalid setting: {problems} (fix or unset the variable)")
    url = os.environ.get("BULKOPS_DATABASE_URL", "")
    if names & {"sqlalchemy.exc.ArgumentError", "sqlalchemy.exc.NoSuchModuleError"}:
        return RequestError("bad_database_url", (
            f"BULKOPS_DATABASE_URL={redact(url)!r} is not a usable SQLAlchemy URL ({exc}); "
            "e.g. sqlite:///.data/bulkops.db or postgresql+psycopg://user:pass@host/db"
        ))
    if names & {"sqlalchemy.exc.OperationalError", "sqlalchemy.exc.InterfaceError",
                "videolib.db.engine.DatabaseUnavailable"}:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        where = redact(url) if url else "the default database"
        return RequestError("database_unavailable",
                            f"cannot open {where}: {reason} (check BULKOPS_DATABASE_URL and the server)")
    if "videolib.storage.base.StorageUnavailable" in names:
        return exc.refusal()  # type: ignore[attr-defined]
    api = os.environ.get("PREFECT_API_URL", "")
    if "httpx.TransportError" in names or (isinstance(exc, RuntimeError) and "Failed to reach API" in str(exc)):
        return RequestError("prefect_unreachable", (
            f"cannot reach the Prefect server at {api or 'its configured address'}: {exc}; start it "
            "(prefect server start) or unset PREFECT_API_URL to run on a temporary local one"
        ))
    return None
