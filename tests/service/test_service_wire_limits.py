"""What one client may hold of the service, on the wire over loopback: trailer fields
after a chunked body, the number of header fields, a head's bytes however they are
split into reads, the time to a connection's first byte, the number of open
connections, and timers that must not judge a request the process has not read yet
(after SIGSTOP/SIGCONT)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from tests.service.test_service_wire import (
    AUTH,
    _closed_with,
    _connect,
    _lock,
    _locked,
    _read,
    _Responses,
    _until_closed,
    _write,
)
from tests.support import ServiceProcess, session_id, wait_until

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def _service(base: Path, *args: str) -> ServiceProcess:
    return ServiceProcess(
        db_url=f"sqlite:///{base / 'sessions.db'}",
        log_path=base / "service.log",
        extra_args=[*args],
    ).start()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = _service(tmp_path_factory.mktemp("limits"))
    yield process
    process.stop()


def _healthy(service: ServiceProcess) -> None:
    with _connect(service) as conn:
        conn.sendall(HEALTHZ)
        responses = _Responses()
        _read(conn, responses, 1)
        assert responses.done[0][0] == 200


def _read_back(service: ServiceProcess, sid: str) -> bytes | None:
    with _connect(service) as conn:
        conn.sendall(
            b"GET /v1/sessions/%s HTTP/1.1\r\nHost: t\r\n%sAccept: application/msgpack\r\n\r\n"
            % (sid.encode(), AUTH)
        )
        responses = _Responses()
        _read(conn, responses, 1)
    status, _, body = responses.done[0]
    return msgpack.unpackb(body)["data"] if status == 200 else None


def _chunked_write(sid: str, lock: str, data: bytes) -> tuple[bytes, bytes]:
    """A write whose body is chunked: its head, and the body up to its last chunk (the
    trailer section and the final CRLF are the caller's)."""
    body = msgpack.packb({"data": data, "ttl": 600, "lock": lock})
    head = (
        b"PUT /v1/sessions/%s HTTP/1.1\r\nHost: t\r\n%sContent-Type: application/msgpack\r\n"
        b"Accept: application/msgpack\r\nTransfer-Encoding: chunked\r\n\r\n" % (sid.encode(), AUTH)
    )
    return head, b"%x\r\n%s\r\n0\r\n" % (len(body), body)


# ------------------------------------------------------------------ trailer fields


def test_a_chunked_body_with_a_few_trailer_fields_is_served(service: ServiceProcess) -> None:
    sid = session_id()
    with _connect(service) as conn:
        responses, lock = _locked(conn, sid)
        head, body = _chunked_write(sid, lock, b"with trailers")
        conn.sendall(head + body + b"X-Checksum: 1\r\nX-Other: 2\r\n\r\n")
        _read(conn, responses, 2)
        assert responses.done[1][0] == 200
    assert _read_back(service, sid) == b"with trailers"


@pytest.mark.parametrize("shape", ["endless fields", "one endless field", "101 fields"])
def test_trailer_fields_over_the_head_limits_are_refused_with_431(
    service: ServiceProcess, shape: str
) -> None:
    """Trailer fields after the last chunk used to be kept without limit (one connection
    grew the service by gigabytes): they count against the head limits, and the
    request is not served."""
    sid = session_id()
    with _connect(service) as conn:
        responses, lock = _locked(conn, sid)
        head, body = _chunked_write(sid, lock, b"never stored")
        conn.sendall(head + body)
        if shape == "endless fields":
            answer = _until_closed(conn, b"X: 1\r\n" * 1000, 16 << 20)
        elif shape == "one endless field":
            conn.sendall(b"X-Junk: ")
            answer = _until_closed(conn, b"a" * 4096, 16 << 20)
        else:
            conn.sendall(b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n")
            answer = _until_closed(conn, b"", 0)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b"trailer fields exceed 65536 bytes or 100 fields")
    # the write was not applied, and its lock is still held by the same token
    with _connect(service) as conn:
        head, body = _write(sid, lock, b"after")
        conn.sendall(head + body)
        responses = _Responses()
        _read(conn, responses, 1)
        assert responses.done[0][0] == 200
    assert _read_back(service, sid) == b"after"


def test_endless_trailers_after_an_early_answer_close_the_connection_quietly(
    service: ServiceProcess,
) -> None:
    """A chunked write refused before its body was read (no token): its endless
    trailers end the connection, with no second answer after the first."""
    head, body = _chunked_write(session_id(), "0" * 32, b"x")
    with _connect(service) as conn:
        conn.sendall(head.replace(AUTH, b"") + body)
        answer = _until_closed(conn, b"X: 1\r\n" * 1000, 16 << 20)
    # 401, or 431 when the trailers were over the limits before the 401 was written
    assert answer.startswith((b"HTTP/1.1 401 ", b"HTTP/1.1 431 ")), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer


# ------------------------------------------------------------------ header fields and bytes


def test_more_than_100_header_fields_are_refused_with_431(service: ServiceProcess) -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(100))  # with Host: 101
    with _connect(service) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
        answer, _ = _closed_with(conn, time.monotonic())
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert answer.endswith(b"more than 100 header fields")
    with _connect(service) as conn:  # 100 in all are served
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + fields[fields.index(b"X-F1:") :])
        conn.sendall(b"\r\n")
        responses = _Responses()
        _read(conn, responses, 1)
        assert responses.done[0][0] == 200


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_head_over_64_kib_in_one_write_is_refused_with_431(
    service: ServiceProcess, pipelined: bool
) -> None:
    """A 70 KB head sent in one piece (alone, or after a small request in the same
    write) counts its own bytes, however the reads fall."""
    big = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n"
    with _connect(service) as conn:
        conn.sendall((HEALTHZ if pipelined else b"") + big)
        answer, _ = _closed_with(conn, time.monotonic())
    if pipelined:
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        answer = answer[answer.index(b"HTTP/1.1 ", 10) :]
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert answer.endswith(b"request line and headers exceed 65536 bytes")
    _healthy(service)


