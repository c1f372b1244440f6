"""Many clients, one session, two service processes on one MariaDB: no lost update."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from session_service.client import SessionClient
from session_service.errors import LockLost
from tests.support import ServiceProcess, session_id


def test_fifty_concurrent_cycles_over_two_services_end_exact(
    mariadb_url: str, service_factory: Callable[..., ServiceProcess]
) -> None:
    services = [service_factory(mariadb_url), service_factory(mariadb_url)]
    sid = session_id()
    start = threading.Barrier(50)
    failures: list[BaseException] = []

    def cycle(index: int) -> None:
        with SessionClient(services[index % 2].url, "secret", timeout=60) as client:
            start.wait()
            try:
                record = client.lock(sid, wait_ms=60_000, lease_ms=30_000)
                count = int(record.data or b"0")
                client.write(sid, str(count + 1).encode(), 600, lock=record.lock)
            except BaseException as error:  # collected and reported below
                failures.append(error)

    threads = [threading.Thread(target=cycle, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:3]
    with SessionClient(services[0].url, "secret") as client:
        record = client.read(sid)
    assert record is not None
    assert record.data == b"50", "every increment landed exactly once"
    assert record.version == 50


def test_expired_lease_lets_the_next_holder_in_and_refuses_the_stale_write(
    mariadb_url: str, service_factory: Callable[..., ServiceProcess]
) -> None:
    one, two = service_factory(mariadb_url), service_factory(mariadb_url)
    sid = session_id()
    with SessionClient(one.url, "secret") as a, SessionClient(two.url, "secret") as b:
        a.write(sid, b"0", 600)
        stale = a.lock(sid, lease_ms=300)
        fresh = b.lock(sid, wait_ms=10_000, lease_ms=30_000)  # waits for the lease to end
        # granted no earlier than the stale lease's end (both stamped by the same host's
        # clock; not measured here, where a slow machine would shorten the apparent wait)
        assert stale.lease_expires_at_ms is not None and fresh.lease_expires_at_ms is not None
        assert fresh.lease_expires_at_ms - 30_000 >= stale.lease_expires_at_ms
        b.write(sid, b"from-b", 600, lock=fresh.lock)
        with pytest.raises(LockLost):
            a.write(sid, b"from-stale-a", 600, lock=stale.lock)
        record = a.read(sid)
        assert record is not None and record.data == b"from-b"
