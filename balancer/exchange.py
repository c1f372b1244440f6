"""One request/response pair and its journey through one or more backends.

Picks the backend, writes the request (kept for a replay while it is small and
idempotent), re-frames the response for the client, and ends in one place (``_end``),
whatever the outcome: a complete response, a retry elsewhere, an error reply, an abort.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from balancer.backend_connection import BackendConnection
from balancer.http_head import IDEMPOTENT, response_head
from balancer.pool import Backend

if TYPE_CHECKING:
    from balancer.client_connection import ClientConnection

log = logging.getLogger("balancer")

REPLAY_LIMIT = 64 * 1024  # request bytes kept to retry an idempotent request elsewhere
CONNECT_BUFFER = 256 * 1024  # request bytes buffered while a backend connection opens

# Response body framing towards the client.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)

# How the client connection goes on when an exchange ends.
COMPLETE, ABORT, REPLY, CLIENT_GONE = range(4)


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
        self._end(REPLY, status=status, detail=detail)

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
        out, content_length, chunked, codings = response_head(status, reason, headers)
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
            self.until_close = not chunked
            if codings:
                out += (b"Transfer-Encoding: ", codings, b", chunked\r\n")
            else:
                out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.mode = UNTIL_CLOSE
            self.until_close = not chunked
            if codings:  # the body is still gzip (say): without its name it is lost
                out += (b"Transfer-Encoding: ", codings, b"\r\n")
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
        self._end(COMPLETE, reuse=backend_keep_alive and self.request_done)

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
        log.info("backend %s: %s", backend.label, reason)
        if self.response_started:
            self._end(ABORT)
            return
        self._drop_conn()
        self._retry_or_fail(502, reason)

    def backend_timeout(self) -> None:
        backend = self.backend
        assert backend is not None
        self.fe.timeouts += 1
        backend.errors += 1
        log.info("backend %s: response timeout", backend.label)
        if self.response_started:
            self._end(ABORT)
        else:
            self._end(REPLY, status=504, detail="the backend did not answer in time")

    def _retry_or_fail(self, status: int, reason: str) -> None:
        """Retry elsewhere only if nothing reached the backend, or the request is idempotent."""
        if self.done:
            return
        backend = self.backend
        assert backend is not None
        self.tried += (backend,)
        retries = self.fe.settings.limits.retries
        can_retry = not self.response_started and self.attempts <= retries
        if can_retry and (not self.sent_any or (self.idempotent and self.replay is not None)):
            backend.active -= 1
            backend.retries += 1
            self.backend = None
            self.interim = False
            self.head_buf = b""
            self.start()
            return
        self._end(REPLY, status=status, detail=f"backend {backend.label}: {reason}")

    def client_lost(self) -> None:
        """The client went away: drop the backend side, which cannot be reused mid-request."""
        if not self.done:
            self._end(CLIENT_GONE)

    def _drop_conn(self) -> None:
        """Close the backend connection, which is out of step (an error, a cut exchange)."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.exchange = None
            conn.close()

    def _end(self, then: int, reuse: bool = False, status: int = 0, detail: str = "") -> None:
        """End this exchange: the one place for its bookkeeping, whatever the outcome.

        The backend's active count drops (once: a retry drops it before moving on), the
        backend connection goes back to the pool when ``reuse`` and is closed otherwise,
        and the client connection goes on as ``then`` says: COMPLETE (the response was
        whole: count its status, log it, go on with the next request), ABORT (a response
        cut short cannot be repaired), REPLY (a balancer-made ``status`` with ``detail``,
        then close) or CLIENT_GONE (nothing left to tell).
        """
        self.done = True
        backend = self.backend
        if backend is not None:
            backend.active -= 1
        if reuse and self.conn is not None:
            conn = self.conn
            self.conn = None
            conn.release()
        else:
            self._drop_conn()
        client = self.client
        if then == COMPLETE:
            assert backend is not None
            backend.record_status(self.status)
            if self.fe.log_requests:
                log.debug(
                    "%s %s %s -> %s %d",
                    client.client_ip.decode(),
                    self.method.decode(),
                    self.target.decode(errors="replace"),
                    backend.label,
                    self.status,
                )
            client.exchange_done(self.keep_alive)
            return
        if then == CLIENT_GONE:
            return
        client.current = None
        if then == ABORT:
            client.abort()
        else:
            client.respond_error(status, detail)
