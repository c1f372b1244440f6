"""TCP mode: each new client connection goes to the next backend, then bytes are copied
both ways with flow control. For anything that is not HTTP (or HTTP you do not want parsed).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import cast

from balancer.frontend import Frontend
from balancer.pool import Backend

log = logging.getLogger("balancer")

CONNECT_BUFFER = 256 * 1024


class TcpClient(asyncio.Protocol):
    """The client side of one proxied TCP connection."""

    def __init__(self, fe: Frontend) -> None:
        self.fe = fe
        self.transport: asyncio.Transport | None = None
        self.upstream: TcpUpstream | None = None
        self.backend: Backend | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.eof = False
        self.closed = False
        self.tried: tuple[Backend, ...] = ()
        self.deadline = math.inf

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        fe = self.fe
        fe.total_connections += 1
        if len(fe.connections) >= fe.settings.limits.max_connections or fe.draining:
            fe.rejected_connections += 1
            self.closed = True
            self.transport.abort()
            return
        fe.connections.add(self)
        fe.requests += 1
        self.touch()
        self._next_backend()

    def touch(self) -> None:
        self.deadline = self.fe.now + self.fe.settings.timeouts.idle

    def _next_backend(self) -> None:
        fe = self.fe
        if len(self.tried) > fe.settings.limits.retries:
            backend = None
        else:
            backend = fe.pool.choose(self.tried)
        if backend is None:
            fe.no_backend += 1
            self.close()
            return
        self.backend = backend
        backend.requests += 1
        backend.active += 1
        fe.loop.create_task(self._connect(backend))

    async def _connect(self, backend: Backend) -> None:
        fe = self.fe
        try:
            async with asyncio.timeout(fe.settings.timeouts.connect):
                _, upstream = await fe.loop.create_connection(
                    lambda: TcpUpstream(self), backend.host, backend.port
                )
        except (OSError, TimeoutError) as exc:
            backend.active -= 1
            backend.failures += 1
            reason = (
                "connect timed out" if isinstance(exc, TimeoutError) else f"connect failed: {exc}"
            )
            fe.pool.mark_down(backend, reason)
            self.tried += (backend,)
            if not self.closed:
                backend.retries += 1
                self._next_backend()
            return
        if self.closed:
            backend.active -= 1
            upstream.close()
            return
        self.upstream = upstream
        if self.pending:
            upstream.write(b"".join(self.pending))
            self.pending = []
            self.pending_size = 0
        if self.eof:
            upstream.write_eof()
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.touch()
        if self.upstream is not None:
            self.upstream.write(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > CONNECT_BUFFER and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """Half-close: pass the EOF on; once both directions ended, close both."""
        self.eof = True
        upstream = self.upstream
        if upstream is not None:
            if upstream.eof:
                upstream.close()
                return False
            upstream.write_eof()
        return True

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.touch()
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is not None and not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream.closed:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fe.connections.discard(self)
        if self.upstream is not None:
            self.upstream.close()

    def upstream_lost(self) -> None:
        if self.backend is not None:
            self.backend.active -= 1
            self.backend = None
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.fe.connections.discard(self)
            self.transport.close()

    def check_deadline(self, now: float) -> None:
        if self.deadline <= now:
            self.fe.timeouts += 1
            if self.transport is not None:
                self.closed = True
                self.fe.connections.discard(self)
                self.transport.abort()
            if self.upstream is not None:
                self.upstream.transport.abort()

    def drain(self) -> None:
        """TCP has no request boundary: connections finish on their own or at the drain timeout."""


class TcpUpstream(asyncio.Protocol):
    """The backend side of one proxied TCP connection."""

    def __init__(self, client: TcpClient) -> None:
        self.client = client
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.closed = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.client.eof:
            self.close()
            return False
        self.client.write_eof()
        return True

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.client.touch()
            self.transport.write(data)

    def write_eof(self) -> None:
        if not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None and not self.client.closed:
            self.client.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.upstream_lost()
