"""The service on stock uvicorn (`--http-server uvicorn`): the FastAPI application
(with its metrics middleware) on uvicorn's own HTTP protocol, without the lean path
of http_protocol.py or the wire limits of http_guard.py.

A way to keep serving when the lean protocol cannot follow a uvicorn release
(tests/service/test_uvicorn_coupling.py fails), at the cost of speed, and of the limits
uvicorn does not have (docs/security.md).
"""

from __future__ import annotations

from starlette.types import ASGIApp

from session_service.api.app import create_app
from session_service.api.sessions import LeanPath
from session_service.settings import Settings


def app_from_environment() -> ASGIApp:
    """Factory for uvicorn workers: the FastAPI app behind create_app()'s LeanPath."""
    app = create_app(Settings())
    return app.fallback if isinstance(app, LeanPath) else app
