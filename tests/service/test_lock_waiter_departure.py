"""A lock waiter whose client goes away is not given the lease (issue 13 item 3).

Over real HTTP: a holder has the lock, a waiter asks for it with a long wait and
closes its socket, the holder releases, and a third client must get the lock now,
not a 423 for the whole lease of a client that has gone. Both ways a lock request
can be served: the service's own protocol (DirectCycle, the lean path) and stock
uvicorn running the same app (`--http-server uvicorn`: the ASGI path).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import ServiceProcess, session_id, wait_until

TOKEN = {"Authorization": "Bearer secret"}
LEASE_MS = 60_000  # the departed waiter's lease, if it got one, would outlast every wait here


@pytest.fixture(
    scope="module", params=["lean-sqlite", "lean-mariadb", "asgi-sqlite"], name="service"
)
def _service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    path, backend = request.param.split("-")
    base = tmp_path_factory.mktemp("departure")
    url = (
        f"sqlite:///{base / 'sessions.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("mariadb_url")
    )
    extra = [] if path == "lean" else ["--http-server", "uvicorn"]  # stock uvicorn: ASGI
    process = ServiceProcess(db_url=url, extra_args=extra, log_path=base / "service.log").start()
    yield process
    process.stop()


def lock(
    service: ServiceProcess, sid: str, wait_ms: int, lease_ms: int = LEASE_MS
) -> httpx.Response:
    return httpx.post(
        f"{service.url}/v1/sessions/{sid}/lock",
        params={"wait_ms": wait_ms, "lease_ms": lease_ms},
        headers=TOKEN,
        timeout=30,
    )


def start_waiter(service: ServiceProcess, sid: str) -> socket.socket:
    """A lock request that will wait up to a minute, on a raw socket the test can close."""
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.sendall(
        f"POST /v1/sessions/{sid}/lock?wait_ms=60000&lease_ms={LEASE_MS} HTTP/1.1\r\n"
        "Host: test\r\nAuthorization: Bearer secret\r\nContent-Length: 0\r\n\r\n".encode()
    )
    # Give the service time to start waiting (the outcome must be the same either way).
    time.sleep(0.5)
    return sock


def departed_waiters(service: ServiceProcess) -> float:
    """How many lock requests the service counted as 499 (client gone while waiting)."""
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    found = re.search(
        r'session_http_requests_total\{method="POST",route="/v1/sessions/\{sid\}/lock",'
        r'status="499"\} ([0-9.e+]+)',
        text,
    )
    return float(found.group(1)) if found else 0.0


def test_a_departed_waiter_gets_no_lease_when_the_holder_releases_at_once(
    service: ServiceProcess,
) -> None:
    sid = session_id()
    holder = lock(service, sid, wait_ms=0)
    assert holder.status_code == 200, holder.text
    waiter = start_waiter(service, sid)
    waiter.close()
    released = httpx.delete(
        f"{service.url}/v1/sessions/{sid}/lock",
        params={"lock": holder.json()["lock"]},
        headers=TOKEN,
        timeout=10,
    )
    assert released.status_code == 204
    # A lease taken for the departed waiter would hold for a minute: 423 after 10 s.
    third = lock(service, sid, wait_ms=10_000)
    assert third.status_code == 200, f"{third.status_code} {third.text}"


def test_a_departed_waiter_is_dropped_while_the_holder_still_holds(
    service: ServiceProcess,
) -> None:
    sid = session_id()
    before = departed_waiters(service)
    holder = lock(service, sid, wait_ms=0)
    assert holder.status_code == 200, holder.text
    waiter = start_waiter(service, sid)
    waiter.close()
    assert wait_until(lambda: departed_waiters(service) > before, 15), (
        "the service never noticed that the waiter went away"
    )
    released = httpx.delete(
        f"{service.url}/v1/sessions/{sid}/lock",
        params={"lock": holder.json()["lock"]},
        headers=TOKEN,
        timeout=10,
    )
    assert released.status_code == 204
    third = lock(service, sid, wait_ms=0)  # nobody waits, nobody holds: at once
    assert third.status_code == 200, f"{third.status_code} {third.text}"


def test_a_waiter_that_stays_still_gets_the_lock(service: ServiceProcess) -> None:
    """The watch must not drop a waiter whose client is still there."""
    sid = session_id()
    holder = lock(service, sid, wait_ms=0)
    assert holder.status_code == 200
    waiter = start_waiter(service, sid)
    try:
        httpx.delete(
            f"{service.url}/v1/sessions/{sid}/lock",
            params={"lock": holder.json()["lock"]},
            headers=TOKEN,
            timeout=10,
        )
        waiter.settimeout(20)
        answer = waiter.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    finally:
        waiter.close()
