"""HTTP/1.1 on the wire, byte by byte, for /v1/sessions requests (answered by the
service's own protocol path, DirectCycle) next to requests that take uvicorn's ASGI
path: keep-alive, pipelining, HTTP/1.0, HEAD, Expect: 100-continue, one write per
response, and a client that goes away mid-request."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httptools
import msgpack
import pytest

from tests.support import ServiceProcess, session_id

AUTH = b"Authorization: Bearer secret\r\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    base: Path = tmp_path_factory.mktemp("wire")
    process = ServiceProcess(
        db_url=f"sqlite:///{base / 'sessions.db'}", log_path=base / "service.log"
    ).start()
    yield process
    process.stop()


class _Responses:
    """Parses every response that arrives on one connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""


def _connect(service: ServiceProcess) -> socket.socket:
    host, port = service.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read(conn: socket.socket, responses: _Responses, count: int, head: bool = False) -> None:
    if head:  # a HEAD response has headers only: the parser must be told
        responses.parser = httptools.HttpResponseParser(responses)
        responses.parser.set_dangerous_leniencies(lenient_data_after_close=True)
    while len(responses.done) < count:
        chunk = conn.recv(65536)
        if not chunk:
            break
        if head:
            text, _, _ = chunk.partition(b"\r\n\r\n")
            status = int(text.split(b" ", 2)[1])
            headers = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(b":") for line in text.split(b"\r\n")[1:])
            )
            responses.done.append((status, headers, b""))
            continue
        responses.parser.feed_data(chunk)


def _lock(sid: str, version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/sessions/%s/lock?wait_ms=2000 HTTP/%s\r\nHost: t\r\n%s"
        b"Accept: application/msgpack\r\nContent-Length: 0\r\n%s\r\n"
        % (sid.encode(), version, AUTH, extra)
    )


def _locked(conn: socket.socket, sid: str) -> tuple[_Responses, str]:
    """Lock `sid` on this connection: the parser (one response read) and the lock token."""
    conn.sendall(_lock(sid))
    responses = _Responses()
    _read(conn, responses, 1)
    assert responses.done[0][0] == 200
    return responses, str(msgpack.unpackb(responses.done[0][2])["lock"])


def _write(sid: str, lock: str, data: bytes, extra: bytes = b"") -> tuple[bytes, bytes]:
    body = msgpack.packb({"data": data, "ttl": 600, "lock": lock})
    head = (
        b"PUT /v1/sessions/%s HTTP/1.1\r\nHost: t\r\n%sContent-Type: application/msgpack\r\n"
        b"Accept: application/msgpack\r\nContent-Length: %d\r\n%s\r\n"
        % (sid.encode(), AUTH, len(body), extra)
    )
    return head, body


def test_keep_alive_and_pipelined_requests_are_answered_in_order(
    service: ServiceProcess,
) -> None:
    sids = [session_id() for _ in range(3)]
    with _connect(service) as conn:
        # three lock requests, a health check (ASGI path) and a bad id, all in one send
        conn.sendall(
            _lock(sids[0])
            + _lock(sids[1])
            + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            + _lock(sids[2])
            + _lock("short")
        )
        responses = _Responses()
        _read(conn, responses, 5)
        statuses = [status for status, _, _ in responses.done]
        assert statuses == [200, 200, 200, 200, 400]
        locks = [msgpack.unpackb(body)["lock"] for _, _, body in responses.done[:2]]
        assert responses.done[2][2] == b'{"status":"ok"}'
        for _status, headers, body in responses.done:
            assert int(headers[b"content-length"]) == len(body)
            assert b"date" in headers and b"server" not in headers
        # the connection is still usable: write the first two sessions on it
        for sid, lock in zip(sids, locks, strict=False):
            head, body = _write(sid, lock, b"x" * 10)
            conn.sendall(head + body)
        _read(conn, responses, 7)
        assert [s for s, _, _ in responses.done[5:]] == [200, 200]


def test_http_1_0_gets_connection_close(service: ServiceProcess) -> None:
    with _connect(service) as conn:
        conn.sendall(_lock(session_id(), version=b"1.0"))
        responses = _Responses()
        _read(conn, responses, 1)
        status, headers, _ = responses.done[0]
        assert status == 200 and headers[b"connection"] == b"close"
        assert conn.recv(1) == b"", "the service closes the connection"


def test_head_has_headers_and_no_body(service: ServiceProcess) -> None:
    with _connect(service) as conn:
        conn.sendall(
            b"HEAD /v1/sessions/%s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (session_id().encode(), AUTH)
        )
        responses = _Responses()
        _read(conn, responses, 1, head=True)
        status, headers, _ = responses.done[0]
        assert status == 404 and headers[b"content-length"] == b"0"
        conn.settimeout(0.3)
        with pytest.raises(TimeoutError):
            conn.recv(1)  # nothing follows the headers


