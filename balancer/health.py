"""Active health checks, HAProxy style: ``fall`` failures take a backend out, ``rise`` successes
put it back (with slow start). A TCP connect check is used unless an HTTP path is configured,
in which case a 2xx or 3xx answer within the timeout counts as healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from balancer.config import Health
from balancer.pool import Backend, BackendPool

log = logging.getLogger("balancer")


async def check_once(backend: Backend, health: Health) -> str | None:
    """Run one check; return None when healthy, else a short reason."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(health.timeout):
            reader, writer = await asyncio.open_connection(backend.host, backend.port)
            if not health.path:
                return None
            host = backend.address.encode("ascii", "replace")
            writer.write(
                b"GET "
                + health.path.encode("ascii", "replace")
                + b" HTTP/1.1\r\nHost: "
                + host
                + b"\r\nUser-Agent: session-balancer-check\r\nConnection: close\r\n\r\n"
            )
            line = await reader.readline()
    except TimeoutError:
        return "check timed out"
    except OSError as exc:
        return f"check failed: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return "check got no HTTP status line"
    status = int(parts[1])
    if 200 <= status < 400:
        return None
    return f"check got HTTP {status}"


def apply_result(pool: BackendPool, backend: Backend, health: Health, failure: str | None) -> None:
    """Count one check result against rise/fall and change state when a threshold is met."""
    if failure is None:
        backend.check_failures = 0
        if not backend.up:
            backend.check_successes += 1
            if backend.check_successes >= health.rise:
                pool.mark_up(backend)
        return
    backend.check_successes = 0
    if backend.up:
        backend.check_failures += 1
        log.info(
            "backend %s: %s (%d/%d)", backend.label, failure, backend.check_failures, health.fall
        )
        if backend.check_failures >= health.fall:
            pool.mark_down(backend, failure)


async def run_checks(pool: BackendPool, health: Health) -> None:
    """Check every backend each ``interval`` seconds, concurrently, until cancelled."""
    while True:
        backends = list(pool.backends)
        results = await asyncio.gather(*(check_once(b, health) for b in backends))
        for backend, failure in zip(backends, results, strict=True):
            if not backend.removed:
                apply_result(pool, backend, health, failure)
        await asyncio.sleep(health.interval)
