"""`--http-server uvicorn`: the service on stock uvicorn (the FastAPI app on uvicorn's
own protocol, no lean path), the way out when a uvicorn release breaks the lean
protocol (tests/service/test_uvicorn_coupling.py). The whole session cycle works the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from session_service.client import SessionClient
from session_service.errors import LockLost
from tests.support import ServiceProcess, session_id


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    base: Path = tmp_path_factory.mktemp("stock")
    process = ServiceProcess(
        db_url=f"sqlite:///{base / 'sessions.db'}",
        log_path=base / "service.log",
        env={"SESSION_SERVICE_HTTP_SERVER": "uvicorn"},
    ).start()
    yield process
    process.stop()


def test_sessions_on_stock_uvicorn(stock: ServiceProcess) -> None:
    sid = session_id()
    with SessionClient(stock.url, "secret") as client:
        held = client.lock(sid, wait_ms=1000, lease_ms=5000)
        assert held.new
        client.write(sid, b"on stock uvicorn", 600, lock=held.lock)
        with pytest.raises(LockLost):  # fenced: the write ended the lease
            client.write(sid, b"late", 600, lock=held.lock)
        record = client.read(sid)
        assert record is not None and record.data == b"on stock uvicorn"
        assert client.exists(sid)
        client.destroy(sid)
        assert client.read(sid) is None
    with httpx.Client(base_url=stock.url) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get(f"/v1/sessions/{sid}").status_code == 401
        metrics = http.get("/metrics").text
        assert 'route="/v1/sessions/{sid}/lock"' in metrics


def test_stock_uvicorn_is_what_answers(stock: ServiceProcess) -> None:
    """150 header fields: the lean protocol refuses them (431), stock uvicorn has no
    such limit, so the answer shows which one runs."""
    fields = {f"x-f{i}": "v" for i in range(150)}
    assert httpx.get(stock.url + "/healthz", headers=fields).status_code == 200