def test_expect_100_continue_then_body(service: ServiceProcess) -> None:
    sid = session_id()
    with _connect(service) as conn:
        responses, lock = _locked(conn, sid)
        head, body = _write(sid, lock, b"after continue", b"Expect: 100-continue\r\n")
        conn.sendall(head)
        interim = conn.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.sendall(body)
        rest = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
        if rest:
            responses.parser.feed_data(rest)
        _read(conn, responses, 2)
        assert responses.done[1][0] == 200
        assert msgpack.unpackb(responses.done[1][2])["version"] == 1


def test_each_response_arrives_in_one_piece(service: ServiceProcess) -> None:
    """Status line, headers and body in one write: the first recv() holds it all."""
    with _connect(service) as conn:
        for _ in range(5):
            conn.sendall(_lock(session_id()))
            time.sleep(0.05)
            first = conn.recv(65536)
            responses = _Responses()
            responses.parser.feed_data(first)
            assert len(responses.done) == 1, first


def test_client_gone_mid_body_leaves_the_service_serving(service: ServiceProcess) -> None:
    sid = session_id()
    with _connect(service) as conn:
        _, lock = _locked(conn, sid)
        head, body = _write(sid, lock, b"never finished")
        conn.sendall(head + body[:5])  # then hang up
    with _connect(service) as conn:  # the lease is still held, the session untouched
        conn.sendall(_lock(sid).replace(b"wait_ms=2000", b"wait_ms=0"))
        responses = _Responses()
        _read(conn, responses, 1)
        assert responses.done[0][0] == 423
        head, body = _write(sid, lock, b"finished")
        conn.sendall(head + body)
        _read(conn, responses, 2)
        assert responses.done[1][0] == 200


def test_replies_carry_date_type_length_and_problem_headers(service: ServiceProcess) -> None:
    """The start of a reply is cached per status and media type (http_protocol._head):
    each reply still has its own length, the current date and its extra headers."""
    sid = session_id()
    with _connect(service) as conn:
        responses, lock = _locked(conn, sid)
        head, body = _write(sid, lock, b"x" * 1000)
        conn.sendall(head + body)
        conn.sendall(_lock("short"))  # 400 with a JSON-or-msgpack problem body
        time.sleep(1.1)  # the date header moves on
        conn.sendall(_lock(sid).replace(b"wait_ms=2000", b"wait_ms=0"))
        conn.sendall(_lock(sid).replace(b"wait_ms=2000", b"wait_ms=0"))  # held: 423
        _read(conn, responses, 5)
    (s1, h1, b1), (s2, h2, b2), (s3, h3, b3), (s4, h4, b4), (s5, h5, b5) = responses.done
    assert [s1, s2, s3, s4, s5] == [200, 200, 400, 200, 423]  # locked: Retry-After
    assert int(h5[b"retry-after"]) >= 1
    for headers, body in ((h1, b1), (h2, b2), (h3, b3), (h4, b4), (h5, b5)):
        assert headers[b"content-type"] == b"application/msgpack"
        assert int(headers[b"content-length"]) == len(body)
        assert headers[b"date"].endswith(b" GMT")
    assert h1[b"date"] != h4[b"date"], "a cached reply start must not freeze the date"


def _until_closed(conn: socket.socket, chunk: bytes, most: int) -> bytes:
    """Send `chunk` until `most` bytes went out or the service closes; then what it said."""
    sent = 0
    try:
        while sent < most:
            conn.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed by the service: its answer may still be readable
    received = b""
    try:
        while part := conn.recv(65536):
            received += part
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize("shape", ["endless headers", "one huge header", "huge url"])
def test_a_request_head_over_64_kib_is_refused_with_431(
    service: ServiceProcess, shape: str
) -> None:
    """uvicorn keeps a head's bytes until it is complete: a head that never ends must
    not grow the service without limit. It is answered 431, the connection closed."""
    with _connect(service) as conn:
        if shape == "endless headers":
            conn.sendall(b"GET /v1/sessions/%s HTTP/1.1\r\nHost: t\r\n" % session_id().encode())
            answer = _until_closed(conn, b"X-Junk: " + b"a" * 1000 + b"\r\n", 8 << 20)
        elif shape == "one huge header":
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Junk: ")
            answer = _until_closed(conn, b"a" * 4096, 8 << 20)
        else:
            conn.sendall(b"GET /v1/sessions/")
            answer = _until_closed(conn, b"a" * 4096, 8 << 20)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert body == b"request line and headers exceed 65536 bytes"
    # the service goes on serving
    with _connect(service) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        responses = _Responses()
        _read(conn, responses, 1)
        assert responses.done[0][0] == 200


