"""A database restart under a running service: not ready while down, then back by itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from session_service.client import SessionClient
from session_service.errors import StoreUnavailable
from tests.mariadb_instance import MariaDBInstance
from tests.support import ServiceProcess, session_id, wait_until


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[MariaDBInstance]:
    instance = MariaDBInstance(tmp_path / "mariadb").install().start()
    with instance.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE sessions")
    yield instance
    instance.destroy()


def test_mariadb_restart_loses_no_committed_write(
    private_mariadb: MariaDBInstance, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = service_factory(
        private_mariadb.url("sessions"), extra_args=["--db-retry-seconds", "1"]
    )
    committed: dict[str, bytes] = {}
    with SessionClient(service.url, "secret", timeout=15) as client:
        for i in range(20):
            sid = session_id()
            record = client.lock(sid)
            client.write(sid, f"value-{i}".encode(), 600, lock=record.lock)
            committed[sid] = f"value-{i}".encode()

        private_mariadb.stop()
        ready = httpx.get(service.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        with pytest.raises(StoreUnavailable):
            client.read(next(iter(committed)))
        assert httpx.get(service.url + "/healthz").status_code == 200, "the process stays up"

        private_mariadb.start()
        assert wait_until(
            lambda: httpx.get(service.url + "/readyz", timeout=10).status_code == 200, 30
        ), "the service recovers by itself"
        for sid, value in committed.items():
            stored = client.read(sid)
            assert stored is not None and stored.data == value
        sid = session_id()
        record = client.lock(sid)
        assert client.write(sid, b"after restart", 600, lock=record.lock).version == 1
