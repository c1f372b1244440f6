"""SessionClient against answers that are not the session service's, over real HTTP on
loopback: a proxy's HTML page, invalid msgpack, a map without the contract's fields,
an answer announcing or streaming more than MAX_ANSWER_BYTES. Each is a BadAnswer
naming what was wrong (never a KeyError or a msgpack exception from deep inside),
and an oversized answer is refused without being read whole."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from session_service import client as client_module
from session_service.client import BadAnswer, SessionClient
from session_service.errors import LockTimeout, SessionLocked
from tests.support import session_id

Answer = tuple[int, dict[str, str], bytes]


class _Server:
    """Answers every request with `answer` (status, headers, body), or with what
    `stream` writes itself."""

    def __init__(self) -> None:
        self.answer: Answer = (200, {}, b"")
        self.stream: Callable[[Any], None] | None = None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                if length:
                    self.rfile.read(length)
                if owner.stream is not None:
                    owner.stream(self)
                    return
                status, headers, body = owner.answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def _msgpack(payload: Any) -> Answer:
    return 200, {"Content-Type": "application/msgpack"}, msgpack.packb(payload)


CASES: dict[str, tuple[Answer, str]] = {
    "html page": (
        (200, {"Content-Type": "text/html"}, b"<html>502 Bad Gateway</html>"),
        "answer is text/html, not msgpack",
    ),
    "untyped": ((200, {}, b"\x81\xa1a\x01"), "answer is untyped, not msgpack"),
    "invalid msgpack": (
        (200, {"Content-Type": "application/msgpack"}, b"\xc1\xc1"),
        "not valid msgpack",
    ),
    "not a map": (_msgpack([1, 2, 3]), "not a msgpack map"),
    "no version": (_msgpack({"data": b"x", "expires_at": 1}), "integer version"),
    "data not bytes": (
        _msgpack({"data": 12, "version": 1, "expires_at": 1, "lock": "t"}),
        "bytes data",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_an_answer_outside_the_contract_is_a_bad_answer(server: _Server, case: str) -> None:
    answer, said = CASES[case]
    server.stream, server.answer = None, answer
    sid = session_id()
    with SessionClient(server.url, "secret") as client:
        with pytest.raises(BadAnswer, match=said):
            client.read(sid)
        with pytest.raises(BadAnswer, match=said):
            client.lock(sid)
        if case != "data not bytes":  # a write's answer has no data: that one is fine
            with pytest.raises(BadAnswer):
                client.write(sid, b"x", 60, lock="t")


def test_an_error_page_that_is_not_ours_keeps_its_status(server: _Server) -> None:
    """A proxy's 502 page: a ServiceError with the status and the start of the page."""
    server.stream, server.answer = None, (502, {"Content-Type": "text/html"}, b"<h1>down</h1>")
    with (
        SessionClient(server.url, "secret") as client,
        pytest.raises(client_module.ServiceError) as raised,
    ):
        client.read(session_id())
    assert raised.value.status == 502 and "<h1>down</h1>" in raised.value.detail


def test_a_423_with_a_retry_after_date_is_still_a_lock_timeout(server: _Server) -> None:
    """Retry-After may be an HTTP date (a proxy in between): the client waits 1 s, and
    raises the store's error instead of a ValueError from parsing it."""
    body = msgpack.packb({"error": "lock_timeout", "detail": "held"})
    headers = {
        "Content-Type": "application/msgpack",
        "Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT",
    }
    server.stream, server.answer = None, (423, headers, body)
    with SessionClient(server.url, "secret") as client, pytest.raises(LockTimeout) as raised:
        client.lock(session_id())
    assert raised.value.retry_after_ms == 1000 and not isinstance(raised.value, SessionLocked)


def test_an_answer_announcing_too_much_is_refused_before_its_body_is_read(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_ANSWER_BYTES", 1000)

    def announce(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/msgpack")
        handler.send_header("Content-Length", str(10**9))
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b"\x00" * 1000)
        except OSError:
            pass  # the client stopped reading and closed

    server.stream = announce
    with (
        SessionClient(server.url, "secret") as client,
        pytest.raises(BadAnswer, match="announces 1000000000 bytes, over 1000"),
    ):
        client.read(session_id())


def test_an_answer_streaming_too_much_is_cut_off(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_ANSWER_BYTES", 10_000)

    def stream(handler: Any) -> None:  # chunked, no length announced
        handler.protocol_version = "HTTP/1.1"
        handler.send_response(200)
        handler.send_header("Content-Type", "application/msgpack")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            for _ in range(1000):
                handler.wfile.write(b"3e8\r\n" + b"\x00" * 1000 + b"\r\n")
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    server.stream = stream
    with (
        SessionClient(server.url, "secret") as client,
        pytest.raises(BadAnswer, match="answer over 10000 bytes"),
    ):
        client.read(session_id())
