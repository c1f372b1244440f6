"""Error responses: one body shape, {"error": code, "detail": reason}, for every failure."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from session_service import errors

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def _retry_after(ms: int) -> dict[str, str]:
    return {"Retry-After": str(max(1, (ms + 999) // 1000))}


def from_store_error(error: errors.StoreError) -> ApiError:
    """The one place where store exceptions become HTTP statuses."""
    if isinstance(error, errors.InvalidSessionId):
        return ApiError(400, "invalid_session_id", str(error))
    if isinstance(error, errors.SessionNotFound):
        return ApiError(404, "not_found", str(error))
    if isinstance(error, errors.LockLost):
        return ApiError(409, "lock_lost", str(error))
    if isinstance(error, errors.VersionConflict):
        return ApiError(412, "version_mismatch", str(error))
    if isinstance(error, errors.DataTooLarge):
        return ApiError(413, "too_large", str(error))
    if isinstance(error, errors.InvalidLockToken):
        return ApiError(422, "invalid_request", str(error))
    if isinstance(error, errors.SessionLocked):
        return ApiError(423, "locked", str(error), _retry_after(error.retry_after_ms))
    if isinstance(error, errors.LockTimeout):
        return ApiError(423, "lock_timeout", str(error), _retry_after(error.retry_after_ms))
    if isinstance(error, errors.StoreUnavailable):
        return ApiError(503, "unavailable", str(error), {"Retry-After": "1"})
    return ApiError(500, "internal", "unexpected store error")


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves on this path (one route per method here)."""
    methods: set[str] = set()
    for route in app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    for route in app.routes:
        if route.matches({**request.scope, "method": "HEAD"})[0] is Match.FULL:
            methods.add("HEAD")
    return sorted(methods)


def render(request: Request, error: ApiError) -> Response:
    """The error body in the format the caller negotiated, with the error's headers."""
    from session_service.api.codec import encode

    response = encode(request, {"error": error.code, "detail": error.detail}, error.status)
    response.headers.update(error.headers)
    return response


def install(app: FastAPI) -> None:

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return render(request, exc)

    async def store_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.StoreError)
        return render(request, from_store_error(exc))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return render(request, ApiError(422, "invalid_request", reasons or "invalid request"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return render(request, ApiError(exc.status_code, code, str(exc.detail), headers))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.scope.get("route_name"))
        return render(request, ApiError(500, "internal", "internal error; see the service log"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(errors.StoreError, store_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
