"""The size and time guards of the service's HTTP connections, around uvicorn's
httptools protocol (extended through its parser callbacks, none of its code copied).

uvicorn's httptools protocol keeps every byte of a request head until the head is
complete, keeps trailer fields after a chunked body without limit, and sets no timer
while a connection has sent nothing, part of a head or part of a body. So a client
could grow the process without limit, or hold its file descriptors and tasks for
ever. Here (the limits in wire_limits.py, docs/security.md):

- a head over MAX_HEAD_BYTES or MAX_HEADER_FIELDS is answered 431 and the connection
  closed, after the responses due before it (pipelining); trailer fields count
  against the same limits and are dropped;
- a connection's first byte must come within first_byte_timeout, its head within
  request_read_timeout, then its body within it again: else 408 and closed;
- at most max_connections per process, idle ones closed first for new ones (the
  service runs uvicorn with `ws="none"`: a connection handed over to a WebSocket
  protocol would never leave the count);
- every timer, when it fires, lets the loop read what already waits in the socket
  before it judges: after a pause of the process (SIGSTOP, a VM stall) the loop runs
  its due timers before it reads, and a request that arrived in time was reset.

The usual request, head and body in one read, costs one counter update and two
comparisons; the timers are armed per connection, and per request only when a head
or body spans several reads.

uvicorn names this relies on (checked by tests/service/test_uvicorn_coupling.py): the parser
callbacks `data_received`, `on_headers_complete`, `on_message_complete` (extended
with super()), `timeout_keep_alive_handler`, `_start_asgi_task`, and the attributes
`headers`, `url`, `scope`, `cycle`, `pipeline`, `flow`, `app`, `loop`,
`server_state.default_headers`, `timeout_keep_alive_task`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import termios
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from session_service.api.wire_limits import MAX_HEAD_BYTES, MAX_HEADER_FIELDS, wire_limits

log = logging.getLogger(__name__)

#: how often a timer that found bytes waiting in the socket looks again, and for how
#: long at most (bytes still waiting after that are not being read: judge)
_RECHECK_SECONDS = 0.01
_RECHECK_WINDOW = 1.0


def bytes_waiting(transport: Any) -> int:
    """Bytes the kernel received on this connection and the loop has not read yet,
    while reading is not paused (FIONREAD; 0 where it cannot be asked)."""
    transport = getattr(transport, "inner", transport)
    if not transport.is_reading():
        return 0
    try:
        fd = transport.get_extra_info("socket").fileno()
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


class _Closed:
    """Stands for the request of a connection refused mid-request: what the parser
    still reads of it in the same pass is dropped."""

    __slots__ = ()
    response_complete = True
    disconnected = True
    keep_alive = False
    more_body = False
    scope = None
    message_event = asyncio.Event()


_CLOSED: Any = _Closed()


class _Refusal(_Closed):
    """A refusal queued behind the responses still due on a connection (pipelining):
    the client reads the answers in the order of its requests."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


