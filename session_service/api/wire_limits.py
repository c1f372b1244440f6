"""What one client may hold of a service process: the sizes and times its HTTP
protocol enforces (http_guard.py), and the process's open connections under the
`max_connections` cap.

The sizes are constants (what common servers allow), the times and the cap come from
the settings of the service behind the ASGI app, looked up once per process.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, Protocol

from session_service.api.sessions import LeanPath
from session_service.settings import Settings

log = logging.getLogger(__name__)

#: the most a request's head (request line and headers) may take: 64 KiB, more than
#: any client of this service sends (nginx allows 32 KiB by default, Node.js 16 KiB)
MAX_HEAD_BYTES = 64 * 1024
#: the most header fields a request head may have, and trailer fields after a chunked
#: body (Apache's LimitRequestFields and HAProxy's tune.http.maxhdr are about 100)
MAX_HEADER_FIELDS = 100
#: file descriptors kept beside the connections: database pool, listening socket, logs
SPARE_FILES = 64


class Connection(Protocol):
    """What the cap needs of a connection."""

    transport: asyncio.Transport

    def is_idle(self) -> bool: ...


class WireLimits:
    """The connection limits of one process, and its open connections."""

    def __init__(self, settings: Settings) -> None:
        self.read_seconds = settings.request_read_timeout
        self.first_byte_seconds = min(settings.first_byte_timeout, self.read_seconds)
        self.max_connections = _fit_open_files(settings.max_connections)
        #: every open connection, oldest first
        self.open: dict[Connection, None] = {}

    def admit(self, connection: Connection) -> bool:
        """Count a new connection in. At the cap, close the oldest idle connection (kept
        alive between requests, or no byte sent yet), as nginx reuses idle connections
        when it has no free one; when none is idle, False: the new one is refused."""
        if len(self.open) >= self.max_connections:
            for other in self.open:
                if other.is_idle():
                    log.info("closed an idle connection for a new one (max_connections)")
                    del self.open[other]
                    other.transport.close()
                    break
            else:
                return False
        self.open[connection] = None
        return True


def _fit_open_files(wanted: int) -> int:
    """`wanted` connections, if the process may open that many files and SPARE_FILES
    more: the soft limit is raised up to the hard one if need be, else fewer, with a
    warning (rather than accept() failing for everyone once the files run out)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
        if soft < need:
            fitted = max(1, soft - SPARE_FILES)
            log.warning("max_connections lowered to %d: the open files limit is %d", fitted, soft)
            return fitted
    return wanted


_limits: dict[int, WireLimits] = {}


def wire_limits(app: Any) -> WireLimits:
    """The limits of the service behind `app` (a LeanPath, or middleware around one,
    e.g. uvicorn's trace logging), made once per process; else the settings' defaults."""
    limits = _limits.get(id(app))
    if limits is None:
        found, settings = app, None
        for _ in range(5):
            if isinstance(found, LeanPath):
                settings = found.endpoints.settings
                break
            found = getattr(found, "app", None)
        limits = _limits[id(app)] = WireLimits(settings or Settings())
    return limits
