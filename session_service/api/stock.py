"""The service on stock uvicorn (`--http-server uvicorn`): the service's ASGI app
(LeanPath, which answers the /v1 endpoints of contract.py through plain ASGI, in front
of the FastAPI app) on uvicorn's own HTTP protocol, without the lean protocol of
http_protocol.py (DirectCycle) or the wire limits of http_guard.py.

A way to keep serving when the lean protocol cannot follow a uvicorn release
(tests/service/test_uvicorn_coupling.py fails), at the cost of speed, and of the limits
uvicorn does not have (docs/security.md).
"""

from __future__ import annotations

from starlette.types import ASGIApp

from session_service.api.app import create_app
from session_service.settings import Settings


def app_from_environment() -> ASGIApp:
    """Factory for uvicorn workers: create_app()'s ASGI app as it is (the /v1 endpoints
    are defined only there, no longer as FastAPI routes)."""
    return create_app(Settings())
