"""The service's ASGI app: the /v1 endpoints (contract.py, served by the lean path in
sessions.py) in front of a small FastAPI app for health, readiness, metrics and the
OpenAPI document, which is FastAPI's for its own routes plus the contract table's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from session_service import tokens
from session_service.api import contract, problems
from session_service.api.auth import TokenAuth
from session_service.api.background_gc import run_gc_forever
from session_service.api.lockwait import LockWaiter
from session_service.api.observability import MetricsMiddleware
from session_service.api.schema_setup import SchemaSetup
from session_service.api.sessions import LeanPath, SessionEndpoints
from session_service.api.tally import RequestTally
from session_service.async_store import AsyncSessionStore
from session_service.errors import StoreUnavailable
from session_service.settings import Settings
from session_service.store import SessionStore

log = logging.getLogger(__name__)


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

    _document_contract(app, settings)
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


def _document_contract(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document: FastAPI's for its own routes, plus the /v1 endpoints from the
    contract table with this instance's limits, and the bearer security scheme. Built on
    the first request for it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            document["paths"] = {**contract.openapi_paths(settings), **document["paths"]}
            components = document.setdefault("components", {})
            components["securitySchemes"] = contract.SECURITY_SCHEMES
            app.openapi_schema = document
        return app.openapi_schema

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
