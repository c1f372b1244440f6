"""Strict parsing and limits: smuggling shapes get a 400 and never reach a backend."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.balancer.conftest import (
    BackendProcess,
    Balancer,
    StartBalancer,
    make_balancer,
    raw_exchange,
)

H = b"POST / HTTP/1.1\r\nHost: t\r\n"
SMUGGLING = {
    "content-length and transfer-encoding": H
    + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding and content-length": H
    + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "conflicting content-length": H + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "repeated content-length": H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "content-length list": H + b"Content-Length: 3, 3\r\n\r\nabc",
    "invalid content-length": H + b"Content-Length: 3x\r\n\r\nabc",
    "signed content-length": H + b"Content-Length: +3\r\n\r\nabc",
    "invalid chunk size": H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk size overflow": H + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nx\r\n",
    "unknown transfer-encoding": H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "transfer-coding list ending in chunked": H
    + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "repeated transfer-encoding": H
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obsolete line folding": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\r\n c\r\n\r\n",
    "bare LF line end": b"GET / HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n",
    "bare CR in header": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\rc\r\n\r\n",
    "bare LF in chunk": H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n",
    "two host headers": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "missing host": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
}


@pytest.fixture
def one_backend(backends: list[BackendProcess]) -> BackendProcess:
    return backends[0]


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[BackendProcess, Balancer]]:
    """One backend and one balancer for all the smuggling shapes (they are independent)."""
    backend = BackendProcess("b1")
    backend.start()
    balancer = make_balancer([backend])
    yield backend, balancer
    balancer.stop()
    backend.kill()


@pytest.mark.parametrize("shape", list(SMUGGLING))
def test_smuggling_shapes_get_400_and_reach_no_backend(
    shape: str, shared: tuple[BackendProcess, Balancer]
) -> None:
    one_backend, balancer = shared
    before = one_backend.count()
    answer = raw_exchange(balancer.port, SMUGGLING[shape])
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.count(b"HTTP/1.1") == 1
    assert one_backend.count() == before


def test_a_smuggled_request_after_a_good_one_is_not_forwarded(
    one_backend: BackendProcess, start_balancer: StartBalancer
) -> None:
    balancer = start_balancer([one_backend])
    before = one_backend.count()["requests"]
    good = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    answer = raw_exchange(balancer.port, good + SMUGGLING["content-length and transfer-encoding"])
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 400 " in answer
    assert one_backend.count()["requests"] == before + 1


def test_a_bad_chunk_pipelined_behind_a_good_request_is_not_forwarded(
    shared: tuple[BackendProcess, Balancer],
) -> None:
    """Found by the fuzzer: the bad request's head was queued behind the good one, then
    started once the good one was answered, and the connection hung waiting for its body."""
    one_backend, balancer = shared
    before = one_backend.count()["requests"]
    good = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    answer = raw_exchange(balancer.port, good + SMUGGLING["invalid chunk size"], timeout=5)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 400 " in answer, answer
    assert one_backend.count()["requests"] == before + 1


def test_oversized_headers_get_431(
    one_backend: BackendProcess, start_balancer: StartBalancer
) -> None:
    balancer = start_balancer([one_backend], "--max-header-size", "4096")
    before = one_backend.count()
    big = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    assert raw_exchange(balancer.port, big).startswith(b"HTTP/1.1 431 ")
    many = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150))
    assert raw_exchange(balancer.port, many + b"\r\n").startswith(b"HTTP/1.1 431 ")
    # A head that never ends is cut off once it passes the limit, not buffered forever.
    endless = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000
    assert raw_exchange(balancer.port, endless).startswith(b"HTTP/1.1 431 ")
    assert one_backend.count() == before


def pipeline(port: int, data: bytes, timeout: float = 120.0) -> bytes:
    """Send ``data`` from a thread while reading every answer until the balancer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        chunks = []
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:  # closed while the rest was still arriving
                break
            if not chunk:
                break
            chunks.append(chunk)
        sender.join(timeout)
        return b"".join(chunks)


