"""State shared by every connection of one worker: settings, the backend pool, counters,
and a coarse clock that drives all timeouts.

Timeouts are deadlines checked by one periodic sweep instead of one timer per connection:
setting a deadline is then a float assignment on the hot path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from typing import Any, Protocol

from balancer.config import Settings
from balancer.pool import BackendPool

SWEEP_MAX = 0.25
INF = math.inf  # a deadline that never comes


class Swept(Protocol):
    """A connection whose deadlines the sweep checks."""

    def check_deadline(self, now: float) -> None: ...

    def drain(self) -> None: ...


class Frontend:
    """One worker's listener context."""

    def __init__(self, settings: Settings, pool: BackendPool) -> None:
        self.settings = settings
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()
        self.connections: set[Swept] = set()
        self.draining = False
        self.debug_header = b""
        self.log_requests = settings.debug  # -d: one log line per request
        if settings.debug_header:
            self.debug_header = settings.debug_header.encode("ascii") + b": "
        self.trusted_proxies = settings.trusted_proxies
        self.started = time.time()
        self.total_connections = 0
        self.rejected_connections = 0
        self.requests = 0
        self.bad_requests = 0
        self.no_backend = 0
        self.timeouts = 0
        t = settings.timeouts
        self.sweep_every = min(SWEEP_MAX, t.header / 4, t.idle / 4, t.server / 4)
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = self.loop.create_task(self._sweep())

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep(self) -> None:
        backend_idle = self.settings.timeouts.backend_idle
        while True:
            await asyncio.sleep(self.sweep_every)
            now = self.now = self.loop.time()
            for conn in list(self.connections):
                conn.check_deadline(now)
            for backend in self.pool.backends:
                for idle in backend.idle[:]:
                    if now - idle.idle_since > backend_idle:
                        idle.close()

    def is_trusted(self, peer: str) -> bool:
        """Whether a peer address is one of the trusted proxies (once per connection)."""
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted_proxies)

    def begin_drain(self) -> None:
        """Stop taking new requests: idle connections close now, busy ones after their reply."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    def snapshot(self) -> dict[str, Any]:
        """Counters for the stats page."""
        return {
            "mode": "tcp" if self.settings.tcp else "http",
            "started": self.started,
            "connections": len(self.connections),
            "total_connections": self.total_connections,
            "rejected_connections": self.rejected_connections,
            "requests": self.requests,
            "bad_requests": self.bad_requests,
            "no_backend": self.no_backend,
            "timeouts": self.timeouts,
            "draining": self.draining,
            "backends": self.pool.snapshot(),
        }
