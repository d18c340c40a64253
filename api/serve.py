"""``bulkops serve``: everything the HTTP API needs, in one process tree.

- a Prefect server on loopback (``--prefect-port``, with its UI), unless
  ``PREFECT_API_URL`` names one;
- the automation that marks runs whose heartbeats stopped as Crashed
  (``service.automations``);
- a runner executing the bulkops deployments, at most ``--limit`` runs at once
  (``service.runner``);
- the API on uvicorn (``--host``, ``--port``), in this process.

The children die with this process (``PR_SET_PDEATHSIG``), however it ends. While it
runs, ``.data/serve.json`` names its pid and URLs, and CLI commands use its Prefect
server instead of starting a temporary one (``service.environment``).

SIGTERM or Ctrl-C: the API stops taking requests, the runs this ``serve`` executes are
cancelled softly (their result documents written), it waits for them up to
``BULKOPS_SHUTDOWN_GRACE``, then stops the runner and the Prefect server, and exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from config import get_settings
from service.environment import die_with_parent, prefect_defaults, serve_file
from service.tokens import SHORT_SECRET, jwt_secret
from service.requests import RequestError

log = logging.getLogger(__name__)

LOCAL_TOKEN_TTL_S = 30 * 24 * 3600.0  # the CLI's token in serve.json (gone when serve stops)
PREFECT_START_S = 120.0  # a cold `prefect server start` (migrations, UI build) here: ~10-25 s
RUNNER_READY_S = 90.0


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    prefect_port: int = 4200
    limit: int | None = None
    runner: bool = True  # False: workers of the deployments' work pool execute the runs


@dataclass
class Served:
    """What one ``serve`` started, and how to reach it."""

    api_url: str
    prefect_api_url: str
    ui_url: str | None
    children: dict[str, subprocess.Popen] = field(default_factory=dict)


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RequestError("port_in_use", f"port {port} on {host} is in use ({exc.strerror}): {what} cannot "
                                              f"listen there; stop what uses it or choose another with {option}")


def _spawn(command: list[str], *, log_path: Path | None, env: dict[str, str]) -> subprocess.Popen:
    sink = log_path.open("ab") if log_path is not None else None
    try:
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT if sink else None,
                                preexec_fn=die_with_parent(os.getpid()), start_new_session=True)
    finally:
        if sink is not None:
            sink.close()


def _wait_http(url: str, *, timeout: float, process: subprocess.Popen, what: str, log_path: Path | None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode} while starting:\n{tail}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f}s")


def start_prefect_server(options: ServeOptions, env: dict[str, str], logs: Path) -> tuple[subprocess.Popen, str]:
    log_path = logs / "serve-prefect-server.log"
    command = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
               "--port", str(options.prefect_port)]
    process = _spawn(command, log_path=log_path, env=env)
    api_url = f"http://127.0.0.1:{options.prefect_port}/api"
    _wait_http(f"{api_url}/health", timeout=PREFECT_START_S, process=process, what="the Prefect server",
               log_path=log_path)
    return process, api_url


def start_runner(limit: int, env: dict[str, str], logs: Path) -> subprocess.Popen:
    log_path = logs / "serve-runner.log"
    process = _spawn([sys.executable, "-m", "service.runner", "--limit", str(limit)], log_path=log_path, env=env)
    from service.launch import ready_deployment, served_flows

    deadline = time.monotonic() + RUNNER_READY_S
    waiting = set(served_flows())
    while waiting:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"the runner exited with {process.returncode} while starting:\n{tail}")
        for name in list(waiting):
            try:
                ready_deployment(name)
                waiting.discard(name)
            except RequestError:
                pass
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"the runner did not serve {', '.join(sorted(waiting))} within {RUNNER_READY_S:.0f}s")
        if waiting:
            time.sleep(0.5)
    return process


def runs_executed_by(runner_pid: int) -> list[str]:
    """Ids of the flow runs whose processes descend from ``runner_pid`` (the runner puts
    the run's id in each run process's environment)."""
    parents: dict[int, int] = {}
    environs: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            environs[int(entry.name)] = (entry / "environ").read_bytes()
        except (OSError, ValueError, IndexError):
            continue

    def descends(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            pid = parents.get(pid, 0)
            if pid == runner_pid:
                return True
            seen += 1
        return False

    runs: set[str] = set()
    for pid, environ in environs.items():
        for item in environ.split(b"\0"):
            if item.startswith(b"PREFECT__FLOW_RUN_ID=") and descends(pid):
                runs.add(item.split(b"=", 1)[1].decode())
    return sorted(runs)


def write_serve_file(path: Path, served: dict) -> None:
    """``.data/serve.json``, readable by its owner only (it holds a service token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(json.dumps(served))


def local_access(options: ServeOptions, inline: bool) -> dict:
    """What the CLI on this machine needs to hand its runs to this serve
    (``service/remote.py``): a service token for the API, and which library it serves."""
    from service.remote import library_fingerprint
    from service.tokens import issue_token

    if not inline:
        return {}
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host
    return {"local_api_url": f"http://{host}:{options.port}", "library": library_fingerprint(),
            "token": issue_token("bulkops-cli", service=True, ttl_s=LOCAL_TOKEN_TTL_S)}


def drain_runs(runner: subprocess.Popen, grace: float, say: Callable[[str], None], here=None) -> None:
    """Cancel the runs the runner executes (and those executed ``here``, in this
    process), softly, and wait for them to end (at most ``grace`` seconds): each writes
    its result document and ends Cancelled."""
    from service.control import cancel
    from service.status import FINAL, read_status

    runs = runs_executed_by(runner.pid) + (here.running() if here is not None else [])
    if not runs:
        return
    say(f"cancelling {len(runs)} running operation(s) softly: {', '.join(runs)}")
    for run_id in runs:
        try:
            cancel(run_id, by="bulkops serve stopping")
        except Exception as exc:  # noqa: BLE001 - the others still get theirs
            say(f"could not cancel {run_id}: {exc}")
    deadline = time.monotonic() + grace
    waiting = set(runs)
    while waiting and time.monotonic() < deadline:
        for run_id in list(waiting):
            try:
                document = read_status(run_id)
            except Exception:  # noqa: BLE001 - ask again
                continue
            if document is None or document["status"] in FINAL:
                waiting.discard(run_id)
        if waiting:
            time.sleep(0.5)
    if here is not None:
        here.join(max(0.0, deadline - time.monotonic()))
    if waiting:
        say(f"{len(waiting)} run(s) had not ended after {grace:.0f}s (BULKOPS_SHUTDOWN_GRACE): "
            f"{', '.join(sorted(waiting))}; the runner stops them now")


def stop_process(process: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def serve(options: ServeOptions, *, say: Callable[[str], None]) -> int:
    """Run everything until SIGTERM or Ctrl-C; 0 after a clean stop. Refusals
    (``bad_settings``, ``port_in_use``) raise :class:`RequestError` before anything starts."""
    settings = get_settings()
    secret = jwt_secret()  # bad_settings when unset
    limit = options.limit or settings.serve_limit
    if not 1 <= limit <= 64:
        raise RequestError("usage", "--limit must be between 1 and 64")
    if bool(settings.webhook_url) != bool(settings.webhook_secret and settings.webhook_secret.get_secret_value()):
        missing = "BULKOPS_WEBHOOK_SECRET" if settings.webhook_url else "BULKOPS_WEBHOOK_URL"
        raise RequestError("bad_settings", f"webhooks need both BULKOPS_WEBHOOK_URL and BULKOPS_WEBHOOK_SECRET: "
                                           f"set {missing}, or unset the other")
    own_prefect = not os.environ.get("PREFECT_API_URL")
    check_port_free(options.host, options.port, "the API", "--port")
    if own_prefect:
        check_port_free("127.0.0.1", options.prefect_port, "the Prefect server", "--prefect-port")
    if len(secret.encode()) < SHORT_SECRET:
        say(f"warning: BULKOPS_JWT_SECRET is {len(secret.encode())} bytes; use at least {SHORT_SECRET} "
            "(for instance `openssl rand -hex 32`)")

    # Signals: noted here, acted on in order below (uvicorn stops first, then the runs).
    stopping: list[int] = []

    def note(signum, _frame) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    prefect_defaults()
    logs = Path(settings.data_dir)
    logs.mkdir(parents=True, exist_ok=True)
    children: dict[str, subprocess.Popen] = {}
    deliveries = None
    state_file = serve_file()
    try:
        env = dict(os.environ)
        if own_prefect:
            say(f"starting a Prefect server on 127.0.0.1:{options.prefect_port} ...")
            children["prefect"], prefect_api = start_prefect_server(options, env, logs)
            os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"] = prefect_api
        else:
            prefect_api = os.environ["PREFECT_API_URL"]
        if stopping:
            return 0
        from service.automations import ensure_automations
        from service.environment import ui_url

        ensure_automations()
        inline = None
        if options.runner:
            say(f"starting the runner (at most {limit} runs at once) ...")
            children["runner"] = start_runner(limit, env, logs)
            from service.inline import enable

            inline = enable(limit)  # the CLI's runs, executed warm in this process
        else:
            _check_workers(say)
        if stopping:
            return 0
        if settings.webhook_url:
            from service.webhooks import DeliveryLoop

            deliveries = DeliveryLoop()
            deliveries.start()
        api_url = f"http://{options.host}:{options.port}"
        served = Served(api_url=api_url, prefect_api_url=prefect_api, ui_url=ui_url(), children=children)
        write_serve_file(state_file, {
            "pid": os.getpid(), "api_url": api_url, "prefect_api_url": prefect_api, "ui_url": served.ui_url,
            "started_at": datetime.now(UTC).isoformat(), **local_access(options, inline is not None)})
        _run_api(options, served, say, stopping)
        say("stopping: no new requests; waiting for the running operations ...")
        if "runner" in children:
            drain_runs(children["runner"], settings.shutdown_grace, say, here=inline)
        return 0
    finally:
        if deliveries is not None:
            deliveries.stop()
        try:
            if state_file.exists() and json.loads(state_file.read_text()).get("pid") == os.getpid():
                state_file.unlink()
        except (OSError, ValueError):
            pass
        stop_process(children.get("runner"))
        stop_process(children.get("prefect"))
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_workers(say: Callable[[str], None]) -> None:
    """Without a runner of its own, the deployments' workers execute the runs: say so
    now if nothing would (the API still answers; triggers are 503 ``no_runner`` meanwhile)."""
    from service.launch import ready_deployment, served_flows

    for name in served_flows():
        try:
            ready_deployment(name)
        except RequestError as exc:
            say(f"warning: {exc.message}")


def _run_api(options: ServeOptions, served: Served, say: Callable[[str], None], stopping: list[int]) -> None:
    import uvicorn

    from api import create_app

    from api.watch import STOPPING

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            STOPPING.set()  # event streams end now: the stop does not wait for their clients
            super().handle_exit(sig, frame)

    config = uvicorn.Config(create_app(), host=options.host, port=options.port, log_level="warning",
                            lifespan="off", timeout_graceful_shutdown=10)
    server = Server(config)
    ui = f", Prefect UI {served.ui_url}" if served.ui_url else ""
    say(f"bulkops serve: API {served.api_url} (docs {served.api_url}/docs){ui}; Prefect API "
        f"{served.prefect_api_url}. Ctrl-C or SIGTERM stops it.")
    if stopping:
        return
    # uvicorn takes SIGINT/SIGTERM while it runs and hands them back to our handler when
    # it has stopped, so the stop goes on below.
    server.run()
    for child, process in served.children.items():
        if process.poll() is not None:
            say(f"the {child} exited with {process.returncode}")