def test_a_long_pipeline_is_answered_in_full(
    one_backend: BackendProcess, start_balancer: StartBalancer
) -> None:
    """20,000 GETs on one connection: only the current head counts against the limit."""
    balancer = start_balancer([one_backend])
    count = 20_000
    request = b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 40 + b"\r\n\r\n"
    last = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    answer = pipeline(balancer.port, request * (count - 1) + last)
    assert answer.count(b"HTTP/1.1 200 ") == count, answer[-300:]
    assert b"431" not in answer


def test_the_head_limit_counts_the_current_head_exactly(
    one_backend: BackendProcess, start_balancer: StartBalancer
) -> None:
    """Complete requests before a head in the same write do not count; the head itself does."""
    balancer = start_balancer([one_backend], "--max-header-size", "4096")
    before = b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n"
    fits = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: " + b"q" * 3000
    # The last head arrives in two writes, its first part behind two complete requests.
    with socket.create_connection(("127.0.0.1", balancer.port), 30) as sock:
        sock.sendall(before * 2 + fits)
        time.sleep(0.2)
        sock.sendall(b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer[-300:]
    # A head that never ends behind complete requests is still cut off at the limit.
    endless = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000
    answer = raw_exchange(balancer.port, before + endless)
    assert answer.count(b"HTTP/1.1 200 ") == 1
    assert b"HTTP/1.1 431 " in answer


def test_websocket_upgrade_is_refused(
    one_backend: BackendProcess, start_balancer: StartBalancer
) -> None:
    balancer = start_balancer([one_backend])
    before = one_backend.count()
    upgrade = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert raw_exchange(balancer.port, upgrade).startswith(b"HTTP/1.1 501 ")
    assert one_backend.count() == before


def test_a_client_sending_headers_slowly_is_cut_off_at_the_header_timeout(
    one_backend: BackendProcess, start_balancer: StartBalancer
) -> None:
    balancer = start_balancer([one_backend], "--header-timeout", "1")
    before = one_backend.count()
    pieces = [b"GET / HTTP/1.1\r\n", b"Host: t\r\n"] + [b"X-Slow-%d: v\r\n" % i for i in range(40)]
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", balancer.port), 30) as sock:
        sock.settimeout(0.25)
        for piece in pieces:  # one header line every 0.25 s: 10 s in all if never cut off
            try:
                sock.sendall(piece)
                sent += 1
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if answer:
                break
        sock.settimeout(10)
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert sent < len(pieces), "the slow client was never cut off"
    assert one_backend.count() == before


def test_an_idle_keepalive_client_is_closed(
    one_backend: BackendProcess, start_balancer: StartBalancer
) -> None:
    balancer = start_balancer([one_backend], "--idle-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", balancer.port), 30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while not data.endswith(b"b1"):
            data += sock.recv(4096)
        sock.settimeout(10)
        assert sock.recv(4096) == b""  # closed by the balancer, without a response


def test_connections_over_max_conn_are_refused_with_503(
    one_backend: BackendProcess, start_balancer: StartBalancer
) -> None:
    balancer = start_balancer([one_backend], "--max-conn", "2")
    time.sleep(0.1)  # let the readiness probe's connection close (state, not timing)
    held = [socket.create_connection(("127.0.0.1", balancer.port), 10) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
        answer = raw_exchange(balancer.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 "), answer
    finally:
        for sock in held:
            sock.close()


def test_mutated_requests_never_crash_the_balancer(
    shared: tuple[BackendProcess, Balancer],
) -> None:
    """Fixed-seed mutations of valid requests: each gets an answer or a close, never a hang."""
    _, balancer = shared
    rng = random.Random(1234)
    seeds = [
        b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    ]
    alphabet = b"\r\n :;,\t\x00\x7fGET/0123456789abcdefABCDEF-"
    for _ in range(150):  # bounded
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[position] = rng.choice(alphabet)
            elif action == 1:
                data.insert(position, rng.choice(alphabet))
            else:
                del data[position]
        with socket.create_connection(("127.0.0.1", balancer.port), 15) as sock:
            sock.sendall(bytes(data) + b"\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)  # half-close: answered if complete, else closed
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer[:100]
    assert balancer.proc.poll() is None
    conn = socket.create_connection(("127.0.0.1", balancer.port), 10)
    conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert conn.recv(4096).startswith(b"HTTP/1.1 200 OK")
    conn.close()
