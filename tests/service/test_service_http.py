"""The HTTP API through a real uvicorn process, on SQLite and MariaDB."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import msgpack
import pytest

from session_service.client import SessionClient, Unauthorized
from session_service.errors import LockLost, LockTimeout, VersionConflict
from tests.support import ServiceProcess, session_id

TOKEN = {"Authorization": "Bearer secret"}
OTHER = {"Authorization": "Bearer othersecret"}
MP = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One real service process per backend for this module (starting one takes a second)."""
    base = tmp_path_factory.mktemp("svc")
    if request.param == "sqlite":
        url = f"sqlite:///{base / 'sessions.db'}"
    else:
        url = request.getfixturevalue("mariadb_url")
    process = ServiceProcess(
        db_url=url,
        tokens="default:secret,other:othersecret,default+admin:adminsecret",
        extra_args=["--max-data-bytes", "4096"],
        log_path=base / "service.log",
    ).start()
    yield process
    process.stop()


@pytest.fixture
def http(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=10) as client:
        yield client


@pytest.fixture
def client(service: ServiceProcess) -> Iterator[SessionClient]:
    with SessionClient(service.url, "secret") as c:
        yield c


def _error(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("application/msgpack"):
        body = msgpack.unpackb(response.content)
    else:
        body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    return str(body["error"])


def test_auth_missing_wrong_and_other_tenant(http: httpx.Client) -> None:
    sid = session_id()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = http.get(f"/v1/sessions/{sid}", headers=headers)
        assert response.status_code == 401 and _error(response) == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    body = {"data": base64.b64encode(b"mine").decode(), "ttl": 100}
    assert http.put(f"/v1/sessions/{sid}", json=body, headers=TOKEN).status_code == 200
    assert http.get(f"/v1/sessions/{sid}", headers=OTHER).status_code == 404
    assert http.head(f"/v1/sessions/{sid}", headers=OTHER).status_code == 404
    assert http.head(f"/v1/sessions/{sid}", headers=TOKEN).status_code == 200
    assert http.get(f"/v1/sessions/{sid}", headers=TOKEN).json()["data"] == "bWluZQ=="


def test_client_raises_unauthorized(service: ServiceProcess) -> None:
    with SessionClient(service.url, "wrong") as bad, pytest.raises(Unauthorized):
        bad.read(session_id())


@pytest.mark.parametrize(
    "sid", ["short", "a" * 21, "a" * 257, "abc%2Fdefghijklmnopqrstuvwxyz", "a.b" * 10, "%00" * 10]
)
def test_bad_session_ids_are_400(http: httpx.Client, sid: str) -> None:
    response = http.get(f"/v1/sessions/{sid}", headers=TOKEN)
    assert response.status_code in (400, 404), response.text
    if response.status_code == 400:
        assert _error(response) == "invalid_session_id"
    assert sid not in response.text or len(sid) < 22


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/json", b'{"data":', 400, "malformed_body"),
        ("application/json", b"[1,2]", 400, "malformed_body"),
        ("application/msgpack", b"\xc1\xc1\xc1", 400, "malformed_body"),
        ("application/json", b'{"data":"!!notbase64","ttl":10}', 422, "invalid_request"),
        ("application/json", b'{"data":"eA==","ttl":"10"}', 422, "invalid_request"),
        ("application/json", b'{"data":"eA==","ttl":0}', 422, "invalid_request"),
        ("application/json", b'{"data":"eA==","ttl":true}', 422, "invalid_request"),
        ("application/json", b'{"data":"eA==","ttl":10,"if_version":-1}', 422, "invalid_request"),
        ("application/json", b'{"data":"eA==","ttl":10,"lock":"xyz"}', 422, "invalid_request"),
        ("application/json", b'{"data":"eA==","ttl":10,"lock":5}', 422, "invalid_request"),
        ("application/json", b'{"ttl":10}', 422, "invalid_request"),
        ("application/json", b'{"data":12,"ttl":10}', 422, "invalid_request"),
        ("text/plain", b"hello", 415, "unsupported_media_type"),
        ("", b"hello", 415, "unsupported_media_type"),
    ],
)
def test_bad_write_bodies_are_clear_4xx_and_change_nothing(
    http: httpx.Client, content_type: str, body: bytes, status: int, code: str
) -> None:
    sid = session_id()
    good = {"data": base64.b64encode(b"intact").decode(), "ttl": 100}
    assert http.put(f"/v1/sessions/{sid}", json=good, headers=TOKEN).status_code == 200
    headers = {**TOKEN, "Content-Type": content_type} if content_type else TOKEN
    response = http.put(f"/v1/sessions/{sid}", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert _error(response) == code
    after = http.get(f"/v1/sessions/{sid}", headers=TOKEN).json()
    assert (after["data"], after["version"]) == (good["data"], 1)


def test_too_large_is_413_and_session_intact(client: SessionClient, http: httpx.Client) -> None:
    sid = session_id()
    client.write(sid, b"small", 100)
    held = client.lock(sid)
    response = http.put(
        f"/v1/sessions/{sid}",
        content=msgpack.packb({"data": b"x" * 4097, "ttl": 100, "lock": held.lock}),
        headers={**TOKEN, **MP},
    )
    assert response.status_code == 413
    assert msgpack.unpackb(response.content)["error"] == "too_large"
    huge = http.put(
        f"/v1/sessions/{sid}",
        content=b"{" + b" " * 200_000 + b"}",
        headers={**TOKEN, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    record = client.read(sid)
    assert record is not None and record.data == b"small"
    assert client.write(sid, b"y" * 4096, 100, lock=held.lock).version == 2


def test_bad_query_parameters_are_422(http: httpx.Client) -> None:
    sid = session_id()
    for query in ("wait_ms=abc", "wait_ms=-1", "lease_ms=5", "wait_ms=99999999", "lease_ms=1e3"):
        response = http.post(f"/v1/sessions/{sid}/lock?{query}", headers=TOKEN)
        assert response.status_code == 422, (query, response.text)
        assert _error(response) == "invalid_request"
    response = http.delete(f"/v1/sessions/{sid}/lock", headers=TOKEN)
    assert response.status_code == 422


def test_lock_timeout_is_423_with_retry_after(http: httpx.Client, client: SessionClient) -> None:
    sid = session_id()
    client.lock(sid, lease_ms=30_000)
    response = http.post(f"/v1/sessions/{sid}/lock?wait_ms=50", headers=TOKEN)
    assert response.status_code == 423 and _error(response) == "lock_timeout"
    assert int(response.headers["retry-after"]) >= 1
    with pytest.raises(LockTimeout):
        client.lock(sid, wait_ms=0)


def test_lost_lock_is_409_and_stale_version_412(client: SessionClient) -> None:
    sid = session_id()
    stale = client.lock(sid, lease_ms=200)
    time.sleep(0.3)
    fresh = client.lock(sid, wait_ms=0)
    with pytest.raises(LockLost):
        client.write(sid, b"stale", 100, lock=stale.lock)
    assert client.write(sid, b"fresh", 100, lock=fresh.lock).version == 1
    with pytest.raises(VersionConflict):
        client.write(sid, b"cas", 100, if_version=5)
    assert client.write(sid, b"cas", 100, if_version=1).version == 2
    record = client.read(sid)
    assert record is not None and record.data == b"cas"


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_binary_data_round_trips_in_both_formats(http: httpx.Client, fmt: str) -> None:
    sid = session_id()
    payload = bytes(range(256)) * 8
    if fmt == "msgpack":
        body = msgpack.packb({"data": payload, "ttl": 100})
        assert (
            http.put(f"/v1/sessions/{sid}", content=body, headers={**TOKEN, **MP}).status_code
            == 200
        )
        got = msgpack.unpackb(http.get(f"/v1/sessions/{sid}", headers={**TOKEN, **MP}).content)
        assert got["data"] == payload
    else:
        body_json = {"data": base64.b64encode(payload).decode(), "ttl": 100}
        assert http.put(f"/v1/sessions/{sid}", json=body_json, headers=TOKEN).status_code == 200
        got = http.get(f"/v1/sessions/{sid}", headers=TOKEN).json()
        assert base64.b64decode(got["data"]) == payload


def test_full_php_style_cycle(client: SessionClient) -> None:
    sid = session_id()
    first = client.lock(sid, wait_ms=1000, lease_ms=5000)
    assert first.new and first.version == 0 and first.data == b""
    assert client.exists(sid)
    client.write(sid, b"count|i:1;", 1440, lock=first.lock)
    second = client.lock(sid)
    assert second.data == b"count|i:1;" and not second.new
    client.touch(sid, 1440, lock=second.lock)  # lazy_write: unchanged data
    third = client.lock(sid, wait_ms=0)
    client.release(sid, third.lock or "")
    with pytest.raises(LockLost):
        client.release(sid, third.lock or "")
    client.destroy(sid)
    assert client.read(sid) is None and not client.exists(sid)


def test_expiry_and_gc(client: SessionClient, http: httpx.Client, service: ServiceProcess) -> None:
    sid = session_id()
    client.write(sid, b"short-lived", 1)
    assert client.read(sid) is not None
    time.sleep(2.1)
    assert client.read(sid) is None, "expired reads as absent before gc"
    assert http.head(f"/v1/sessions/{sid}", headers=TOKEN).status_code == 404
    with SessionClient(service.url, "adminsecret") as admin:
        assert admin.gc() >= 1
    assert http.post("/v1/gc").status_code == 401


def test_operations_endpoints(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    http.get(f"/v1/sessions/{session_id()}", headers=TOKEN)
    metrics = http.get("/metrics").text
    for name in (
        "session_http_requests_total",
        "session_http_request_seconds_bucket",
        "session_lock_wait_seconds",
        "session_db_errors_total",
        "session_gc_deleted_total",
    ):
        assert name in metrics
    assert 'route="/v1/sessions/{sid}"' in metrics
    spec = http.get("/openapi.json").json()
    assert "/v1/sessions/{sid}/lock" in spec["paths"]


def test_unknown_route_and_method_are_clear(http: httpx.Client) -> None:
    response = http.get("/v2/nothing", headers=TOKEN)
    assert response.status_code == 404 and _error(response) == "not_found"
    response = http.patch(f"/v1/sessions/{session_id()}", headers=TOKEN)
    assert response.status_code == 405


def test_service_refuses_to_start_without_tokens(tmp_path: object) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "session_service", "serve", "--db", "sqlite:///:memory:"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "no tokens configured" in result.stderr and "Traceback" not in result.stderr
