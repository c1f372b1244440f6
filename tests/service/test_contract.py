"""One table defines the /v1 endpoints (issue 14 item 3): the lean path's routes, the
405 answers, the field checks and the OpenAPI document all come from it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from session_service.api.app import create_app
from session_service.api.contract import ROUTES
from session_service.api.problems import ApiError
from session_service.api.sessions import LeanPath
from session_service.settings import Settings
from tests.support import ServiceProcess, session_id

SID = "a" * 32


@pytest.fixture
def lean(tmp_path: Path) -> LeanPath:
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 's.db'}", tokens="a:b", max_ttl=777, max_wait_ms=1234
    )
    app = create_app(settings)
    assert isinstance(app, LeanPath)
    return app


def document(lean: LeanPath) -> dict[str, Any]:
    fastapi: Any = lean.fallback.app  # type: ignore[attr-defined]
    spec: dict[str, Any] = fastapi.openapi()
    return spec


def test_every_route_of_the_table_is_served_by_the_lean_path(lean: LeanPath) -> None:
    for route in ROUTES:
        found = lean.route(route.path.replace("{sid}", SID), route.method)
        assert found is not None, route
        sid, endpoint, template = found
        assert template == route.path
        assert endpoint == getattr(lean.endpoints, route.handler)
        assert sid == (SID if "{sid}" in route.path else "")


def test_every_route_of_the_table_is_in_the_openapi_document(lean: LeanPath) -> None:
    spec = document(lean)
    for route in ROUTES:
        operation = spec["paths"][route.path][route.method.lower()]
        assert operation["operationId"] == route.operation_id
        assert operation["security"] == [{"bearer": []}]
        assert str(route.ok) in operation["responses"]
        for status in (*route.errors, 400, 401, 503):
            assert str(status) in operation["responses"], (route.path, status)
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for public in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in spec["paths"][public]["get"]


def test_the_document_carries_this_instances_limits(lean: LeanPath) -> None:
    spec = document(lean)
    body = spec["paths"]["/v1/sessions/{sid}"]["put"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["properties"]["ttl"]["maximum"] == 777
    assert body["application/json"]["schema"]["required"] == ["data", "ttl"]
    lock = spec["paths"]["/v1/sessions/{sid}/lock"]["post"]["parameters"]
    wait = next(p for p in lock if p["name"] == "wait_ms")
    assert wait["schema"] == {"type": "integer", "minimum": 0, "maximum": 1234}


def test_the_checks_use_the_same_limits(lean: LeanPath) -> None:
    with pytest.raises(ApiError) as refused:
        lean.endpoints._write_body.read({"data": b"", "ttl": 778}.get)
    assert refused.value.status == 422 and refused.value.detail == "ttl must be between 1 and 777"
    too_long: dict[str, Any] = {"wait_ms": "1235"}
    with pytest.raises(ApiError) as refused:
        lean.endpoints._lock_query.read(too_long.get)
    assert refused.value.detail == "wait_ms must be between 0 and 1234"
    none: dict[str, Any] = {}
    assert lean.endpoints._lock_query.read(none.get) == [5000, 30000]  # the defaults


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", f"/v1/sessions/{SID}", "DELETE, GET, HEAD, PUT"),
        ("GET", f"/v1/sessions/{SID}/lock", "DELETE, POST"),
        ("PUT", f"/v1/sessions/{SID}/touch", "POST"),
        ("GET", "/v1/gc", "POST"),
    ],
)
def test_a_method_the_path_has_not_is_405_with_allow(
    lean: LeanPath, method: str, path: str, allow: str
) -> None:
    found = lean.route(path, method)
    assert found is not None
    sid, endpoint, _template = found
    with pytest.raises(ApiError) as refused:
        asyncio.run(endpoint(None, sid))  # type: ignore[arg-type]
    assert refused.value.status == 405 and refused.value.headers == {"Allow": allow}


def test_405_and_404_over_http(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 's.db'}")
    sid = session_id()
    cases = [
        ("PATCH", f"/v1/sessions/{sid}", "DELETE, GET, HEAD, PUT"),
        ("GET", f"/v1/sessions/{sid}/lock", "DELETE, POST"),
        ("PUT", f"/v1/sessions/{sid}/touch", "POST"),
        ("GET", "/v1/gc", "POST"),
    ]
    for method, path, allow in cases:
        answer = httpx.request(method, service.url + path, timeout=10)
        assert answer.status_code == 405, (method, path)
        assert answer.headers["allow"] == allow
        assert answer.json()["error"] == "method_not_allowed"
    for path in (f"/v1/sessions/{sid}/other", "/v1/sessions/", "/v1/nothing"):
        answer = httpx.get(service.url + path, timeout=10)
        assert answer.status_code == 404 and answer.json()["error"] == "not_found", path
    answer = httpx.post(service.url + "/healthz", timeout=10)
    assert answer.status_code == 405 and answer.headers["allow"] == "GET"
