"""The backend side of HTTP mode: one connection, reused for many requests (pooled).

It parses responses with llhttp and hands each part to the Exchange it is attached to.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, cast

import httptools

from balancer.frontend import INF, Frontend
from balancer.pool import Backend

if TYPE_CHECKING:
    from balancer.exchange import Exchange


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
