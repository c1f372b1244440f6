"""The /v1 endpoints, defined once: method, path, handler, body, query, result and errors.

This table is the API's contract in code (docs/api.md in prose). Two things are
made from it when the app is built, and nothing per request:

- the lean path's routes (sessions.py: `SessionEndpoints` looks each handler up by
  name, and validates bodies and query parameters with readers made from the
  fields declared here, so a limit or a message cannot differ between the two);
- the OpenAPI document (`openapi_paths`), with the bearer security scheme.

Limits that come from settings (`max_ttl`, `max_wait_ms`, ...) are named here by
their setting, so each instance documents and enforces its own configuration.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from session_service.api.problems import ApiError
from session_service.ids import SESSION_ID_PATTERN
from session_service.settings import Settings

#: a limit: a number, or the name of the setting that holds it
Limit = int | str | None


@dataclass(frozen=True)
class Field:
    """One body field or query parameter."""

    name: str
    #: "integer", "string", "bytes" (msgpack bin / base64 in JSON) or "lock" (a fencing token)
    kind: str
    description: str
    required: bool = False
    low: Limit = None
    high: Limit = None
    #: a query parameter's default when absent: the setting that holds it
    default: str | None = None

    def limits(self, settings: Settings) -> tuple[int | None, int | None]:
        return _resolve(self.low, settings), _resolve(self.high, settings)

    def schema(self, settings: Settings, *, nullable: bool) -> dict[str, Any]:
        low, high = self.limits(settings)
        schema: dict[str, Any]
        if self.kind == "bytes":
            schema = dict(_BYTES)
        elif self.kind == "lock":
            schema = {"type": "string", "pattern": LOCK_PATTERN, "description": "fencing token"}
        else:
            schema = {"type": self.kind}
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
        if nullable and not self.required:
            # null is accepted for an optional field and means "absent" (msgpack clients send nil)
            schema["type"] = [schema["type"], "null"]
        return schema


def _resolve(limit: Limit, settings: Settings) -> int | None:
    return getattr(settings, limit) if isinstance(limit, str) else limit


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    #: the SessionEndpoints method that answers it
    handler: str
    summary: str
    ok: int = 200
    #: the success answer's schema (None: no body)
    result: dict[str, Any] | None = None
    body: tuple[Field, ...] = ()
    query: tuple[Field, ...] = ()
    #: statuses beyond those every /v1 call may answer (400, 401, 422, 503)
    errors: tuple[int, ...] = ()
    #: FastAPI's operationId of the routes this table replaced, kept for generated clients
    operation: str = ""
    #: "token", or "admin": a token with the admin scope (403 for another token)
    scope: str = "token"
    #: HEAD: only statuses, no bodies
    bodiless: bool = False

    @property
    def operation_id(self) -> str:
        return re.sub(r"\W", "_", f"{self.operation}{self.path}") + "_" + self.method.lower()


LOCK_PATTERN = "^[0-9a-fA-F]{32}$"
_BYTES = {"type": "string", "format": "byte", "description": "base64 in JSON, bin in msgpack"}
SESSION = "/v1/sessions/{sid}"
LOCK = "/v1/sessions/{sid}/lock"
TOUCH = "/v1/sessions/{sid}/touch"
GC = "/v1/gc"

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
_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
_TTL = Field("ttl", "integer", "seconds until the session expires", True, 1, "max_ttl")
_BODY_LOCK = Field("lock", "lock", "the fencing token from lock: write or touch under it")

ROUTES: tuple[Route, ...] = (
    Route(
        "GET", SESSION, "read", "Read a session without locking",
        result=_RECORD, errors=(404,), operation="read_session",
    ),
    Route(
        "HEAD", SESSION, "exists", "Does a live session exist?",
        errors=(404,), operation="session_exists", bodiless=True,
    ),
    Route(
        "POST", LOCK, "lock", "Lock and read (exclusive lease with a fencing token)",
        result=_RECORD, errors=(423,), operation="lock_session",
        query=(
            Field("wait_ms", "integer", "ms to wait for the holder",
                  low=0, high="max_wait_ms", default="default_wait_ms"),
            Field("lease_ms", "integer", "ms until the lease ends itself",
                  low=100, high="max_lease_ms", default="default_lease_ms"),
        ),
    ),
    Route(
        "PUT", SESSION, "write",
        "Write (fenced by lock, compare-and-set by if_version, or last write wins)",
        result=_WRITE_RESULT, errors=(409, 412, 413, 415, 423), operation="write_session",
        body=(
            Field("data", "bytes", "the session payload", True),
            _TTL,
            _BODY_LOCK,
            Field("if_version", "integer", "compare-and-set: the version expected",
                  low=0, high=2**62),
        ),
    ),
    Route(
        "POST", TOUCH, "touch", "Extend expiry (and release the lock)",
        result=_WRITE_RESULT, errors=(404, 409, 415), operation="touch_session",
        body=(_TTL, _BODY_LOCK),
    ),
    Route(
        "DELETE", LOCK, "release", "Release the lock without writing",
        ok=204, errors=(409,), operation="release_lock",
        query=(Field("lock", "lock", "the fencing token from lock", True),),
    ),
    Route(
        "DELETE", SESSION, "destroy", "Destroy the session",
        ok=204, operation="destroy_session",
    ),
    Route(
        "POST", GC, "gc", "Delete expired sessions of every namespace now (admin scope)",
        result={"type": "object", "properties": {"deleted": {"type": "integer"}}},
        errors=(403,), operation="collect", scope="admin",
    ),
)  # fmt: skip

#: what every /v1 call may answer besides its own statuses
COMMON_ERRORS = (400, 401, 422, 503)

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "a token of the service's --tokens or tokens file; its namespace is "
        "the tenant. POST /v1/gc needs one with the admin scope (namespace+admin:secret)",
    }
}


# -- validation: readers made once from the fields ---------------------------------------


Check = Callable[[Any], Any]


def _integer_check(field: Field, settings: Settings, *, query: bool) -> Check:
    name, required = field.name, field.required
    low, high = field.limits(settings)
    low = -(2**63) if low is None else low
    high = 2**63 if high is None else high
    default = getattr(settings, field.default) if field.default else None
    range_error = f"{name} must be between {low} and {high}"

    def check(value: Any) -> Any:
        if value is None:
            if required:
                raise ApiError(422, "invalid_request", f"{name} is required")
            return default
        if query:
            try:
                value = int(value)
            except ValueError:
                raise ApiError(
                    422, "invalid_request", f"query.{name}: Input should be a valid integer"
                ) from None
        else:
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # JSON has one number type: 1440.0 is the integer 1440
            if isinstance(value, bool) or not isinstance(value, int):
                raise ApiError(422, "invalid_request", f"{name} must be an integer")
        if not low <= value <= high:
            raise ApiError(422, "invalid_request", range_error)
        return value

    return check


def _string_check(field: Field, *, query: bool) -> Check:
    name, required = field.name, field.required
    missing = f"query.{name}: Field required" if query else f"{name} is required"

    def check(value: Any) -> Any:
        if value is None:
            if required:
                raise ApiError(422, "invalid_request", missing)
            return None
        if not isinstance(value, str):
            raise ApiError(422, "invalid_request", f"{name} must be a string")
        return value

    return check


def _bytes_check(field: Field) -> Check:
    # codec.decode has turned a present `data` into bytes, or refused it
    required = f"{field.name} is required"

    def check(value: Any) -> Any:
        if not isinstance(value, bytes):
            raise ApiError(422, "invalid_request", required)
        return value

    return check


class Reader:
    """Reads declared fields from a decoded body (or a query): their values in declared
    order, each checked against its field; ApiError 422 naming the first that is not."""

    __slots__ = ("_checks",)

    def __init__(self, fields: tuple[Field, ...], settings: Settings, *, query: bool) -> None:
        checks: list[tuple[str, Check]] = []
        for field in fields:
            if field.kind == "integer":
                checks.append((field.name, _integer_check(field, settings, query=query)))
            elif field.kind == "bytes":
                checks.append((field.name, _bytes_check(field)))
            else:
                checks.append((field.name, _string_check(field, query=query)))
        self._checks = tuple(checks)

    def read(self, get: Callable[[str], Any]) -> list[Any]:
        values = []  # a loop, not a comprehension: no extra frame on Python 3.11
        for name, check in self._checks:
            values.append(check(get(name)))
        return values


# -- the OpenAPI document ---------------------------------------------------------------------


def _error_responses(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in sorted({*COMMON_ERRORS, *route.errors}):
        if route.bodiless:
            out[str(status)] = {"description": "error (no body)"}
        else:
            out[str(status)] = {
                "description": "error",
                "content": {"application/json": {"schema": _ERROR}, "application/msgpack": {}},
            }
    return out


def _operation(route: Route, settings: Settings) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    if "{sid}" in route.path:
        description = "PHP session id, 22-256 characters of [A-Za-z0-9,-] (else 400)"
        parameters.append(
            {
                "name": "sid",
                "in": "path",
                "required": True,
                "description": description,
                "schema": {"type": "string", "pattern": SESSION_ID_PATTERN},
            }
        )
    for field in route.query:
        parameters.append(
            {
                "name": field.name,
                "in": "query",
                "required": field.required,
                "description": field.description,
                "schema": field.schema(settings, nullable=False),
            }
        )
    if route.result is not None:
        ok: dict[str, Any] = {
            "description": "success",
            "content": {
                "application/json": {"schema": route.result},
                "application/msgpack": {},
            },
        }
    else:
        ok = {"description": "success" if not route.bodiless else "a live session exists"}
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.operation_id,
        "security": [{"bearer": []}],
        "parameters": parameters,
        "responses": {str(route.ok): ok, **_error_responses(route)},
    }
    if route.bodiless:
        operation["responses"]["404"] = {"description": "no live session with this id"}
    if route.body:
        schema = {
            "type": "object",
            "required": [field.name for field in route.body if field.required],
            "properties": {
                field.name: field.schema(settings, nullable=True) for field in route.body
            },
        }
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/msgpack": {"schema": schema},
            },
        }
    return operation


def openapi_paths(settings: Settings) -> dict[str, dict[str, Any]]:
    """The /v1 part of the OpenAPI document, with this instance's limits."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, settings)
    return paths
