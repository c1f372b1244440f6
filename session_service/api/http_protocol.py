"""The service's HTTP protocol: uvicorn's httptools protocol with a lean path for
`/v1/sessions` requests.

Measured on the service's lock + write cycle (CPU per cycle from /proc, py-spy,
strace), uvicorn runs every request through an ASGI cycle (scope, cycle object,
task, two send messages with header checks), which costs more than it buys here.
A `/v1/sessions` request is answered by `LeanPath.answer()` and written as one
prepared response by `DirectCycle`, which keeps uvicorn's own cycle contract
(pipelining, keep-alive, flow control, `Expect: 100-continue`, disconnects,
graceful shutdown), so the protocol's other code does not know the difference.
Every other request (health, metrics, docs, 404s, ...) takes uvicorn's ASGI path to
the FastAPI app unchanged. Writes go through CoalescingTransport (coalescing.py),
and the size and time guards are http_guard.py's, beneath this.

uvicorn code this copies (checked by tests/service/test_uvicorn_coupling.py, which fails
when it changes): the start of `on_headers_complete` (the scope's method, version
and path) in `start_request`, `_start_asgi_task` for a DirectCycle, and the parts of
`RequestResponseCycle` that DirectCycle mirrors (`receive`, the end of `send`).
`--http-server uvicorn` runs stock uvicorn instead (stock.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import urllib.parse
from typing import Any

import httptools
from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from session_service.api.coalescing import CoalescingTransport
from session_service.api.http_guard import GuardedHttpProtocol
from session_service.api.sessions import Endpoint, LeanPath, Reply

log = logging.getLogger(__name__)


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


class SessionHttpProtocol(GuardedHttpProtocol):
    """The guarded protocol (http_guard.py) with coalesced writes and DirectCycle for
    /v1/sessions requests (see the module's docstring)."""

    transport_class = CoalescingTransport

    def start_request(self) -> None:
        lean = self.app
        if (
            not isinstance(lean, LeanPath)  # wrapped, e.g. by trace logging: the ASGI path
            or self.limit_concurrency is not None
            or self.root_path
            or self.parser.should_upgrade()
        ):
            super().start_request()
            return
        method = self.parser.get_method().decode("ascii")
        parsed = httptools.parse_url(self.url)
        raw_path: bytes = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        route = lean.route(path, method)
        if route is None:
            super().start_request()
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
            super()._start_asgi_task(cycle, app)
            return
        if self.config.reset_contextvars:  # as uvicorn does (its opt-in)
            task = self.loop.create_task(cycle.run(), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
