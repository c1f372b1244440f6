"""Backends, their state (up/down, slow start) and the round-robin choice between them.

Selection is nginx's smooth weighted round robin: with equal weights it is a strict
rotation, so one keep-alive client sending 3n requests to 3 backends sees each n times.
Slow start scales a returning backend's weight from 10 % to 100 % over ``slowstart``
seconds so that it is eased in, not flooded.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from balancer.config import BackendSpec

log = logging.getLogger("balancer")

# Upper bounds (seconds) of the latency histogram, shared by JSON stats and /metrics.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Closable(Protocol):
    """What the pool needs from an idle backend connection."""

    def close(self) -> None: ...


class Backend:
    """One backend: its spec, health state, counters and idle keep-alive connections."""

    __slots__ = (
        "active",
        "address",
        "check_failures",
        "check_successes",
        "current",
        "errors",
        "failures",
        "host",
        "idle",
        "label",
        "label_bytes",
        "latency_buckets",
        "latency_count",
        "latency_sum",
        "port",
        "removed",
        "requests",
        "responses",
        "retries",
        "spec",
        "up",
        "up_since",
        "weight",
    )

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.host = spec.host
        self.port = spec.port
        self.address = spec.address
        self.label = spec.label
        self.label_bytes = spec.label.encode()
        self.weight = spec.weight
        self.up = True
        self.up_since = 0.0  # 0 means "up from the start": no slow start
        self.removed = False
        self.current = 0.0
        self.idle: list[Any] = []
        self.check_successes = 0
        self.check_failures = 0
        self.active = 0
        self.requests = 0
        self.responses = [0] * 6  # index: status // 100
        self.errors = 0
        self.failures = 0
        self.retries = 0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def record_latency(self, seconds: float) -> None:
        """Count time to first response byte in the histogram."""
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def record_status(self, status: int) -> None:
        self.responses[status // 100 if 100 <= status < 600 else 5] += 1

    def take_idle(self) -> Any | None:
        """Pop the most recently used idle connection (warmest, least likely closed)."""
        idle = self.idle
        return idle.pop() if idle else None

    def close_idle(self) -> None:
        for conn in self.idle[:]:
            conn.close()
        self.idle.clear()

    def snapshot(self, slowstart: float, now: float) -> dict[str, Any]:
        """A JSON-ready view for the stats page."""
        return {
            "name": self.label,
            "address": self.address,
            "state": "UP" if self.up else "DOWN",
            "weight": self.weight,
            "effective_weight": round(self.effective_weight(slowstart, now), 3),
            "active": self.active,
            "idle": len(self.idle),
            "requests": self.requests,
            "responses": {f"{i}xx": self.responses[i] for i in range(1, 6)},
            "errors": self.errors,
            "failures": self.failures,
            "retries": self.retries,
            "latency": {
                "buckets": list(LATENCY_BUCKETS),
                "counts": list(self.latency_buckets),
                "sum": self.latency_sum,
                "count": self.latency_count,
            },
        }

    def effective_weight(self, slowstart: float, now: float) -> float:
        if not self.up:
            return 0.0
        if self.up_since and slowstart > 0:
            ramp = (now - self.up_since) / slowstart
            if ramp < 1.0:
                return self.weight * max(0.1, ramp)
            self.up_since = 0.0
        return float(self.weight)


class BackendPool:
    """The rotation: chooses the next backend and tracks up/down transitions."""

    def __init__(self, specs: Iterable[BackendSpec], slowstart: float, offset: int = 0) -> None:
        self.slowstart = slowstart
        self.backends: list[Backend] = [Backend(spec) for spec in specs]
        # Workers start at different points of the rotation so that their first
        # requests do not all land on the first backend.
        for backend in self.backends[: offset % max(1, len(self.backends))]:
            backend.current = -1e-9

    def choose(self, exclude: tuple[Backend, ...] = ()) -> Backend | None:
        """Smooth weighted round robin over backends that are up and not excluded."""
        best: Backend | None = None
        total = 0.0
        now = 0.0
        for backend in self.backends:
            if not backend.up or backend in exclude or backend.weight == 0:
                continue
            if backend.up_since:
                now = now or time.monotonic()
                weight = backend.effective_weight(self.slowstart, now)
            else:
                weight = backend.weight
            backend.current += weight
            total += weight
            if best is None or backend.current > best.current:
                best = backend
        if best is not None:
            best.current -= total
        return best

    def mark_down(self, backend: Backend, reason: str) -> None:
        """Take a backend out of the rotation; health checks bring it back."""
        backend.check_successes = 0
        if backend.up:
            backend.up = False
            self._restart_rotation()
            backend.close_idle()
            log.warning("backend %s is DOWN: %s", backend.label, reason)

    def mark_up(self, backend: Backend) -> None:
        """Put a backend back, starting its slow start ramp."""
        backend.check_failures = 0
        if not backend.up:
            backend.up = True
            self._restart_rotation()
            backend.up_since = time.monotonic() if self.slowstart > 0 else 0.0
            log.warning("backend %s is UP", backend.label)

    def _restart_rotation(self) -> None:
        """After a change, start a clean cycle so that the rotation is exact again."""
        for backend in self.backends:
            backend.current = 0.0

    def replace_specs(self, specs: Iterable[BackendSpec]) -> None:
        """SIGHUP: keep state of backends that stay, add new ones, retire removed ones.

        Retired backends keep serving the requests already sent to them; only their
        idle connections are closed.
        """
        old = {(b.host, b.port): b for b in self.backends}
        new: list[Backend] = []
        for spec in specs:
            backend = old.pop((spec.host, spec.port), None)
            if backend is None:
                backend = Backend(spec)
            else:
                backend.spec, backend.weight, backend.label = spec, spec.weight, spec.label
                backend.label_bytes = spec.label.encode()
            backend.current = 0.0
            new.append(backend)
        for backend in old.values():
            backend.removed = True
            backend.close_idle()
        self.backends = new
        log.warning("backends reloaded: %s", ", ".join(b.label for b in new) or "none")

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [b.snapshot(self.slowstart, now) for b in self.backends]
