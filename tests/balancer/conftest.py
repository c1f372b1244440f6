"""Fixtures for the balancer tests: real backend processes and a real balancer process.

Everything listens on free loopback ports; nothing is mocked. Waiting loops are bounded
in count and time, and they wait for a state (a port open, a backend UP), never assert
on how long something took.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stack.processes import Process, wait_port
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
BACKEND_SCRIPT = Path(__file__).with_name("backend_server.py")


class BackendProcess:
    """One backend server process that answers with its name; can be killed and restarted."""

    def __init__(self, name: str, sick_dir: Path | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.proc: Process | None = None
        self.sick_dir = sick_dir

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        env = dict(os.environ)
        if self.sick_dir is not None:
            env["SICK_DIR"] = str(self.sick_dir)
        cmd = [sys.executable, str(BACKEND_SCRIPT), str(self.port), self.name]
        self.proc = Process(self.name, cmd, Path(os.devnull), env).start()
        if wait:
            self.wait()

    def wait(self) -> None:
        wait_port(self.port, process=self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        self.proc = None

    def set_sick(self, sick: bool) -> None:
        """Make this backend's /health answer 503 (it keeps serving everything else)."""
        assert self.sick_dir is not None
        flag = self.sick_dir / self.name
        if sick:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def count(self) -> dict[str, int]:
        """Requests and bytes this backend has received, asked directly (not via the balancer)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/_count")
            data: dict[str, int] = json.loads(conn.getresponse().read())
            return data
        finally:
            conn.close()


class Balancer:
    """The balancer as a real subprocess (``python -m balancer``)."""

    def __init__(self, args: list[str], port: int, stats_port: int) -> None:
        self.port = port
        self.stats_port = stats_port
        self.args = args
        handle, log = tempfile.mkstemp(prefix="balancer-", suffix=".log")
        os.close(handle)
        self.log = Path(log)
        cmd = [sys.executable, "-m", "balancer", *args]
        self.proc = Process("balancer", cmd, self.log, cwd=ROOT).start()
        try:
            self.proc.wait_port(port)
            if stats_port:
                self.proc.wait_port(stats_port)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.stop()}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def stats(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.stats_port, timeout=10)
        try:
            conn.request("GET", "/stats")
            data: dict[str, Any] = json.loads(conn.getresponse().read())
            return data
        finally:
            conn.close()

    def backend_states(self) -> dict[str, str]:
        backends = self.stats()["backends"]
        assert isinstance(backends, list)
        return {b["name"]: b["state"] for b in backends}

    def wait_state(self, name: str, state: str) -> None:
        """Poll the stats page until backend ``name`` reaches ``state`` (bounded)."""
        for _ in range(300):
            if self.backend_states().get(name) == state:
                return
            time.sleep(0.05)
        raise AssertionError(f"{name} never became {state}: {self.backend_states()}")

    def stop(self) -> str:
        """Stop it; its output since the last stop (stdout and stderr)."""
        self.proc.stop(15)
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        finally:
            self.log.unlink(missing_ok=True)


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[BackendProcess]]:
    """Three started backends named b1, b2, b3."""
    started = [BackendProcess(f"b{i}", tmp_path) for i in (1, 2, 3)]
    try:
        for backend in started:
            backend.start(wait=False)
        for backend in started:
            backend.wait()
        yield started
    finally:
        for backend in started:
            backend.kill()


# Short health-check intervals keep the suite fast; a generous timeout and fall 2 keep a
# loaded machine from flapping healthy backends (a killed one is refused at once).
FAST_CHECKS = ["--check-interval", "0.1", "--check-timeout", "2", "--rise", "2", "--fall", "2"]

StartBalancer = Callable[..., Balancer]


def make_balancer(
    backs: list[BackendProcess], *options: str, specs: list[str] | None = None
) -> Balancer:
    """Start a balancer in front of ``backs`` (named after them) with extra ``options``."""
    port, stats_port = free_port(), free_port()
    if specs is None:
        specs = [f"{b.address},name={b.name}" for b in backs]
    args = ["-f", "--stats", str(stats_port), *options, str(port), *specs]
    return Balancer(args, port, stats_port)


@pytest.fixture
def start_balancer() -> Iterator[StartBalancer]:
    """Start a balancer: ``start_balancer(backends, *options)``; stopped after the test."""
    running: list[Balancer] = []

    def start(
        backs: list[BackendProcess], *options: str, specs: list[str] | None = None
    ) -> Balancer:
        balancer = make_balancer(backs, *options, specs=specs)
        running.append(balancer)
        return balancer

    yield start
    for balancer in running:
        balancer.stop()


def get(port: int, path: str = "/", conn: http.client.HTTPConnection | None = None) -> str:
    """GET through the balancer; returns the body text, asserting a 200."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
        return body
    finally:
        if own:
            conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, then read until the balancer closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
