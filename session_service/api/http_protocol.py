"""uvicorn's httptools protocol, made cheaper for the service's hot path.

Measured on the service's lock + write cycle (CPU per cycle from /proc, py-spy,
strace), three things uvicorn does per request or per connection cost more than
they buy here:

- it writes a response's status line and headers, then its body: two send()
  calls and, with TCP_NODELAY, two packets that wake the client twice. Here the
  writes of one event-loop pass are joined (what TCP_CORK does in the kernel),
  and a reply that is already whole goes out at once;
- it asks each new connection's socket for its addresses, seven system calls,
  and PHP opens a connection per request. Here it reads the addresses the event
  loop already knows;
- it runs every request through an ASGI cycle (scope, cycle object, task, two
  send messages with header checks). Here a `/v1/sessions` request is answered
  by `LeanPath.answer()` and written as one prepared response by `DirectCycle`,
  which keeps uvicorn's own cycle contract (pipelining, keep-alive, flow
  control, `Expect: 100-continue`, disconnects, graceful shutdown), so the
  protocol's other code does not know the difference.

Every other request (health, metrics, docs, 404s, ...) takes uvicorn's ASGI path
to the FastAPI app unchanged.

It also bounds what a client may hold, in size and in time. uvicorn's httptools
protocol keeps every byte of a request line and headers until the head is
complete, so a client that never ends its headers would grow the process without
limit: a head over MAX_HEAD_BYTES is answered 431 and the connection closed. And
uvicorn sets no timer while a connection has sent nothing yet, part of a head,
or part of a body, so connections that connect and wait, or send a byte now and
then, would stay open for ever and use up the process's file descriptors and
tasks: a head not complete within the request_read_timeout setting, or a body
not complete within it after its head, is answered 408 and the connection
closed. (An idle kept-alive connection is closed by uvicorn's keep-alive
timeout.) The timer costs nothing on the usual request, whose head and body
come in one piece: it is armed per connection, and per request only when a head
or body is still incomplete after the bytes received so far.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import resource
import struct
import termios
import urllib.parse
from typing import Any

import httptools
from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from session_service.api.sessions import Endpoint, LeanPath, Reply
from session_service.settings import Settings

log = logging.getLogger(__name__)

#: the most a request's head (request line and headers) may take: 64 KiB, more than
#: any client of this service sends (nginx allows 32 KiB by default, Node.js 16 KiB)
MAX_HEAD_BYTES = 64 * 1024
#: the most header fields a request head may have, and trailer fields after a chunked
#: body (Apache's LimitRequestFields and HAProxy's tune.http.maxhdr are about 100)
MAX_HEADER_FIELDS = 100
#: how long a timer that finds bytes waiting in the socket (the process was paused:
#: SIGSTOP, a VM stall) waits for the loop to read them, and how many times
_RECHECK_SECONDS = 0.01
_RECHECK_WINDOW = 1.0


class CoalescingTransport:
    """A transport whose writes of one event-loop pass go out as one."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def write_whole(self, data: bytes) -> None:
        """A whole response in one piece: straight out, unless writes of this pass are
        still waiting (they go first)."""
        if self._pending:
            self._pending.append(data)
        elif not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            # uvicorn asks for the socket only to call getsockname()/getpeername() on
            # it; without it, it reads the "sockname" and "peername" the loop has.
            return default
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def bytes_waiting(self) -> int:
        """Bytes received by the kernel and not read yet, while reading is not paused:
        after a pause of the process its timers run before those bytes are read."""
        if not self._transport.is_reading():
            return 0
        sock = self._transport.get_extra_info("socket")
        try:
            raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except (AttributeError, OSError, ValueError):
            return 0
        return int(struct.unpack("i", raw)[0])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


#: the start of a reply (status line, uvicorn's default headers, content-type) by
#: (status, media type), for the default headers in _heads_for: uvicorn makes a new
#: list of them when its date header changes, once a second
_heads: dict[tuple[int, str | None], bytes] = {}
_heads_for: list[Any] = [None]


def _head(default_headers: list[tuple[bytes, bytes]], status: int, media_type: str | None) -> bytes:
    if _heads_for[0] is not default_headers:
        _heads.clear()
        _heads_for[0] = default_headers
    key = (status, media_type)
    head = _heads.get(key)
    if head is None:
        parts = [STATUS_LINE[status]]
        for name, value in default_headers:
            parts += (name, b": ", value, b"\r\n")
        if media_type is not None:
            parts += (b"content-type: ", media_type.encode("latin-1"), b"\r\n")
        head = _heads[key] = b"".join(parts)
    return head