class TrailerSink:
    """Takes the place of the header list once a chunked body begins: trailer fields
    (after the last chunk) are counted against the head limits and dropped, and the
    bytes of the body that are not data (chunk sizes, extensions, trailers) too."""

    __slots__ = ("data", "fields", "framing", "protocol", "size")

    def __init__(self, protocol: GuardedHttpProtocol) -> None:
        self.protocol = protocol
        self.fields = self.size = self.data = self.framing = 0

    def __len__(self) -> int:
        return self.fields

    def append(self, field: tuple[bytes, bytes]) -> None:
        self.fields += 1
        self.size += len(field[0]) + len(field[1]) + 4
        if self.fields > MAX_HEADER_FIELDS or self.size > MAX_HEAD_BYTES:
            self.protocol.refuse_trailers()

    def received(self, total: int, data: int) -> None:
        """`total` bytes of this body received, `data` of them body data."""
        self.data += data
        self.framing += total - data
        if self.framing > MAX_HEAD_BYTES + self.data:
            self.protocol.refuse_trailers()


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded heads, trailers, times and
    connections (see the module's docstring)."""

    #: wraps the event loop's transport for this protocol (a subclass's choice)
    transport_class: ClassVar[Any] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrap = self.transport_class
        super().connection_made(transport if wrap is None else wrap(transport, self.loop))
        # set here, after uvicorn's own attributes, on every connection in the same
        # order: attributes added later would cost every attribute access on this object
        #: bytes received since the current request's head began, while it is incomplete
        self._head_bytes = 0
        self._reading_head = True
        #: between a request's head and the end of its body
        self._in_body = False
        self._wire = wire = wire_limits(self.app)
        #: closes the connection if a head or body is not complete in time; armed for
        #: the first byte, then only when a head or body spans several reads
        self._read_timer: asyncio.TimerHandle | None = None
        #: a request was refused: nothing more is served on this connection
        self._refused = False
        #: the read timer armed is the first byte's (shorter)
        self._first_byte = False
        #: when a timer first found bytes waiting to be read (see _bytes_waiting)
        self._waiting_since = -2 * _RECHECK_WINDOW
        if not wire.admit(self):
            log.warning("refused a connection: %d open (max_connections)", len(wire.open))
            self._refuse(503, "too many open connections, try again")
            return
        self._arm_read_timer(wire.first_byte_seconds)
        self._first_byte = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._wire.open.pop(self, None)
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)

    def is_idle(self) -> bool:
        """Between requests with nothing of the next one received (or none yet)."""
        cycle = self.cycle
        return (
            not self.transport.is_closing()
            and self._reading_head
            and not self._head_bytes
            and (cycle is None or (cycle.response_complete and cycle.scope is self.scope))
            and not self.pipeline
        )

    # ------------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        trailers: TrailerSink | None = None
        if self._reading_head:
            self._head_bytes += len(data)
        elif self._in_body and type(headers := self._fields()) is TrailerSink:  # chunked body
            trailers, body = headers, self.cycle.body
            before = len(body)
        HttpToolsProtocol.data_received(self, data)  # (a direct call costs less than super())
        # Usually a request comes whole and nothing below applies.
        if trailers is not None and self._fields() is trailers and self._in_body:
            trailers.received(len(data), len(body) - before)
        if self._reading_head:
            if not self._head_bytes:
                if self.cycle is None or self.scope is self.cycle.scope:
                    return  # nothing of a next request yet
                if self._refused or self.transport.is_closing():
                    return
                # a head begun after another request in this read: count what it has
                self._head_bytes = self._head_size()
            if self._head_bytes > MAX_HEAD_BYTES or len(self.headers) > MAX_HEADER_FIELDS:
                if not (self._refused or self.transport.is_closing()):  # else answered
                    self._refuse_head()
                return
        elif not self._in_body:
            return
        if self._read_timer is None:  # part of a head or body waits for the rest
            self._arm_read_timer()
        elif self._first_byte:  # the first bytes came: the head has its whole time
            self._first_byte = False
            self._read_timer.cancel()
            self._arm_read_timer()

    def on_headers_complete(self) -> None:
        if not 0 < self._head_bytes <= MAX_HEAD_BYTES or len(self.headers) > MAX_HEADER_FIELDS:
            # the head began within a read after another request, or the read that
            # ended it was large: its own bytes decide
            if self._refused or self.transport.is_closing():
                self.cycle = _CLOSED
                return
            self._head_bytes = self._head_size()
            if self._head_bytes > MAX_HEAD_BYTES or len(self.headers) > MAX_HEADER_FIELDS:
                self._refuse_head()
                return
        self._reading_head, self._in_body = False, True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self.start_request()

    def start_request(self) -> None:
        """Serve the request whose head is complete (uvicorn: an ASGI cycle)."""
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._reading_head, self._head_bytes, self._in_body = True, 0, False
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        HttpToolsProtocol.on_message_complete(self)

    def on_chunk_header(self) -> None:
        # called by the parser for each chunk of a chunked body, and only then
        if type(self._fields()) is not TrailerSink:
            self.headers = TrailerSink(self)  # type: ignore[assignment]

    def _fields(self) -> Any:
        """The current request's header list, or its TrailerSink once its body is chunked."""
        return self.headers

    def _head_size(self) -> int:
        """The bytes of the current request's head parsed so far (request line, fields)."""
        return len(self.url) + 14 + sum(len(n) + len(v) + 4 for n, v in self.headers)

    # ------------------------------------------------------------------ timers

    def _arm_read_timer(self, seconds: float | None = None) -> None:
        self._read_timer = self.loop.call_later(
            self._wire.read_seconds if seconds is None else seconds, self._read_timed_out
        )

    def _bytes_waiting(self) -> bool:
        """Whether a timer that fired should let the loop read what waits in the socket
        first (a pause of the whole process runs the timers before the reads)."""
        if not bytes_waiting(self.transport):
            return False
        now = self.loop.time()
        if now - self._waiting_since > 2 * _RECHECK_WINDOW:  # a new pause
            self._waiting_since = now
        # bytes that are still waiting after a while are not being read (a bug): judge
        return now - self._waiting_since < _RECHECK_WINDOW

    def timeout_keep_alive_handler(self) -> None:
        if self._bytes_waiting():  # a request sent in time: read it first
            self.timeout_keep_alive_task = self.loop.call_later(
                _RECHECK_SECONDS, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self._bytes_waiting():  # judge once what arrived in time has been read
            self._read_timer = self.loop.call_later(_RECHECK_SECONDS, self._read_timed_out)
            return
        cycle = self.cycle
        if self._in_body:
            if cycle is not None and cycle.response_complete:
                self.transport.close()  # answered without its body: just stop waiting
                return
            log.info("closed a connection whose request body was not complete in time (408)")
            self._refuse(408, "request body not complete in time")
        elif self._reading_head:
            if cycle is not None and not cycle.response_complete:
                # a pipelined head behind a response still being prepared waits its turn
                self._arm_read_timer()
                return
            log.info("closed a connection whose request head was not complete in time (408)")
            self._refuse(408, "no complete request line and headers in time")

    # ------------------------------------------------------------------ refusals

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with `message` as plain text, and close the connection."""
        body = message.encode("ascii")
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.write(b"".join(parts))
        self.transport.close()

    def _refuse_head(self) -> None:
        """431 for the current head, after the responses still due on this connection;
        the head's request is not served, nor anything after it."""
        if self._head_bytes > MAX_HEAD_BYTES:
            log.warning("refused a request head over %d bytes (431)", MAX_HEAD_BYTES)
            refusal = _Refusal(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes")
        else:
            log.warning("refused a request head with over %d fields (431)", MAX_HEADER_FIELDS)
            refusal = _Refusal(431, f"more than {MAX_HEADER_FIELDS} header fields")
        self._refused = True
        running = self.cycle
        if running is not None and not running.response_complete:
            self.flow.pause_reading()
            self.pipeline.appendleft((refusal, self.app))  # type: ignore[arg-type]
        else:
            self._refuse(refusal.status, refusal.message)
        self.cycle = _CLOSED

    def refuse_trailers(self) -> None:
        """Trailer fields over the head limits: 431, and the request is not served."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            self.transport.close()  # answered before its body ended: just stop reading
            return
        log.warning("refused trailer fields over %d bytes or %d fields (431)",
                    MAX_HEAD_BYTES, MAX_HEADER_FIELDS)  # fmt: skip
        if cycle is not None:  # its handler sees the client gone
            cycle.disconnected = True
            cycle.message_event.set()
        self.cycle = _CLOSED
        self._in_body = False
        self._refuse(
            431, f"trailer fields exceed {MAX_HEAD_BYTES} bytes or {MAX_HEADER_FIELDS} fields"
        )

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if type(cycle) is _Refusal:  # its turn came (see _refuse_head)
            self._refuse(cycle.status, cycle.message)
            return
        super()._start_asgi_task(cycle, app)
