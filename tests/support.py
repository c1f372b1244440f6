"""Shared helpers for tests: free ports, real service processes, MariaDB databases."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pymysql

ROOT = Path(__file__).resolve().parent.parent
MARIADB_HOST = os.environ.get("SESSION_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("SESSION_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("SESSION_TEST_MARIADB_USER", "root")
MARIADB_PASSWORD = os.environ.get("SESSION_TEST_MARIADB_PASSWORD", "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mariadb_connect(database: str | None = None) -> pymysql.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host=MARIADB_HOST,
        port=MARIADB_PORT,
        user=MARIADB_USER,
        password=MARIADB_PASSWORD,
        database=database,
        autocommit=True,
        connect_timeout=3,
    )


def mariadb_url(database: str) -> str:
    auth = MARIADB_USER + (f":{MARIADB_PASSWORD}" if MARIADB_PASSWORD else "")
    return f"mysql+pymysql://{auth}@{MARIADB_HOST}:{MARIADB_PORT}/{database}"


def create_database() -> str:
    name = f"sstest_{uuid.uuid4().hex[:12]}"
    with mariadb_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    return name


def drop_database(name: str) -> None:
    with mariadb_connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def wait_until(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


@dataclass
class ServiceProcess:
    """A real `session-service serve` process on a loopback port."""

    db_url: str
    tokens: str = "default:secret,other:othersecret"
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    tls: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> ServiceProcess:
        args = [
            sys.executable, "-m", "session_service", "serve",
            "--db", self.db_url, "--port", str(self.port), "--tokens", self.tokens,
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, **self.env}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env, cwd=ROOT)
        if wait_ready and not wait_until(self.ready, 20):
            self.stop()
            raise RuntimeError(f"service on port {self.port} did not become ready")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"service exited with {self.proc.returncode}")
        try:
            return httpx.get(self.url + "/readyz", timeout=1, verify=False).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


#: Every id handed out by session_id() in this run: the log check at the end of the run
#: (tests/conftest.py) makes sure none of them appears in any log file.
ISSUED_IDS: set[str] = set()


def session_id() -> str:
    """A fresh id in PHP's alphabet (32 chars, like PHP's default)."""
    sid = uuid.uuid4().hex
    ISSUED_IDS.add(sid)
    return sid


def iter_services(services: list[ServiceProcess]) -> Iterator[ServiceProcess]:
    yield from services
