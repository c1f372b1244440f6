"""HTTP mode: asyncio protocols that proxy one request at a time per client connection.

Each request is sent to the next backend in the rotation, even on one client keep-alive
connection, so no client is pinned to a backend. Bodies stream in both directions with
transport flow control (pause/resume), so memory stays bounded whatever the body size.
Callbacks only, no coroutine per request: this path is what the benchmark measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections import deque
from typing import Any, cast

import httptools

from balancer.frontend import Frontend
from balancer.http_head import IDEMPOTENT, BadRequest, error_response, request_head, response_head
from balancer.pool import Backend

log = logging.getLogger("balancer")

INF = math.inf
REPLAY_LIMIT = 64 * 1024  # request bytes kept to retry an idempotent request elsewhere
CONNECT_BUFFER = 256 * 1024  # request bytes buffered while a backend connection opens
HEAD, BODY, END, ERROR = range(4)

# Response body framing towards the client.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)


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


class Exchange:
    """One request/response pair and its journey through one or more backends."""

    __slots__ = (
        "attempts",
        "backend",
        "chunked_in",
        "client",
        "client_http11",
        "client_keep_alive",
        "conn",
        "done",
        "fe",
        "head_buf",
        "idempotent",
        "interim",
        "keep_alive",
        "method",
        "mode",
        "outq",
        "pending",
        "pending_size",
        "replay",
        "replay_size",
        "request_done",
        "response_started",
        "sent_any",
        "started_at",
        "status",
        "target",
        "tried",
        "until_close",
    )

    def __init__(
        self,
        client: ClientConnection,
        method: bytes,
        head: bytes,
        chunked: bool,
        http11: bool,
        keep_alive: bool,
    ) -> None:
        self.client = client
        self.fe = client.fe
        self.method = method
        self.chunked_in = chunked
        self.client_http11 = http11
        self.client_keep_alive = keep_alive
        self.idempotent = method in IDEMPOTENT
        self.backend: Backend | None = None
        self.conn: BackendConnection | None = None
        self.tried: tuple[Backend, ...] = ()
        self.attempts = 0
        self.outq: list[bytes] = [head]
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.replay: list[bytes] | None = [head]
        self.replay_size = len(head)
        self.sent_any = False
        self.request_done = False
        self.response_started = False
        self.head_buf = b""
        self.interim = False
        self.mode = LENGTH
        self.until_close = False
        self.target = b""
        self.keep_alive = False
        self.status = 0
        self.started_at = 0.0
        self.done = False

    # -- request side ----------------------------------------------------------------------

    def start(self) -> None:
        """Pick the next backend in the rotation and send the request head."""
        fe = self.fe
        backend = fe.pool.choose(self.tried)
        if backend is None:
            self._no_backend()
            return
        self.backend = backend
        backend.active += 1
        backend.requests += 1
        self.attempts += 1
        conn = backend.take_idle()
        if conn is not None:
            self._attach(conn)
            if self.attempts > 1:
                self.flush_out()
        else:
            fe.loop.create_task(self._connect(backend))

    def _no_backend(self) -> None:
        fe = self.fe
        fe.no_backend += 1
        total = len(fe.pool.backends)
        if self.tried:
            detail = (
                f"no backend could take the request ({len(self.tried)} tried, {total} configured)"
            )
            status = 502
        else:
            detail = f"no backend is available: all {total} backends are down"
            status = 503
        self.done = True
        self.client.current = None
        self.client.respond_error(status, detail)

    async def _connect(self, backend: Backend) -> None:
        fe = self.fe
        try:
            async with asyncio.timeout(fe.settings.timeouts.connect):
                _, conn = await fe.loop.create_connection(
                    lambda: BackendConnection(fe, backend), backend.host, backend.port
                )
        except (OSError, TimeoutError) as exc:
            backend.failures += 1
            reason = (
                "connect timed out" if isinstance(exc, TimeoutError) else f"connect failed: {exc}"
            )
            fe.pool.mark_down(backend, reason)
            self._retry_or_fail(502, reason)
            return
        if self.done:
            conn.release()
            return
        self._attach(conn)
        if self.outq:
            self.flush_out()

    def _attach(self, conn: BackendConnection) -> None:
        self.conn = conn
        conn.attach(self)
        if self.sent_any:
            assert self.replay is not None
            self.outq = list(self.replay)
        elif self.pending:
            self.outq = self.pending + self.outq
        self.pending = []
        self.pending_size = 0
        self.client._resume("connect")
        self.started_at = time.perf_counter()

    def _queue(self, data: bytes) -> None:
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            else:
                replay.append(data)
        self.outq.append(data)

    def flush_out(self) -> None:
        """Write what the client sent since the last flush, in one write call."""
        outq = self.outq
        if not outq:
            return
        data = outq[0] if len(outq) == 1 else b"".join(outq)
        self.outq = []
        conn = self.conn
        if conn is None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > CONNECT_BUFFER:
                self.client._pause("connect")
            return
        self.sent_any = True
        conn.write(data)

    def send_body(self, data: bytes) -> None:
        if self.chunked_in:
            self._queue(b"%x\r\n" % len(data))
            self._queue(data)
            self._queue(b"\r\n")
        else:
            self._queue(data)

    def end_request(self) -> None:
        self.request_done = True
        if self.chunked_in:
            self._queue(b"0\r\n\r\n")
        if self.conn is not None:
            self.conn.deadline = self.fe.now + self.fe.settings.timeouts.server

    # -- response side -------------------------------------------------------------------

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep: bool
    ) -> bool:
        """Prepare the client head; return True for a HEAD response, which has no body."""
        backend = self.backend
        assert backend is not None
        if self.started_at:
            backend.record_latency(time.perf_counter() - self.started_at)
            self.started_at = 0.0
        if status == 101:
            self.backend_failed("backend switched protocols, which is not supported")
            return True
        head = response_head(status, reason, headers)
        out, content_length = head.lines, head.content_length
        client = self.client
        if status < 200:
            self.interim = True
            out.append(b"\r\n")
            client._write(b"".join(out))
            return False
        self.status = status
        no_body = self.method == b"HEAD" or status in (204, 304)
        if no_body:
            self.mode = NO_BODY
            if content_length is not None:
                out += (b"Content-Length: ", content_length, b"\r\n")
        elif content_length is not None:
            self.mode = LENGTH
            out += (b"Content-Length: ", content_length, b"\r\n")
        elif self.client_http11:
            # Chunked from the backend, or delimited by its close (php -S, HTTP/1.0
            # backends, a last coding other than chunked): chunked towards the client,
            # whose connection then stays open. Other codings (gzip) are kept, named.
            self.mode = CHUNKED
            self.until_close = not head.chunked
            if head.codings:
                out += (b"Transfer-Encoding: ", head.codings, b", chunked\r\n")
            else:
                out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.mode = UNTIL_CLOSE
            self.until_close = not head.chunked
            if head.codings:  # the body is still gzip (say): without its name it is lost
                out += (b"Transfer-Encoding: ", head.codings, b"\r\n")
        self.keep_alive = (
            self.client_keep_alive
            and self.mode != UNTIL_CLOSE
            and self.request_done
            and not self.fe.draining
            and not client.closed
        )
        if self.keep_alive:
            if not self.client_http11:
                out.append(b"Connection: keep-alive\r\n")
        else:
            out.append(b"Connection: close\r\n")
        if self.fe.debug_header:
            out += (self.fe.debug_header, backend.label_bytes, b"\r\n")
        out.append(b"\r\n")
        self.head_buf += b"".join(out)
        self.response_started = True
        return self.method == b"HEAD"

    def flush_head(self) -> None:
        head = self.head_buf
        self.head_buf = b""
        self.client._write(head)

    def response_body(self, data: bytes) -> None:
        if self.mode == CHUNKED:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self.head_buf:
            data = self.head_buf + data
            self.head_buf = b""
        self.client._write(data)

    def response_end(self, backend_keep_alive: bool) -> None:
        """The backend finished its response: recycle its connection and finish the client's."""
        if self.interim:
            self.interim = False
            return
        tail = b"0\r\n\r\n" if self.mode == CHUNKED else b""
        if self.head_buf:
            tail = self.head_buf + tail
            self.head_buf = b""
        if tail:
            self.client._write(tail)
        self._finish(backend_keep_alive and self.request_done)

    def _finish(self, reuse: bool) -> None:
        self.done = True
        backend = self.backend
        assert backend is not None
        backend.active -= 1
        backend.record_status(self.status)
        if self.fe.log_requests:
            log.debug(
                "%s %s %s -> %s %d",
                self.client.client_ip.decode(),
                self.method.decode(),
                self.target.decode(errors="replace"),
                backend.label,
                self.status,
            )
        conn = self.conn
        self.conn = None
        if conn is not None:
            if reuse:
                conn.release()
            else:
                conn.close()
        self.client.exchange_done(self.keep_alive)

    def backend_lost(self, conn: BackendConnection) -> None:
        """The backend connection closed before the response was complete."""
        if self.done or conn is not self.conn:
            return
        if self.until_close and self.response_started and not self.interim:
            self.conn = None
            self.response_end(False)
            return
        self.backend_failed("backend closed the connection")

    def backend_failed(self, reason: str) -> None:
        backend = self.backend
        assert backend is not None
        backend.errors += 1
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.exchange = None
            conn.close()
        log.info("backend %s: %s", backend.label, reason)
        if not self.response_started:
            self._retry_or_fail(502, reason)
            return
        self.done = True
        backend.active -= 1
        self.client.current = None
        self.client.abort()

    def backend_timeout(self) -> None:
        backend = self.backend
        assert backend is not None
        self.fe.timeouts += 1
        backend.errors += 1
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.exchange = None
            conn.close()
        self.done = True
        backend.active -= 1
        self.client.current = None
        log.info("backend %s: response timeout", backend.label)
        if self.response_started:
            self.client.abort()
        else:
            self.client.respond_error(504, "the backend did not answer in time")

    def _retry_or_fail(self, status: int, reason: str) -> None:
        """Retry elsewhere only if nothing reached the backend, or the request is idempotent."""
        if self.done:
            return
        backend = self.backend
        assert backend is not None
        backend.active -= 1
        self.tried += (backend,)
        retries = self.fe.settings.limits.retries
        can_retry = not self.response_started and self.attempts <= retries
        if can_retry and (not self.sent_any or (self.idempotent and self.replay is not None)):
            backend.retries += 1
            self.interim = False
            self.head_buf = b""
            self.start()
            return
        self.done = True
        self.client.current = None
        self.client.respond_error(status, f"backend {backend.label}: {reason}")

    def client_lost(self) -> None:
        """The client went away: drop the backend side, which cannot be reused mid-request."""
        if self.done:
            return
        self.done = True
        conn = self.conn
        self.conn = None
        if self.backend is not None:
            self.backend.active -= 1
        if conn is not None:
            conn.exchange = None
            conn.close()


