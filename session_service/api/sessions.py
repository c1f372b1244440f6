"""The /v1/sessions endpoints, and the lean path that serves them.

Each endpoint is one method here. The FastAPI app registers them as routes (that
is where the OpenAPI document comes from), but requests for `/v1/sessions/...`
are served by `LeanPath` straight from the ASGI scope: no routing table, no
dependency solving, no middleware stack, no Request/Response objects, and the
metrics recorded inline. On a lock + write cycle that machinery cost more CPU than
the database work (measured with /proc CPU counters, see docs/design.md "Hot
path"). Anything the lean path does not recognise goes on to FastAPI, which
answers it (404, 405 with Allow, ...).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from session_service.api.auth import TokenAuth
from session_service.api.codec import decode, encode_body, int_field, prefers_msgpack, str_field
from session_service.api.lockwait import LockWaiter
from session_service.api.problems import ApiError, from_store_error
from session_service.api.tally import RequestTally
from session_service.async_store import AsyncSessionStore
from session_service.errors import StoreError
from session_service.ids import is_valid_session_id
from session_service.settings import Settings
from session_service.store import SessionRecord

log = logging.getLogger(__name__)
PREFIX = "/v1/sessions/"

#: route templates, as the metrics label them
SESSION = "/v1/sessions/{sid}"
LOCK = "/v1/sessions/{sid}/lock"
TOUCH = "/v1/sessions/{sid}/touch"


class Call:
    """One /v1/sessions request: the few headers the endpoints use, read in one pass."""

    __slots__ = (
        "_query",
        "accept",
        "authorization",
        "content_length",
        "content_type",
        "method",
        "query_string",
        "receive",
    )

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.receive = receive
        self.query_string: bytes = scope.get("query_string", b"")
        self._query: dict[str, str] | None = None
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:  # names are lower case in ASGI
            if name in _WANTED and name not in found:  # the first one counts
                found[name] = value
        self.authorization = _text(found.get(b"authorization"))
        self.content_type = _text(found.get(b"content-type"))
        self.accept = _text(found.get(b"accept"))
        self.content_length = _text(found.get(b"content-length"))

    def query(self, name: str) -> str | None:
        if self._query is None:
            self._query = _parse_query(self.query_string.decode("latin-1"))
        return self._query.get(name)

    @property
    def msgpack(self) -> bool:
        return prefers_msgpack(self.accept, self.content_type)

    async def departed(self) -> None:
        """Return once the client has closed its connection (ASGI's `http.disconnect`,
        which uvicorn's cycle and DirectCycle give when the connection is lost); a body
        still coming is read and dropped. Watched by a lock request while it waits."""
        try:
            while (await self.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # cannot tell: treat the client as present
            log.exception("watching a lock waiter's connection failed")
            await asyncio.Event().wait()


def _parse_query(query: str) -> dict[str, str]:
    """Query parameters, the first of each name counting. The usual query here
    (`wait_ms=5000&lease_ms=30000`) has nothing escaped: split it directly, which
    costs a tenth of parse_qsl; anything with % or + goes through parse_qsl."""
    found: dict[str, str] = {}
    if "%" in query or "+" in query:
        for key, value in parse_qsl(query, keep_blank_values=True):
            found.setdefault(key, value)
        return found
    for pair in query.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            found.setdefault(key, value)
    return found


_WANTED = frozenset((b"authorization", b"content-type", b"accept", b"content-length"))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class Reply:
    """A whole response: status, body, media type and any extra headers."""

    __slots__ = ("body", "headers", "media_type", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        media_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.media_type = media_type
        self.headers = headers

    @classmethod
    def encoded(cls, call: Call, payload: dict[str, Any], status: int = 200) -> Reply:
        body, media_type = encode_body(payload, call.msgpack)
        return cls(status, body, media_type)

    @classmethod
    def problem(cls, call: Call, error: ApiError) -> Reply:
        reply = cls.encoded(call, {"error": error.code, "detail": error.detail}, error.status)
        reply.headers = error.headers or None
        return reply

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        if self.media_type is not None:
            headers.append((b"content-type", self.media_type.encode("latin-1")))
        return headers + self.own_headers()

    def own_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers only this reply has: its length and any extra ones (the status
        and content type are shared by many replies, see http_protocol._head)."""
        headers: list[tuple[bytes, bytes]] = []
        if self.status != 204:
            headers.append((b"content-length", b"%d" % len(self.body)))
        for name, value in (self.headers or {}).items():
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        return headers

    async def send(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status, "headers": self.raw_headers()}
        )
        await send({"type": "http.response.body", "body": self.body})

    def response(self) -> Response:
        """The same reply as a Starlette response (for the FastAPI routes)."""
        return Response(
            self.body, status_code=self.status, media_type=self.media_type, headers=self.headers
        )


