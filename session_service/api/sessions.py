"""The /v1/sessions endpoints, and the lean path that serves them.

Each endpoint is one method here. The FastAPI app registers them as routes (that
is where the OpenAPI document and its validation come from), but requests for
`/v1/sessions/...` are dispatched straight to these methods by `dispatch()`,
without FastAPI's routing, dependency solving and middleware stack: on a lock +
write cycle that machinery cost as much CPU as the database work (measured with
/proc CPU counters, see docs/design.md "Hot path"). Anything `dispatch()` does
not recognise goes on to FastAPI, which answers it (404, 405 with Allow, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from session_service.api.auth import TokenAuth
from session_service.api.codec import decode, encode, int_field, str_field
from session_service.api.lockwait import LockWaiter
from session_service.api.problems import ApiError, from_store_error, render
from session_service.async_store import AsyncSessionStore
from session_service.errors import StoreError
from session_service.ids import is_valid_session_id
from session_service.settings import Settings
from session_service.store import SessionRecord

log = logging.getLogger(__name__)
PREFIX = "/v1/sessions/"
Endpoint = Callable[[Request, str], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class RouteName:
    """What the metrics middleware reads from scope["route"] (its path template)."""

    path: str


SESSION = RouteName("/v1/sessions/{sid}")
LOCK = RouteName("/v1/sessions/{sid}/lock")
TOUCH = RouteName("/v1/sessions/{sid}/touch")


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
        self.routes: dict[tuple[str, str], tuple[Endpoint, RouteName]] = {
            ("", "GET"): (self.read, SESSION),
            ("", "HEAD"): (self.exists, SESSION),
            ("", "PUT"): (self.write, SESSION),
            ("", "DELETE"): (self.destroy, SESSION),
            ("lock", "POST"): (self.lock, LOCK),
            ("lock", "DELETE"): (self.release, LOCK),
            ("touch", "POST"): (self.touch, TOUCH),
        }

    # -- the lean path -------------------------------------------------------------------

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve a /v1/sessions request; False when it is not one of ours (FastAPI's turn)."""
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            return False
        sid, _, action = path[len(PREFIX) :].partition("/")
        route = self.routes.get((action, scope["method"]))
        if route is None or not sid:
            return False
        endpoint, scope["route"] = route
        request = Request(scope, receive)
        try:
            response = await endpoint(request, sid)
        except ApiError as error:
            response = render(request, error)
        except StoreError as error:
            response = render(request, from_store_error(error))
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["route"].path)
            response = render(request, ApiError(500, "internal", "internal error; see the log"))
        await response(scope, receive, send)
        return True

    # -- helpers -------------------------------------------------------------------------

    def authorize(self, request: Request, sid: str) -> str:
        namespace = self.auth.namespace(request.headers.get("authorization"))
        if not is_valid_session_id(sid):
            raise ApiError(
                400,
                "invalid_session_id",
                "session id must be 22 to 256 characters of [A-Za-z0-9,-]",
            )
        return namespace

    async def read_body(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "malformed_body", "Content-Length is not a number")
            if int(length) > self.body_limit:
                raise ApiError(
                    413, "too_large", f"body of {length} bytes exceeds the limit for this service"
                )
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > self.body_limit:
                raise ApiError(413, "too_large", "body exceeds the limit for this service")
        return decode(request.headers.get("content-type", ""), bytes(chunks))

    @staticmethod
    def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
        raw = request.query_params.get(name)
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

    async def read(self, request: Request, sid: str) -> Response:
        namespace = self.authorize(request, sid)
        record = await self.sessions.read(namespace, sid)
        if record is None:
            raise ApiError(404, "not_found", "no live session with this id")
        return encode(request, record_payload(record))

    async def exists(self, request: Request, sid: str) -> Response:
        namespace = self.authorize(request, sid)
        found = await self.sessions.exists(namespace, sid)
        return Response(status_code=200 if found else 404)

    async def lock(self, request: Request, sid: str) -> Response:
        namespace = self.authorize(request, sid)
        s = self.settings
        wait = self.query_int(request, "wait_ms", s.default_wait_ms, 0, s.max_wait_ms)
        lease = self.query_int(request, "lease_ms", s.default_lease_ms, 100, s.max_lease_ms)
        record = await self.waiter.acquire(namespace, sid, wait, lease)
        return encode(request, record_payload(record))

    async def write(self, request: Request, sid: str) -> Response:
        namespace = self.authorize(request, sid)
        body = await self.read_body(request)
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
        return encode(request, {"version": result.version, "expires_at": result.expires_at})

    async def touch(self, request: Request, sid: str) -> Response:
        namespace = self.authorize(request, sid)
        body = await self.read_body(request)
        ttl = int_field(body, "ttl", 1, self.settings.max_ttl, required=True)
        assert ttl is not None
        lock = str_field(body, "lock")
        try:
            result = await self.sessions.touch(namespace, sid, ttl, lock=lock)
        finally:
            if lock is not None:
                self.waiter.notify(namespace, sid)
        return encode(request, {"version": result.version, "expires_at": result.expires_at})

    async def release(self, request: Request, sid: str) -> Response:
        namespace = self.authorize(request, sid)
        lock = request.query_params.get("lock")
        if lock is None:
            raise ApiError(422, "invalid_request", "query.lock: Field required")
        await self.sessions.release(namespace, sid, lock)
        self.waiter.notify(namespace, sid)
        return Response(status_code=204)

    async def destroy(self, request: Request, sid: str) -> Response:
        namespace = self.authorize(request, sid)
        await self.sessions.destroy(namespace, sid)
        self.waiter.notify(namespace, sid)
        return Response(status_code=204)


class LeanPath:
    """ASGI app: /v1/sessions requests to the endpoints directly, the rest to FastAPI."""

    def __init__(self, endpoints: SessionEndpoints, fallback: Any) -> None:
        self.endpoints = endpoints
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await self.endpoints.dispatch(scope, receive, send):
            return
        await self.fallback(scope, receive, send)
