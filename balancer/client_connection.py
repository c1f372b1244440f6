"""HTTP mode's entry: one client connection, parsed strictly, its requests in order.

Each request is sent to the next backend in the rotation, even on one client keep-alive
connection, so no client is pinned to a backend. Bodies stream in both directions with
transport flow control (pause/resume), so memory stays bounded whatever the body size.
Callbacks only, no coroutine per request: this path is what the benchmark measures.

Each complete request head becomes an Exchange (exchange.py), which carries it through
one or more backends over pooled BackendConnections (backend_connection.py); requests
pipelined behind it wait in a queue (reading pauses) so that answers go out in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, cast

import httptools

from balancer.exchange import Exchange
from balancer.frontend import INF, Frontend
from balancer.http_head import BadRequest, error_response, request_head

log = logging.getLogger("balancer")

# What the parser hands over, queued in order while an earlier request is answered.
HEAD, BODY, END, ERROR = range(4)


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests strictly and hands each to an Exchange."""

    def __init__(self, fe: Frontend) -> None:
        self.fe = fe
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        #: the peer is a trusted proxy: its X-Forwarded-* are kept (appended to)
        self.trusted = False
        #: what an HTTP/1.0 request without Host is forwarded with as its Host
        self.local_address = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.headers_size = 0
        self.in_head = False
        self.head_began = False
        self.error: BadRequest | None = None
        self.current: Exchange | None = None
        self.queue: deque[tuple[int, Any]] = deque()
        self.replaying = False
        self.paused: set[str] = set()
        self.write_paused = False
        self.deadline = INF
        self.closed = False
        self.client_eof = False

    # -- connection events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        fe = self.fe
        fe.total_connections += 1
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]).encode("ascii") if peer else b"unknown"
        if fe.trusted_proxies and peer:
            self.trusted = fe.is_trusted(str(peer[0]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            host = f"[{local[0]}]" if ":" in str(local[0]) else str(local[0])
            self.local_address = f"{host}:{local[1]}".encode("ascii")
        if len(fe.connections) >= fe.settings.limits.max_connections or fe.draining:
            fe.rejected_connections += 1
            self.closed = True
            self.transport.write(error_response(503, "too many connections, try again later"))
            self.transport.close()
            return
        fe.connections.add(self)
        self.deadline = fe.now + fe.settings.timeouts.idle

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fe.connections.discard(self)
        self.queue.clear()
        if self.current is not None:
            self.current.client_lost()
            self.current = None

    def data_received(self, data: bytes) -> None:
        if self.error is not None or self.closed:
            return
        fe = self.fe
        if not self.in_head:
            self.deadline = fe.now + fe.settings.timeouts.idle
        self.head_began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.error is None:
                self.error = BadRequest(
                    501, "protocol upgrades (WebSocket, CONNECT) are not supported"
                )
        except httptools.HttpParserError as exc:
            if self.error is None:
                self.error = BadRequest(400, str(exc) or "malformed request")
        if self.in_head and self.error is None:
            if self.head_began:  # earlier requests of a pipeline may fill most of this read
                self.head_size = self._head_tail(data)
            else:
                self.head_size += len(data)
            if self.head_size > fe.settings.limits.max_header_size:
                self.error = BadRequest(431, "request header section too large")
        if self.error is not None:
            fe.bad_requests += 1
            self._pause("error")
            self.in_head = False
            current = self.current
            if current is not None and not current.request_done:
                # The request being forwarded turned out malformed (a bad chunk, say):
                # drop it and its backend connection; nothing of this read was sent.
                current.client_lost()
                self.current = None
                self.queue.clear()
            elif current is not None:
                # Requests pipelined behind the current one wait in the queue: the
                # complete ones still go, but the malformed one's head and body parts
                # (everything after the last END) must never be started.
                queue = self.queue
                while queue and queue[-1][0] != END:
                    queue.pop()
                if current.outq:
                    current.flush_out()  # a complete request before the bad one still goes
            self._event(ERROR, self.error)
            return
        current = self.current
        if current is not None and current.outq:
            current.flush_out()

    def _head_tail(self, data: bytes) -> int:
        """Bytes of the unfinished head that began in ``data``: from its target to the end.

        Only the current head counts against max_header_size, not the requests pipelined
        before it in the same read. llhttp gives no offsets, so the head is found by its
        target (already received through on_url); a later copy of the target in the head
        only makes the count smaller, by less than one read, which the next read adds.
        """
        url = self.url
        if not url:
            return 0  # still in the method name
        start = data.rfind(url)
        return len(data) - start if start >= 0 else len(data)

    def eof_received(self) -> bool:
        """A client may half-close after its request: answer it, then close."""
        current = self.current
        if current is not None and current.request_done and not self.closed:
            self.client_eof = True
            return True
        return False

    def pause_writing(self) -> None:
        """The client reads slower than the backend sends: stop reading the backend."""
        self.write_paused = True
        self.deadline = self.fe.now + self.fe.settings.timeouts.idle
        current = self.current
        if current is not None and current.conn is not None:
            current.conn.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        current = self.current
        if current is not None:
            self.deadline = (
                INF if current.request_done else self.fe.now + self.fe.settings.timeouts.idle
            )
            if current.conn is not None:
                current.conn.resume()

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_began = True
        self.url = b""
        self.headers = []
        self.headers_size = 0
        self.head_size = 0
        self.deadline = self.fe.now + self.fe.settings.timeouts.header

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.headers_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.error is not None:
            return
        fe = self.fe
        limits = fe.settings.limits
        size = len(self.url) + self.headers_size
        parser = self.parser
        version = parser.get_http_version()
        if size > limits.max_header_size or len(self.headers) > limits.max_headers:
            self.error = BadRequest(431, "request header section too large")
        elif version not in ("1.1", "1.0"):
            status = 505 if version[0] >= "2" else 400
            self.error = BadRequest(status, f"HTTP/{version} is not supported")
        elif parser.should_upgrade():
            self.error = BadRequest(501, "protocol upgrades (WebSocket, CONNECT) are not supported")
        if self.error is not None:
            return
        self.deadline = fe.now + fe.settings.timeouts.idle
        method = parser.get_method()
        http11 = version == "1.1"
        try:
            head = request_head(
                method, self.url, self.headers, self.client_ip, http11,
                default_host=self.local_address, trusted=self.trusted,
            )  # fmt: skip
        except BadRequest as exc:
            self.error = exc
            return
        exchange = Exchange(
            self, method, head.data, head.chunked, http11, parser.should_keep_alive()
        )
        fe.requests += 1
        if fe.log_requests:
            exchange.target = self.url
        self._event(HEAD, exchange)

    def on_body(self, body: bytes) -> None:
        if self.error is None and not self.closed:
            self._event(BODY, body)

    def on_message_complete(self) -> None:
        if self.error is None and not self.closed:
            self._event(END, None)

    # -- sequencing of requests (pipelining) -------------------------------------------

    def _event(self, kind: int, payload: Any) -> None:
        if self.queue or (kind in (HEAD, ERROR) and self.current is not None):
            self.queue.append((kind, payload))
            self._pause("pipeline")
            return
        self._dispatch(kind, payload)

    def _dispatch(self, kind: int, payload: Any) -> None:
        if kind == HEAD:
            self.current = payload
            payload.start()
        elif kind == BODY:
            if self.current is not None:  # None when the exchange ended early
                self.current.send_body(payload)
        elif kind == END:
            if self.current is not None:
                if not self.in_head:
                    self.deadline = INF
                self.current.end_request()
        else:
            self.respond_error(payload.status, payload.detail)

    def exchange_done(self, keep_alive: bool) -> None:
        """The current response is complete: close, or go on with the next request."""
        self.current = None
        if self.closed:
            return
        if not keep_alive or self.fe.draining or self.client_eof:
            self.close()
            return
        if not self.in_head:
            self.deadline = self.fe.now + self.fe.settings.timeouts.idle
        if self.paused:  # back-pressure from the finished exchange no longer applies
            self._resume("backend")
            self._resume("connect")
        if self.replaying:
            return
        self.replaying = True
        try:
            queue = self.queue
            while queue and not self.closed:
                kind, payload = queue[0]
                if kind in (HEAD, ERROR) and self.current is not None:
                    break
                queue.popleft()
                self._dispatch(kind, payload)
                if self.current is not None and self.current.outq:
                    self.current.flush_out()
        finally:
            self.replaying = False
        if not self.queue:
            self._resume("pipeline")

    # -- helpers ---------------------------------------------------------------------------

    def _pause(self, reason: str) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def respond_error(self, status: int, detail: str) -> None:
        """Send a balancer-made error and close: the connection state is no longer trusted."""
        if self.transport is not None and not self.closed:
            self.transport.write(error_response(status, detail))
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.fe.connections.discard(self)
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.fe.connections.discard(self)
            self.transport.abort()

    def drain(self) -> None:
        if self.current is None and not self.in_head and not self.queue:
            self.close()

    def check_deadline(self, now: float) -> None:
        if self.deadline <= now:
            if self.current is not None or self.in_head:
                self.fe.timeouts += 1
            if self.in_head:
                self.respond_error(408, "request header timeout")
            elif self.current is None:
                self.close()
            else:
                log.info("client %s too slow, connection aborted", self.client_ip.decode())
                self.abort()
            return
        current = self.current
        if current is not None and current.conn is not None and current.conn.deadline <= now:
            current.backend_timeout()