def record_payload(record: SessionRecord) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "data": record.data,
        "version": record.version,
        "expires_at": record.expires_at,
    }
    if record.lock is not None:
        payload["lock"] = record.lock
        payload["lease_expires_at_ms"] = record.lease_expires_at_ms
        payload["new"] = record.new
    return payload


Endpoint = Callable[[Call, str], Awaitable[Reply]]


class SessionEndpoints:
    def __init__(
        self, settings: Settings, auth: TokenAuth, sessions: AsyncSessionStore, waiter: LockWaiter
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.sessions = sessions
        self.waiter = waiter
        self.body_limit = settings.max_data_bytes * 4 // 3 + 4096  # base64 plus the other fields
        #: (what follows the id, method) -> (endpoint, route template for metrics)
        self.routes: dict[tuple[str, str], tuple[Endpoint, str]] = {
            ("", "GET"): (self.read, SESSION),
            ("", "HEAD"): (self.exists, SESSION),
            ("", "PUT"): (self.write, SESSION),
            ("", "DELETE"): (self.destroy, SESSION),
            ("lock", "POST"): (self.lock, LOCK),
            ("lock", "DELETE"): (self.release, LOCK),
            ("touch", "POST"): (self.touch, TOUCH),
        }

    async def serve(self, call: Call, endpoint: Endpoint, sid: str, route: str) -> Reply:
        """Run one endpoint; every failure becomes an error reply, never an exception."""
        try:
            return await endpoint(call, sid)
        except ApiError as error:
            return Reply.problem(call, error)
        except StoreError as error:
            return Reply.problem(call, from_store_error(error))
        except Exception:
            log.exception("unexpected error on %s %s", call.method, route)
            return Reply.problem(call, ApiError(500, "internal", "internal error; see the log"))

    async def serve_request(self, request: Request, sid: str, endpoint: Endpoint) -> Response:
        """For the FastAPI routes (normally unreached: the lean path answers first)."""
        call = Call(request.scope, request.receive)
        return (await self.serve(call, endpoint, sid, request.url.path)).response()

    # -- helpers -------------------------------------------------------------------------

    def authorize(self, call: Call, sid: str) -> str:
        namespace = self.auth.namespace(call.authorization)
        if not is_valid_session_id(sid):
            raise ApiError(
                400,
                "invalid_session_id",
                "session id must be 22 to 256 characters of [A-Za-z0-9,-]",
            )
        return namespace

    async def read_body(self, call: Call) -> dict[str, Any]:
        length = call.content_length
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "malformed_body", "Content-Length is not a number")
            if int(length) > self.body_limit:
                raise ApiError(
                    413, "too_large", f"body of {length} bytes exceeds the limit for this service"
                )
        chunks = b""
        while True:
            message = await call.receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "malformed_body", "the client went away mid-body")
            chunks += message.get("body", b"")
            if len(chunks) > self.body_limit:
                raise ApiError(413, "too_large", "body exceeds the limit for this service")
            if not message.get("more_body", False):
                break
        return decode(call.content_type or "", chunks)

    @staticmethod
    def query_int(call: Call, name: str, default: int, low: int, high: int) -> int:
        raw = call.query(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(
                422, "invalid_request", f"query.{name}: Input should be a valid integer"
            ) from None
        if not low <= value <= high:
            raise ApiError(422, "invalid_request", f"{name} must be between {low} and {high}")
        return value

    # -- the endpoints -------------------------------------------------------------------

    async def read(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        record = await self.sessions.read(namespace, sid)
        if record is None:
            raise ApiError(404, "not_found", "no live session with this id")
        return Reply.encoded(call, record_payload(record))

    async def exists(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        found = await self.sessions.exists(namespace, sid)
        return Reply(200 if found else 404)

    async def lock(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        s = self.settings
        wait = self.query_int(call, "wait_ms", s.default_wait_ms, 0, s.max_wait_ms)
        lease = self.query_int(call, "lease_ms", s.default_lease_ms, 100, s.max_lease_ms)
        record = await self.waiter.acquire(namespace, sid, wait, lease, call.departed)
        return Reply.encoded(call, record_payload(record))

    async def write(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        body = await self.read_body(call)
        data = body.get("data")
        if not isinstance(data, bytes):
            raise ApiError(422, "invalid_request", "data is required")
        ttl = int_field(body, "ttl", 1, self.settings.max_ttl, required=True)
        assert ttl is not None
        lock = str_field(body, "lock")
        if_version = int_field(body, "if_version", 0, 2**62, required=False)
        result = await self.sessions.write(
            namespace, sid, data, ttl, lock=lock, if_version=if_version
        )
        if lock is not None:
            self.waiter.notify(namespace, sid)
        return Reply.encoded(call, {"version": result.version, "expires_at": result.expires_at})

    async def touch(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        body = await self.read_body(call)
        ttl = int_field(body, "ttl", 1, self.settings.max_ttl, required=True)
        assert ttl is not None
        lock = str_field(body, "lock")
        try:
            result = await self.sessions.touch(namespace, sid, ttl, lock=lock)
        finally:
            if lock is not None:
                self.waiter.notify(namespace, sid)
        return Reply.encoded(call, {"version": result.version, "expires_at": result.expires_at})

    async def release(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        lock = call.query("lock")
        if lock is None:
            raise ApiError(422, "invalid_request", "query.lock: Field required")
        await self.sessions.release(namespace, sid, lock)
        self.waiter.notify(namespace, sid)
        return Reply(204)

    async def destroy(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        await self.sessions.destroy(namespace, sid)
        self.waiter.notify(namespace, sid)
        return Reply(204)


class LeanPath:
    """ASGI app: /v1/sessions requests to the endpoints directly, the rest to `fallback`
    (FastAPI inside the metrics middleware). Records the same metrics as that middleware,
    counted in `tally` (tally.py) and added to Prometheus in bulk.

    `route()` and `answer()` are also used by the service's HTTP protocol
    (http_protocol.py), which answers these requests without an ASGI cycle at all."""

    def __init__(
        self, endpoints: SessionEndpoints, fallback: ASGIApp, tally: RequestTally | None = None
    ) -> None:
        self.endpoints = endpoints
        self.fallback = fallback
        self.tally = tally or RequestTally()

    def route(self, path: str, method: str) -> tuple[str, Endpoint, str] | None:
        """(session id, endpoint, route template) for a /v1/sessions request, else None."""
        if not path.startswith(PREFIX):
            return None
        sid, _, action = path[len(PREFIX) :].partition("/")
        found = self.endpoints.routes.get((action, method))
        if found is None or not sid:
            return None
        return sid, found[0], found[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self.route(scope["path"], scope["method"])
            if found is not None:
                reply = await self.answer(scope, receive, *found)
                await reply.send(send)
                return
        await self.fallback(scope, receive, send)

    async def answer(
        self, scope: Scope, receive: Receive, sid: str, endpoint: Endpoint, route: str
    ) -> Reply:
        """The endpoint's reply (errors included), with the request's metrics recorded."""
        started = time.perf_counter()
        call = Call(scope, receive)
        reply = await self.endpoints.serve(call, endpoint, sid, route)
        self.tally.request(route, call.method, reply.status, time.perf_counter() - started)
        return reply
