"""The /v1 endpoints, and the lean path that serves them.

Each endpoint is one method here, named by the contract table (contract.py), which
also gives the routes, the fields each endpoint reads and the OpenAPI document.
Requests for `/v1/...` are served by `LeanPath` straight from the ASGI scope: no
routing table walk, no dependency solving, no middleware stack, no Request/Response
objects, and the metrics recorded inline. On a lock + write cycle that machinery
cost more CPU than the database work (measured with /proc CPU counters, see
docs/design.md "Hot path"). Anything else goes on to FastAPI (health, readiness,
metrics, the OpenAPI document, 404s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from session_service.api.auth import TokenAuth
from session_service.api.codec import decode, encode_body, prefers_msgpack
from session_service.api.contract import ROUTES, SESSION, Reader
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
    """The /v1 endpoints, routed and validated as contract.ROUTES declares them."""

    def __init__(
        self, settings: Settings, auth: TokenAuth, sessions: AsyncSessionStore, waiter: LockWaiter
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.sessions = sessions
        self.waiter = waiter
        self.body_limit = settings.max_data_bytes * 4 // 3 + 4096  # base64 plus the other fields
        #: (what follows the id, method) -> (endpoint, route template for metrics)
        self.routes: dict[tuple[str, str], tuple[Endpoint, str]] = {}
        #: the other /v1 paths: path -> method -> (endpoint, route template)
        self.paths: dict[str, dict[str, tuple[Endpoint, str]]] = {}
        #: what follows the id, or a path -> the Allow header of its 405, its template
        self.allow: dict[str, str] = {}
        self.templates: dict[str, str] = {}
        readers: dict[str, tuple[Reader, Reader]] = {}
        for route in ROUTES:
            endpoint: Endpoint = getattr(self, route.handler)
            if route.path.startswith(SESSION):
                key = route.path[len(SESSION) + 1 :]
                self.routes[(key, route.method)] = (endpoint, route.path)
            else:
                key = route.path
                self.paths.setdefault(key, {})[route.method] = (endpoint, route.path)
            methods = {*self.allow.get(key, "").split(", "), route.method} - {""}
            self.allow[key] = ", ".join(sorted(methods))
            self.templates[key] = route.path
            readers[route.handler] = (
                Reader(route.body, settings, query=False),
                Reader(route.query, settings, query=True),
            )
        self._write_body = readers["write"][0]
        self._touch_body = readers["touch"][0]
        self._lock_query = readers["lock"][1]
        self._release_query = readers["release"][1]

    def not_allowed(self, key: str) -> Endpoint:
        """An endpoint answering 405 with the methods `key`'s route has."""
        allow = self.allow[key]

        async def refuse(call: Call, sid: str) -> Reply:
            raise ApiError(405, "method_not_allowed", "Method Not Allowed", {"Allow": allow})

        return refuse

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
        wait, lease = self._lock_query.read(call.query)
        record = await self.waiter.acquire(namespace, sid, wait, lease, call.departed)
        return Reply.encoded(call, record_payload(record))

    async def write(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        data, ttl, lock, if_version = self._write_body.read((await self.read_body(call)).get)
        result = await self.sessions.write(
            namespace, sid, data, ttl, lock=lock, if_version=if_version
        )
        if lock is not None:
            self.waiter.notify(namespace, sid)
        return Reply.encoded(call, {"version": result.version, "expires_at": result.expires_at})

    async def touch(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        ttl, lock = self._touch_body.read((await self.read_body(call)).get)
        try:
            result = await self.sessions.touch(namespace, sid, ttl, lock=lock)
        finally:
            if lock is not None:
                self.waiter.notify(namespace, sid)
        return Reply.encoded(call, {"version": result.version, "expires_at": result.expires_at})

    async def release(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        (lock,) = self._release_query.read(call.query)
        await self.sessions.release(namespace, sid, lock)
        self.waiter.notify(namespace, sid)
        return Reply(204)

    async def destroy(self, call: Call, sid: str) -> Reply:
        namespace = self.authorize(call, sid)
        await self.sessions.destroy(namespace, sid)
        self.waiter.notify(namespace, sid)
        return Reply(204)

    async def gc(self, call: Call, _sid: str) -> Reply:
        """Expired sessions of every namespace: hence the admin scope."""
        self.auth.admin(call.authorization, "POST /v1/gc")
        deleted = await run_in_threadpool(self.sessions.store.gc)
        return Reply.encoded(call, {"deleted": deleted})


class LeanPath:
    """ASGI app: /v1 requests to the endpoints directly, the rest to `fallback`
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
        """(session id, endpoint, route template) for a /v1 request, else None (a path
        of no route: FastAPI answers it). A method the path has not is answered 405."""
        endpoints = self.endpoints
        if not path.startswith(PREFIX):
            methods = endpoints.paths.get(path)
            if methods is None:
                return None
            found = methods.get(method)
            if found is None:
                return "", endpoints.not_allowed(path), path
            return "", found[0], found[1]
        sid, _, action = path[len(PREFIX) :].partition("/")
        found = endpoints.routes.get((action, method))
        if found is None or not sid:
            if sid and action in endpoints.allow:
                return sid, endpoints.not_allowed(action), endpoints.templates[action]
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