class DirectCycle:
    """One /v1/sessions request, with the attributes uvicorn's protocol reads from a
    RequestResponseCycle (`body`, `more_body`, `message_event`, `disconnected`,
    `keep_alive`, `response_complete`), answered by LeanPath without ASGI messages."""

    __slots__ = (
        "body",
        "disconnected",
        "flow",
        "keep_alive",
        "lean",
        "message_event",
        "more_body",
        "protocol",
        "response_complete",
        "route",
        "scope",
        "transport",
        "waiting_for_100_continue",
    )

    def __init__(
        self,
        protocol: SessionHttpProtocol,
        lean: LeanPath,
        scope: Any,
        route: tuple[str, Endpoint, str],
        *,
        keep_alive: bool,
        expect_100_continue: bool,
    ) -> None:
        self.protocol = protocol
        self.lean = lean
        self.scope = scope
        self.route = route
        self.transport: CoalescingTransport = protocol.transport  # type: ignore[assignment]
        self.flow = protocol.flow
        self.message_event = asyncio.Event()
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_complete = False

    async def receive(self) -> Message:
        """The request body, as uvicorn's cycle hands it to an ASGI app."""
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message: Message = {
            "type": "http.request",
            "body": bytes(self.body),
            "more_body": self.more_body,
        }
        self.body = bytearray()
        return message

    async def run(self) -> None:
        try:
            self.respond(await self.lean.answer(self.scope, self.receive, *self.route))
        except asyncio.CancelledError:  # shutting down mid-request
            self.transport.close()
            raise
        except Exception:  # answer() turns errors into replies: this is a bug
            log.exception("unexpected error answering %s", self.route[2])
            self.keep_alive = False
            try:
                self.respond(Reply(500, b"Internal Server Error", "text/plain; charset=utf-8"))
            finally:
                self.transport.close()

    def respond(self, reply: Reply) -> None:
        if self.disconnected or self.response_complete:
            return
        self.waiting_for_100_continue = False
        parts = [_head(self.protocol.server_state.default_headers, reply.status, reply.media_type)]
        for name, value in reply.own_headers():
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if self.scope["method"] != "HEAD":
            parts.append(reply.body)
        self.transport.write_whole(b"".join(parts))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.protocol.on_response_complete()


class WireLimits:
    """The connection limits of one process, from the settings of the service behind
    the app, and the process's open connections for the connection cap."""

    def __init__(self, settings: Settings) -> None:
        self.read_seconds = settings.request_read_timeout
        self.first_byte_seconds = min(settings.first_byte_timeout, self.read_seconds)
        self.max_connections = _fit_open_files(settings.max_connections)
        #: every open connection, oldest first
        self.open: dict[SessionHttpProtocol, None] = {}

    def admit(self, protocol: SessionHttpProtocol) -> bool:
        """Count a new connection in. At the cap, close the oldest idle connection (kept
        alive between requests, or no byte sent yet), as nginx reuses idle connections
        when it has no free one; when none is idle, False: the new one is refused."""
        if len(self.open) >= self.max_connections:
            for other in self.open:
                if other.is_idle():
                    log.info("closed an idle connection for a new one (max_connections)")
                    del self.open[other]
                    other.transport.close()
                    break
            else:
                return False
        self.open[protocol] = None
        return True


