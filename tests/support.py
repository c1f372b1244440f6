"""Shared helpers for tests: real service processes, MariaDB databases, a fake clock.

Ports, waiting and process control come from stack.processes (the one harness for the
tests, the stack, the benchmarks and the chaos runs), re-exported here for the tests."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from stack.processes import Process, free_port, url_answers, wait_until

__all__ = ["free_port", "wait_until"]  # re-exported: the tests import them from here

ROOT = Path(__file__).resolve().parent.parent
MARIADB_HOST = os.environ.get("SESSION_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("SESSION_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("SESSION_TEST_MARIADB_USER", "root")
MARIADB_PASSWORD = os.environ.get("SESSION_TEST_MARIADB_PASSWORD", "")


def mariadb_connect(database: str | None = None) -> pymysql.Connection:
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


class FakeClock:
    """A clock the test moves by hand, so expiry is tested without sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
    proc: Process | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> ServiceProcess:
        args = [
            sys.executable, "-m", "session_service", "serve",
            "--db", self.db_url, "--port", str(self.port), "--tokens", self.tokens,
            *self.extra_args,
        ]  # fmt: skip
        log = self.log_path or Path(os.devnull)
        self.proc = Process(
            f"service on port {self.port}", args, log, {**os.environ, **self.env}, ROOT
        )
        self.proc.start()
        if wait_ready:
            try:
                self.proc.wait_for(self.ready, f"200 from {self.url}/readyz", 20)
            except BaseException:
                self.stop()
                raise
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.returncode is not None:
            raise RuntimeError(f"service exited with {self.proc.returncode}")
        return url_answers(self.url + "/readyz", timeout=1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(10, sig)
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