class BackendConnection(asyncio.Protocol):
    """One connection to a backend, reused for many requests while it stays keep-alive."""

    def __init__(self, fe: Frontend, backend: Backend) -> None:
        self.fe = fe
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.idle_since = 0.0
        self.deadline = INF
        self.closed = False
        self.reading = True
        self.reset_parser = False
        self.finish_after_feed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def attach(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.deadline = self.fe.now + self.fe.settings.timeouts.server
        if self.reset_parser:
            self.parser = httptools.HttpResponseParser(self)
            self.reset_parser = False

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.deadline = self.fe.now + self.fe.settings.timeouts.server
        self.transport.write(data)

    def release(self) -> None:
        """Back to the backend's idle pool, or closed if the pool is full or the backend gone."""
        self.exchange = None
        self.deadline = INF
        backend = self.backend
        if (
            self.closed
            or not backend.up
            or backend.removed
            or len(backend.idle) >= self.fe.settings.limits.pool_size
        ):
            self.close()
            return
        if not self.reading:
            self.resume()
        self.idle_since = self.fe.now
        backend.idle.append(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._unpool()
            if self.transport is not None:
                self.transport.close()

    def _unpool(self) -> None:
        idle = self.backend.idle
        if self in idle:
            idle.remove(self)

    def pause(self) -> None:
        if self.reading and self.transport is not None and not self.closed:
            self.reading = False
            self.transport.pause_reading()

    def resume(self) -> None:
        if not self.reading and self.transport is not None and not self.closed:
            self.reading = True
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.close()  # a response nobody asked for: this connection is out of sync
            return
        self.deadline = self.fe.now + self.fe.settings.timeouts.server
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.exchange is exchange:
                exchange.backend_failed(f"invalid response: {exc}")
            self.close()
            return
        if self.finish_after_feed:
            # A HEAD response: no body follows, but llhttp would wait for Content-Length
            # bytes, so the parser is replaced before the connection is reused.
            self.finish_after_feed = False
            self.reset_parser = True
            if self.exchange is exchange:
                exchange.response_end(self.parser.should_keep_alive())
            return
        if exchange.head_buf and not exchange.done:
            exchange.flush_head()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._unpool()
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.backend_lost(self)

    def pause_writing(self) -> None:
        """The backend reads the upload slower than the client sends it."""
        exchange = self.exchange
        if exchange is not None:
            exchange.client._pause("backend")
            exchange.client.deadline = INF

    def resume_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client.deadline = self.fe.now + self.fe.settings.timeouts.idle
            exchange.client._resume("backend")

    # -- parser callbacks ----------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        headers, reason = self.headers, self.reason
        self.headers, self.reason = [], b""
        if exchange is None:
            return
        status = self.parser.get_status_code()
        if exchange.response_head(status, reason, headers, self.parser.should_keep_alive()):
            self.finish_after_feed = True

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            if self.finish_after_feed:
                self.finish_after_feed = False
                self.reset_parser = True
            exchange.response_end(self.parser.should_keep_alive())
