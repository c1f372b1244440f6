"""Compare-and-set writes and the lease, through a real service (issue 13.4), on SQLite
and on MariaDB (where the service runs the store in the event loop)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msgpack
import pytest

from session_service.client import SessionClient
from session_service.errors import SessionLocked
from tests.support import ServiceProcess, session_id

MP = {
    "Authorization": "Bearer secret",
    "Content-Type": "application/msgpack",
    "Accept": "application/msgpack",
}


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def http(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    base = tmp_path_factory.mktemp("cas")
    if request.param == "sqlite":
        url = f"sqlite:///{base / 'sessions.db'}"
    else:
        url = request.getfixturevalue("mariadb_url")
    process = ServiceProcess(db_url=url, log_path=base / "service.log").start()
    try:
        with httpx.Client(base_url=process.url, timeout=30) as client:
            yield client
    finally:
        process.stop()


def _put(http: httpx.Client, sid: str, data: bytes, **fields: object) -> httpx.Response:
    body = msgpack.packb({"data": data, "ttl": 600, **fields})
    return http.put(f"/v1/sessions/{sid}", content=body, headers=MP)


def _body(response: httpx.Response) -> dict[str, object]:
    found: dict[str, object] = msgpack.unpackb(response.content)
    return found


def _lock(http: httpx.Client, sid: str) -> str:
    response = http.post(f"/v1/sessions/{sid}/lock?wait_ms=0&lease_ms=60000", headers=MP)
    assert response.status_code == 200, response.content
    return str(_body(response)["lock"])


def _data(http: httpx.Client, sid: str) -> tuple[object, object]:
    body = _body(http.get(f"/v1/sessions/{sid}", headers=MP))
    return body["data"], body["version"]


def test_compare_and_set_under_another_holders_lease_is_423_and_nothing_is_lost(
    http: httpx.Client,
) -> None:
    sid = session_id()
    assert _put(http, sid, b"v1").status_code == 200
    lock = _lock(http, sid)
    refused = _put(http, sid, b"cas", if_version=1)
    assert refused.status_code == 423, refused.content
    assert _body(refused)["error"] == "locked"
    assert int(refused.headers["retry-after"]) >= 1
    assert _put(http, sid, b"holder", lock=lock).status_code == 200
    assert _data(http, sid) == (b"holder", 2)
    assert _put(http, sid, b"cas", if_version=2).status_code == 200
    assert _data(http, sid) == (b"cas", 3)


def test_lock_with_a_wrong_if_version_is_412_and_keeps_the_lock(http: httpx.Client) -> None:
    sid = session_id()
    assert _put(http, sid, b"v1").status_code == 200
    lock = _lock(http, sid)
    wrong = _put(http, sid, b"wrong", lock=lock, if_version=5)
    assert wrong.status_code == 412 and _body(wrong)["error"] == "version_mismatch"
    assert _data(http, sid) == (b"v1", 1)
    right = _put(http, sid, b"v2", lock=lock, if_version=1)
    assert right.status_code == 200 and _body(right)["version"] == 2
    stale = _put(http, sid, b"v3", lock=lock, if_version=2)
    assert stale.status_code == 409 and _body(stale)["error"] == "lock_lost"
    assert _data(http, sid) == (b"v2", 2)


def test_the_python_client_raises_session_locked_for_a_compare_and_set_under_a_lease(
    http: httpx.Client,
) -> None:
    """The client tells the two 423s apart: `locked` (a CAS write under another holder's
    lease) is SessionLocked, a LockTimeout with the service's Retry-After."""
    sid = session_id()
    assert _put(http, sid, b"v1").status_code == 200
    lock = _lock(http, sid)
    with SessionClient(str(http.base_url), "secret") as client:
        with pytest.raises(SessionLocked) as raised:
            client.write(sid, b"cas", 600, if_version=1)
        assert raised.value.retry_after_ms >= 1000
        client.release(sid, lock)
        assert client.write(sid, b"cas", 600, if_version=1).version == 2