def test_a_write_with_a_large_body_in_one_read_is_served(service: ServiceProcess) -> None:
    """A head and a 200 KB body in one write: only the head counts against 64 KiB."""
    sid = session_id()
    with _connect(service) as conn:
        responses, lock = _locked(conn, sid)
        head, body = _write(sid, lock, b"y" * 200_000)
        conn.sendall(head + body)
        _read(conn, responses, 2)
        assert responses.done[1][0] == 200, responses.done[1]


# ------------------------------------------------------------------ first byte


@pytest.fixture(scope="module")
def quick_first_byte(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = _service(
        tmp_path_factory.mktemp("first-byte"), "--first-byte-timeout", "0.5",
        "--request-read-timeout", "30",
    )  # fmt: skip
    yield process
    process.stop()


def test_a_connection_that_sends_nothing_is_closed_after_the_first_byte_timeout(
    quick_first_byte: ServiceProcess,
) -> None:
    with _connect(quick_first_byte) as conn:
        answer, after = _closed_with(conn, time.monotonic())
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 0.4 < after < 10, after


def test_a_head_begun_in_time_gets_the_read_timeout(quick_first_byte: ServiceProcess) -> None:
    """Once a byte came, the head has request_read_timeout (30 s here), not 0.5 s."""
    with _connect(quick_first_byte) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(1.5)
        conn.sendall(b"Host: t\r\n\r\n")
        responses = _Responses()
        _read(conn, responses, 1)
        assert responses.done[0][0] == 200


# ------------------------------------------------------------------ connection cap


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = _service(tmp_path, "--max-connections", "20", "--first-byte-timeout", "60")
    yield process
    process.stop()


def _is_closed(conn: socket.socket) -> bool:
    conn.settimeout(0.05)
    try:
        return conn.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_cannot_lock_out_a_real_client(capped: ServiceProcess) -> None:
    """40 connections that send nothing, against a cap of 20: the oldest idle ones are
    closed to make room, and a real request is served."""
    idle = [_connect(capped) for _ in range(40)]
    try:
        assert wait_until(lambda: sum(_is_closed(c) for c in idle) >= 20, 20)
        _healthy(capped)
        assert _is_closed(idle[0]), "the oldest idle connection goes first"
    finally:
        for conn in idle:
            conn.close()


def test_kept_alive_connections_go_first_and_busy_ones_are_kept(capped: ServiceProcess) -> None:
    """At the cap with one kept-alive connection and 19 in the middle of a head: the
    kept-alive one is closed for a new one; then, with none idle, a new connection is
    answered 503 and closed; the busy ones are still served."""
    kept = _connect(capped)
    kept.sendall(HEALTHZ)
    _read(kept, _Responses(), 1)
    busy = []
    try:
        for _ in range(19):
            conn = _connect(capped)
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")
            busy.append(conn)
        time.sleep(0.3)
        _healthy(capped)  # the 21st: room made by closing the kept-alive one
        assert wait_until(lambda: _is_closed(kept), 10)
        filler = _connect(capped)  # the 20th again
        filler.sendall(b"GET /healthz HTTP/1.1\r\n")
        busy.append(filler)
        time.sleep(0.3)
        with _connect(capped) as refused:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                refused.sendall(HEALTHZ)
            try:
                answer, _ = _closed_with(refused, time.monotonic())
            except ConnectionResetError:
                answer = b"(reset)"
        assert answer.startswith(b"HTTP/1.1 503 ") or answer == b"(reset)", answer[:200]
        for conn in busy:
            conn.sendall(b"Host: t\r\n\r\n")
            responses = _Responses()
            _read(conn, responses, 1)
            assert responses.done[0][0] == 200
    finally:
        kept.close()
        for conn in busy:
            conn.close()
    _healthy(capped)


def test_upgrade_requests_do_not_use_up_the_connection_cap(capped: ServiceProcess) -> None:
    """The service has no WebSocket endpoint: an upgrade request is a plain request,
    and its connection leaves the count when it closes (a connection handed to a
    WebSocket protocol would never leave it: 20 of them locked everyone out)."""
    upgrade = (
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    for _ in range(30):
        with _connect(capped) as conn:
            conn.sendall(upgrade)
            with contextlib.suppress(ConnectionResetError):
                conn.recv(65536)
    time.sleep(0.5)
    _healthy(capped)


# ------------------------------------------------------------------ a paused process


@pytest.fixture
def frozen_later(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = _service(tmp_path, "--request-read-timeout", "1", "--first-byte-timeout", "1")
    yield process
    process.stop()


def _frozen(service: ServiceProcess, seconds: float, during: bytes, conn: socket.socket) -> None:
    """Stop the service, send `during` while it is stopped, and let it go on."""
    assert service.proc is not None
    pid = service.proc.pid  # one process: the service runs a single worker here
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.2)
        conn.sendall(during)
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("wait", ["kept alive", "first byte", "rest of the head"])
def test_a_request_sent_while_the_service_was_stopped_is_served(
    frozen_later: ServiceProcess, wait: str
) -> None:
    """SIGSTOP longer than the keep-alive (5 s) or read timeout (1 s), a request sent
    during it: on SIGCONT the timers fire before the socket is read, and used to close
    the connection (a reset for the client). What waits is read first, and served."""
    sid = session_id()
    with _connect(frozen_later) as conn:
        responses = _Responses()
        if wait == "kept alive":
            responses, lock = _locked(conn, sid)
            head, body = _write(sid, lock, b"sent while stopped")
            _frozen(frozen_later, 6, head + body, conn)
        elif wait == "first byte":
            time.sleep(0.1)  # accepted before the stop
            _frozen(frozen_later, 2, _lock(sid), conn)
        else:
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")
            _frozen(frozen_later, 2, b"Host: t\r\n\r\n", conn)
        expected = len(responses.done) + 1
        _read(conn, responses, expected)
        assert len(responses.done) == expected and responses.done[-1][0] == 200
    if wait == "kept alive":
        assert _read_back(frozen_later, sid) == b"sent while stopped"


def test_the_connection_cap_fits_the_open_files_limit() -> None:
    """max_connections beyond what the process may open (hard limit 200 here) is
    lowered with a warning, rather than accept() failing for everyone later; within
    the hard limit, the soft limit is raised to fit."""
    code = (
        "import logging, resource\n"
        "logging.basicConfig(level='WARNING', format='%(message)s')\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 200))\n"
        "from session_service.api.wire_limits import _fit_open_files\n"
        "print(_fit_open_files(120), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
        "print(_fit_open_files(1000))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["120", "184", "136"], done.stdout
    assert "max_connections lowered to 136: the open files limit is 200" in done.stderr