def test_a_large_head_within_the_limit_is_served(service: ServiceProcess) -> None:
    """60 KiB of headers on keep-alive requests, one after another: each head counts
    on its own, and every request is answered normally."""
    sid = session_id()
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(60))
    with _connect(service) as conn:
        responses = _Responses()
        for _ in range(3):
            conn.sendall(_lock(sid, extra=padding))
            _read(conn, responses, len(responses.done) + 1)
            lock = msgpack.unpackb(responses.done[-1][2])["lock"]
            head, body = _write(sid, lock, b"x", extra=padding)
            conn.sendall(head + body)
            _read(conn, responses, len(responses.done) + 1)
        assert [status for status, _, _ in responses.done] == [200] * 6


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service that gives a request head, and then its body, half a second."""
    base: Path = tmp_path_factory.mktemp("wire-impatient")
    process = ServiceProcess(
        db_url=f"sqlite:///{base / 'sessions.db'}",
        log_path=base / "service.log",
        extra_args=["--request-read-timeout", "0.5"],
    ).start()
    yield process
    process.stop()


def _closed_with(conn: socket.socket, started: float) -> tuple[bytes, float]:
    """Everything the service sends until it closes, and when it closed."""
    received = b""
    while part := conn.recv(65536):
        received += part
    return received, time.monotonic() - started


@pytest.mark.parametrize(
    "sends", [b"", b"GET /healthz HT", b"GET /healthz HTTP/1.1\r\nHost: t\r\n"]
)
def test_a_head_not_complete_in_time_is_answered_408(
    impatient: ServiceProcess, sends: bytes
) -> None:
    """A connection that sends nothing, or part of a head, is not kept for ever (uvicorn
    sets no timer until a head is complete): 408, then closed."""
    with _connect(impatient) as conn:
        started = time.monotonic()
        conn.sendall(sends)
        answer, after = _closed_with(conn, started)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert answer.endswith(b"\r\n\r\nno complete request line and headers in time")
    assert 0.4 < after < 5, after


def test_a_head_dribbled_byte_by_byte_does_not_keep_the_connection(
    impatient: ServiceProcess,
) -> None:
    """Each byte of a head that never ends must not restart the clock."""
    with _connect(impatient) as conn:
        started = time.monotonic()
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        try:
            for _ in range(50):
                conn.sendall(b"X")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer, after = _closed_with(conn, started)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert after < 2.5, after


def test_slow_requests_within_the_timeout_are_served_and_keep_alive_goes_on(
    impatient: ServiceProcess,
) -> None:
    """A head in pieces within the timeout is served; each request on a kept-alive
    connection gets its own time; a partial head after them still times out."""
    with _connect(impatient) as conn:
        responses = _Responses()
        for count in range(1, 4):
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(0.3)
            conn.sendall(b"Host: t\r\n\r\n")
            _read(conn, responses, count)
            time.sleep(0.3)  # idle between requests: uvicorn's keep-alive (5 s) applies
        assert [status for status, _, _ in responses.done] == [200, 200, 200]
        conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        answer, _ = _closed_with(conn, time.monotonic())
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def test_a_body_not_complete_in_time_is_answered_408_and_nothing_written(
    impatient: ServiceProcess,
) -> None:
    """A write whose body stops halfway: 408 and closed; the session is not written."""
    sid = session_id()
    with _connect(impatient) as conn:
        responses, lock = _locked(conn, sid)
        conn.sendall(b"".join(_write(sid, lock, b"first")))
        _read(conn, responses, 2)
        assert responses.done[1][0] == 200
        _, lock = _locked(conn, sid)
        head, body = _write(sid, lock, b"y" * 100)
        started = time.monotonic()
        conn.sendall(head + body[:20])
        answer, after = _closed_with(conn, started)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert answer.endswith(b"\r\n\r\nrequest body not complete in time")
    assert 0.4 < after < 5, after
    with _connect(impatient) as conn:
        conn.sendall(
            b"GET /v1/sessions/%s HTTP/1.1\r\nHost: t\r\n%sAccept: application/msgpack\r\n\r\n"
            % (sid.encode(), AUTH)
        )
        responses = _Responses()
        _read(conn, responses, 1)
    status, _, reply = responses.done[0]
    assert status == 200 and msgpack.unpackb(reply)["data"] == b"first"


def test_a_body_in_pieces_within_the_timeout_is_served(impatient: ServiceProcess) -> None:
    sid = session_id()
    with _connect(impatient) as conn:
        responses, lock = _locked(conn, sid)
        head, body = _write(sid, lock, b"z" * 100)
        conn.sendall(head + body[:20])
        time.sleep(0.15)
        conn.sendall(body[20:60])
        time.sleep(0.15)  # 0.3 s in all: the body's time runs from the end of its head
        conn.sendall(body[60:])
        _read(conn, responses, 2)
        assert responses.done[1][0] == 200, responses.done[1]


def test_a_request_answered_before_its_body_is_closed_quietly(
    impatient: ServiceProcess,
) -> None:
    """Refused before its body was read (here: no token) and the body never comes: the
    connection is closed when the time is up, with nothing after the refusal."""
    with _connect(impatient) as conn:
        conn.sendall(
            b"PUT /v1/sessions/%s HTTP/1.1\r\nHost: t\r\nContent-Type: application/msgpack\r\n"
            b"Content-Length: 100\r\n\r\n" % session_id().encode()
        )
        answer, after = _closed_with(conn, time.monotonic())
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert after < 5, after
