"""The FastAPI application: routes of docs/api.md over one SessionStore.

Handlers take the raw Request and decode bodies themselves (msgpack or JSON), so
the hot path pays for no validation model it does not need; the OpenAPI document
still describes every body through `openapi_extra`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio.to_thread
from fastapi import FastAPI, Path, Query
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from session_service import tokens
from session_service.api import problems
from session_service.api.auth import TokenAuth
from session_service.api.background_gc import run_gc_forever
from session_service.api.codec import encode
from session_service.api.lockwait import LockWaiter
from session_service.api.observability import MetricsMiddleware
from session_service.api.schema_setup import SchemaSetup
from session_service.api.sessions import LeanPath, SessionEndpoints
from session_service.api.tally import RequestTally
from session_service.async_store import AsyncSessionStore
from session_service.errors import StoreUnavailable
from session_service.ids import SESSION_ID_PATTERN
from session_service.settings import Settings
from session_service.store import SessionStore

log = logging.getLogger(__name__)

SessionId = Annotated[
    str,
    Path(
        description="PHP session id, 22-256 characters of [A-Za-z0-9,-] (else 400)",
        json_schema_extra={"pattern": SESSION_ID_PATTERN},
    ),
]

_BYTES = {"type": "string", "format": "byte", "description": "base64 in JSON, bin in msgpack"}
_RECORD = {
    "type": "object",
    "required": ["data", "version", "expires_at"],
    "properties": {
        "data": _BYTES,
        "version": {"type": "integer"},
        "expires_at": {"type": "integer"},
        "lock": {"type": "string"},
        "lease_expires_at_ms": {"type": "integer"},
        "new": {"type": "boolean"},
    },
}
_WRITE_RESULT = {
    "type": "object",
    "required": ["version", "expires_at"],
    "properties": {"version": {"type": "integer"}, "expires_at": {"type": "integer"}},
}
_LOCK_TOKEN = {"type": "string", "pattern": "^[0-9a-fA-F]{32}$", "description": "fencing token"}
#: null is accepted for an optional field and means "absent" (msgpack clients send nil)
_OPTIONAL_LOCK_TOKEN = {**_LOCK_TOKEN, "type": ["string", "null"]}
_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}


def _body_doc(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/msgpack": {"schema": schema},
            },
        }
    }


def _responses(ok: int, schema: dict[str, Any] | None, *errors: int) -> dict[int | str, Any]:
    out: dict[int | str, Any] = {
        ok: {"description": "success"}
        if schema is None
        else {
            "description": "success",
            "content": {"application/json": {"schema": schema}, "application/msgpack": {}},
        }
    }
    for status in (400, 401, 422, 503, *errors):
        out[status] = {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    return out


def create_app(settings: Settings | None = None, store: SessionStore | None = None) -> ASGIApp:
    """The service as an ASGI app: metrics around the lean /v1/sessions path around FastAPI."""
    settings = settings or Settings()
    auth = TokenAuth(
        tokens.read_strictly(settings),
        disabled=settings.insecure_no_auth,
        reload=lambda: tokens.load(settings),
        watch=settings.tokens_file,
    )
    store = store or SessionStore(settings)
    sessions = AsyncSessionStore(store)
    tally = RequestTally()
    waiter = LockWaiter(sessions, tally.lock_wait)
    endpoints = SessionEndpoints(settings, auth, sessions, waiter)
    schema = SchemaSetup(store, settings.auto_migrate)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # One request thread per pooled connection: more threads would only queue on the
        # pool, and a pool smaller than the threads would open and close connections.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = settings.db_pool_size
        schema_task = None
        if settings.auto_migrate:
            # The first attempt before serving; if the database is down, the service
            # starts anyway and keeps trying (/readyz tells the truth meanwhile).
            schema_task = asyncio.create_task(schema.run_until_done())
            await asyncio.wait([schema_task], timeout=settings.db_connect_timeout + 2)
        tally_task = asyncio.create_task(tally.flush_forever())
        gc_task = (
            asyncio.create_task(run_gc_forever(store, settings.gc_interval))
            if settings.gc_interval > 0
            else None
        )
        try:
            yield
        finally:
            for task in (gc_task, schema_task, tally_task):
                if task is not None:
                    task.cancel()
            await sessions.close()
            store.close()

    app = FastAPI(
        title="session-service",
        version="1",
        summary="Shared PHP sessions for stateless web nodes",
        lifespan=lifespan,
    )
    problems.install(app)

    @app.get(
        "/v1/sessions/{sid}",
        summary="Read a session without locking",
        responses=_responses(200, _RECORD, 404),
    )
    async def read_session(request: Request, sid: SessionId) -> Response:
        return await endpoints.serve_request(request, sid, endpoints.read)

    @app.head(
        "/v1/sessions/{sid}",
        summary="Does a live session exist?",
        response_class=Response,
        responses={
            200: {"description": "a live session exists"},
            404: {"description": "no live session with this id"},
            400: {"description": "invalid session id"},
            401: {"description": "missing or unknown token"},
        },
    )
    async def session_exists(request: Request, sid: SessionId) -> Response:
        return await endpoints.serve_request(request, sid, endpoints.exists)

    @app.post(
        "/v1/sessions/{sid}/lock",
        summary="Lock and read (exclusive lease with a fencing token)",
        responses=_responses(200, _RECORD, 423),
    )
    async def lock_session(
        request: Request,
        sid: SessionId,
        wait_ms: Annotated[int | None, Query(description="ms to wait for the holder")] = None,
        lease_ms: Annotated[int | None, Query(description="ms until the lease ends itself")] = None,
    ) -> Response:
        return await endpoints.serve_request(request, sid, endpoints.lock)

    @app.put(
        "/v1/sessions/{sid}",
        summary="Write (fenced by lock, compare-and-set by if_version, or last write wins)",
        openapi_extra=_body_doc(
            {
                "data": _BYTES,
                "ttl": {"type": "integer", "minimum": 1, "maximum": settings.max_ttl},
                "lock": _OPTIONAL_LOCK_TOKEN,
                "if_version": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**62},
            },
            ["data", "ttl"],
        ),
        responses=_responses(200, _WRITE_RESULT, 409, 412, 413, 415, 423),
    )
    async def write_session(request: Request, sid: SessionId) -> Response:
        return await endpoints.serve_request(request, sid, endpoints.write)

    @app.post(
        "/v1/sessions/{sid}/touch",
        summary="Extend expiry (and release the lock)",
        openapi_extra=_body_doc(
            {
                "ttl": {"type": "integer", "minimum": 1, "maximum": settings.max_ttl},
                "lock": _OPTIONAL_LOCK_TOKEN,
            },
            ["ttl"],
        ),
        responses=_responses(200, _WRITE_RESULT, 404, 409, 415),
    )
    async def touch_session(request: Request, sid: SessionId) -> Response:
        return await endpoints.serve_request(request, sid, endpoints.touch)

    @app.delete(
        "/v1/sessions/{sid}/lock",
        summary="Release the lock without writing",
        status_code=204,
        responses=_responses(204, None, 409),
    )
    async def release_lock(
        request: Request,
        sid: SessionId,
        lock: Annotated[str, Query(description="the fencing token from lock")],
    ) -> Response:
        return await endpoints.serve_request(request, sid, endpoints.release)

    @app.delete(
        "/v1/sessions/{sid}",
        summary="Destroy the session",
        status_code=204,
        responses=_responses(204, None),
    )
    async def destroy_session(request: Request, sid: SessionId) -> Response:
        return await endpoints.serve_request(request, sid, endpoints.destroy)

    @app.post(
        "/v1/gc",
        summary="Delete expired sessions of every namespace now (admin scope)",
        responses=_responses(
            200, {"type": "object", "properties": {"deleted": {"type": "integer"}}}, 403
        ),
    )
    async def collect(request: Request) -> Response:
        auth.admin(request.headers.get("authorization"), "POST /v1/gc")
        deleted = await run_in_threadpool(store.gc)
        return encode(request, {"deleted": deleted})

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz", summary="The database answers", responses={503: {"description": "not ready"}}
    )
    async def readyz() -> JSONResponse:
        try:
            await asyncio.wait_for(run_in_threadpool(store.ping), timeout=5)
        except (StoreUnavailable, TimeoutError) as error:
            reason = str(error) or "database did not answer within 5 s"
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        if schema.problem is not None:
            return JSONResponse(
                {"status": "unavailable", "reason": schema.problem}, status_code=503
            )
        return _token_readiness(auth)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def prometheus_metrics() -> Response:
        auth.refresh()  # the tokens metrics are current even when no request came
        tally.flush()  # this process's counts are exact in the answer
        return Response(generate_latest(metrics_registry()), media_type=CONTENT_TYPE_LATEST)

    _document_limits(app, settings)
    return LeanPath(endpoints, MetricsMiddleware(app), tally)


def _token_readiness(auth: TokenAuth) -> JSONResponse:
    """Ready, or ready but degraded by the tokens configuration (docs/api.md): a tokens
    file with a refused line is served by its other lines, and every instance reads the
    same file, so a 503 would take them all out of the balancer for one bad line (nginx
    and HAProxy, too, keep serving when a reload fails, and report the failure). Not
    ready when no token at all is accepted: then the instance can serve nobody."""
    auth.refresh()
    if not auth.disabled and auth.in_force == 0:
        reason = auth.problem or "no token is configured"
        return JSONResponse(
            {"status": "unavailable", "reason": f"no token accepted: {reason}"}, status_code=503
        )
    if auth.problem is not None:
        return JSONResponse({"status": "degraded", "reason": auth.problem})
    return JSONResponse({"status": "ready"})


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Put this instance's limits into its OpenAPI document, so generated clients and
    property-based tests know the accepted ranges without guessing."""
    limits = {
        "wait_ms": {"minimum": 0, "maximum": settings.max_wait_ms},
        "lease_ms": {"minimum": 100, "maximum": settings.max_lease_ms},
        "lock": {"pattern": _LOCK_TOKEN["pattern"]},
    }
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for parameter in operation.get("parameters", []):
                    extra = limits.get(parameter.get("name", ""))
                    if extra and parameter.get("in") == "query":
                        target = parameter["schema"]
                        for option in target.get("anyOf", [target]):
                            if option.get("type") in ("integer", "string"):
                                option.update(extra)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def metrics_registry() -> CollectorRegistry:
    """This process's metrics, or every worker's when uvicorn runs several (multiprocess mode)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def app_from_environment() -> ASGIApp:
    """Factory for uvicorn workers: settings come from SESSION_* environment variables."""
    return create_app(Settings())