def _fit_open_files(wanted: int) -> int:
    """`wanted` connections, if the process may open that many files (and 64 more for
    the database, the listening socket, logs): raise the soft limit up to the hard one,
    else fewer, with a warning."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
        if soft < need:
            fitted = max(1, soft - 64)
            log.warning("max_connections lowered to %d: the open files limit is %d", fitted, soft)
            return fitted
    return wanted


_limits: dict[int, WireLimits] = {}


def _wire_limits(app: Any) -> WireLimits:
    """The limits of the service behind `app` (a LeanPath, or middleware around one,
    e.g. uvicorn's trace logging), made once per process; else the settings' defaults."""
    limits = _limits.get(id(app))
    if limits is None:
        found, settings = app, None
        for _ in range(5):
            if isinstance(found, LeanPath):
                settings = found.endpoints.settings
                break
            found = getattr(found, "app", None)
        limits = _limits[id(app)] = WireLimits(settings or Settings())
    return limits


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

    def __init__(self, protocol: SessionHttpProtocol) -> None:
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


class SessionHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with coalesced writes, DirectCycle for
    /v1/sessions requests and bounded request heads (see the module's docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        # set here, after uvicorn's own attributes, on every connection in the same
        # order: attributes added later would cost every attribute access on this object
        #: bytes received since the current request's head began, while it is incomplete
        self._head_bytes = 0
        self._reading_head = True
        #: between a request's head and the end of its body
        self._in_body = False
        #: closes the connection if a head or body is not complete in time; armed for
        #: the first byte, then only when a head or body spans several reads
        self._wire = wire = _wire_limits(self.app)
        self._read_timer: asyncio.TimerHandle | None = None
        #: a request was refused: nothing more is served on this connection
        self._refused = False
        #: the read timer armed is the first byte's (shorter)
        self._first_byte = False
        #: when a timer first found bytes waiting to be read (see _bytes_waiting)
        self._waiting_since = -_RECHECK_WINDOW
        if not wire.admit(self):
            log.warning("refused a connection: %d open (max_connections)", len(wire.open))
            self._refuse(503, "too many open connections, try again")
            return
        self._arm_read_timer(wire.first_byte_seconds)
        self._first_byte = True

    def _arm_read_timer(self, seconds: float | None = None) -> None:
        self._read_timer = self.loop.call_later(
            self._wire.read_seconds if seconds is None else seconds, self._read_timed_out
        )

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

    def _bytes_waiting(self) -> bool:
        """Whether a timer that fired should let the loop read what waits in the socket
        first (a pause of the whole process runs the timers before the reads)."""
        if not self.transport.bytes_waiting():  # type: ignore[attr-defined]
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

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the head's bytes counted (inline: this runs
        # for every request, and a call to the parent's method costs more than it does)
        trailers: TrailerSink | None = None
        body, before = bytearray(), 0
        if self._reading_head:
            self._head_bytes += len(data)
        elif self._in_body and type(headers := self._fields()) is TrailerSink:  # chunked body
            trailers, body = headers, self.cycle.body
            before = len(body)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        # Usually a request comes whole and nothing below applies.
        if trailers is not None and self._fields() is trailers and self._in_body:
            trailers.received(len(data), len(body) - before)
        if self._reading_head:
            if not self._head_bytes:
                if self.cycle is not None and self.scope is not self.cycle.scope:
                    if self.transport.is_closing():
                        return
                    # a head begun after another request in this read: count what it has
                    self._head_bytes = self._head_size()
                else:
                    return
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

    def _fields(self) -> Any:
        """The current request's header list, or its TrailerSink once its body is chunked."""
        return self.headers

    def _head_size(self) -> int:
        """The bytes of the current request's head parsed so far (request line, fields)."""
        return len(self.url) + 14 + sum(len(n) + len(v) + 4 for n, v in self.headers)

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
        log.warning("refused trailer fields over %d bytes or %d fields (431)",
                    MAX_HEAD_BYTES, MAX_HEADER_FIELDS)  # fmt: skip
        self._abandon_request()
        self._refuse(
            431, f"trailer fields exceed {MAX_HEAD_BYTES} bytes or {MAX_HEADER_FIELDS} fields"
        )

    def _abandon_request(self) -> None:
        """The current request is not served: its handler sees the client gone, and
        what the parser still reads of it is dropped."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.cycle = _CLOSED
        self._in_body = False

    def on_chunk_header(self) -> None:
        # called by the parser for each chunk of a chunked body, and only then
        if type(self._fields()) is not TrailerSink:
            self.headers = TrailerSink(self)  # type: ignore[assignment]

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with `message` as plain text, and close the connection."""
        body = message.encode("ascii")
        head = _head(self.server_state.default_headers, status, "text/plain; charset=utf-8")
        self.transport.write(
            b"%scontent-length: %d\r\nconnection: close\r\n\r\n%s" % (head, len(body), body)
        )
        self.transport.close()

    def on_message_complete(self) -> None:
        # uvicorn's on_message_complete, and the next request's head begins
        self._reading_head, self._head_bytes, self._in_body = True, 0, False
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()

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
        lean = self.app
        if (
            not isinstance(lean, LeanPath)  # wrapped, e.g. by trace logging: the ASGI path
            or self.limit_concurrency is not None
            or self.root_path
            or self.parser.should_upgrade()
        ):
            super().on_headers_complete()
            return
        method = self.parser.get_method().decode("ascii")
        parsed = httptools.parse_url(self.url)
        raw_path: bytes = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        route = lean.route(path, method)
        if route is None:
            super().on_headers_complete()
            return
        http_version = self.parser.get_http_version()
        scope: Any = self.scope
        scope["method"] = method
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = parsed.query or b""
        existing = self.cycle
        cycle = DirectCycle(
            self,
            lean,
            scope,
            route,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            expect_100_continue=self.expect_100_continue,
        )
        self.cycle = cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, lean)
        else:  # pipelined behind a request still being answered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, lean))  # type: ignore[arg-type]

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if not isinstance(cycle, DirectCycle):
            if type(cycle) is _Refusal:  # its turn came
                self._refuse(cycle.status, cycle.message)
                return
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(cycle.run())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
