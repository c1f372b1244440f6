"""Several processes on one database: uvicorn workers, and services sharing one SQLite file."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from session_service.client import SessionClient
from session_service.schema import migrate
from session_service.settings import Settings
from session_service.store import SessionStore
from tests.support import ServiceProcess, session_id


def test_metrics_add_up_over_uvicorn_workers(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 's.db'}", extra_args=["--workers", "2"])
    with httpx.Client(base_url=service.url) as http:
        for _ in range(12):  # new connections, so both workers answer some
            assert httpx.get(service.url + "/healthz").status_code == 200
        text = http.get("/metrics").text
    line = next(
        x for x in text.splitlines()
        if x.startswith("session_http_requests_total") and 'route="/healthz"' in x
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) == 12.0


def test_two_services_on_one_sqlite_file_lose_no_update(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    """WAL mode and the busy timeout make the embedded default safe for several processes."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    services = [service_factory(url), service_factory(url)]
    sid = session_id()
    failures: list[BaseException] = []

    def cycles(index: int) -> None:
        with SessionClient(services[index % 2].url, "secret", timeout=60) as client:
            try:
                for _ in range(5):
                    record = client.lock(sid, wait_ms=60_000)
                    count = int(record.data or b"0")
                    client.write(sid, str(count + 1).encode(), 600, lock=record.lock)
            except BaseException as error:  # reported below
                failures.append(error)

    threads = [threading.Thread(target=cycles, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:3]
    with SessionClient(services[1].url, "secret") as client:
        record = client.read(sid)
    assert record is not None and record.data == b"30"


def test_only_one_instance_holds_the_gc_lease(tmp_path: Path) -> None:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'lease.db'}")
    first, second = SessionStore(settings), SessionStore(settings)
    migrate(first.engine)
    try:
        assert first.acquire_lease("gc", "instance-a", 60_000)
        assert not second.acquire_lease("gc", "instance-b", 60_000)
        assert first.acquire_lease("gc", "instance-a", 60_000), "the holder renews"
    finally:
        first.close()
        second.close()
