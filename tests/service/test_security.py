"""TLS, token rotation under load, and no raw session id in any service log line."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from session_service.client import SessionClient, Unauthorized
from tests.support import ServiceProcess, session_id


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made at test time."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_with_a_verified_certificate(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    cert, key = make_certificate(tmp_path)
    service = service_factory(
        f"sqlite:///{tmp_path / 's.db'}",
        tls=True,
        extra_args=["--tls-certfile", str(cert), "--tls-keyfile", str(key)],
    )
    sid = session_id()
    with SessionClient(service.url, "secret", verify=str(cert)) as client:
        client.write(sid, b"over tls", 60)
        record = client.read(sid)
        assert record is not None and record.data == b"over tls"
    with SessionClient(service.url, "secret") as unverified, pytest.raises(httpx.ConnectError):
        unverified.read(sid)  # a certificate no CA of the system vouches for is refused
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{service.port}/healthz", timeout=5)  # no plain HTTP


def test_tls_options_must_come_together(tmp_path: Path) -> None:
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "session_service", "serve", "--tokens", "x",
         "--tls-certfile", str(tmp_path / "missing.pem")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "go together" in result.stderr


def test_token_rotated_under_load_with_no_failed_request(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("app:old-secret\n")
    service = service_factory(
        f"sqlite:///{tmp_path / 's.db'}", extra_args=["--tokens-file", str(tokens)]
    )
    current = ["old-secret"]
    failures: list[BaseException] = []
    written: dict[str, bytes] = {}
    stop = threading.Event()

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            sid = f"{worker:02d}rotation{n:020d}"
            n += 1
            try:
                with SessionClient(service.url, current[0]) as client:
                    record = client.lock(sid)
                    client.write(sid, sid.encode(), 600, lock=record.lock)
                written[sid] = sid.encode()
            except BaseException as error:  # reported below
                failures.append(error)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    tokens.write_text("app:old-secret\napp:new-secret\n")  # 1. add the new secret
    time.sleep(2.0)  # the service notices within a second
    current[0] = "new-secret"  # 2. clients move to it
    time.sleep(1.0)
    tokens.write_text("app:new-secret\n")  # 3. retire the old one
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(30)

    assert not failures, failures[:3]
    assert len(written) > 10
    with SessionClient(service.url, "new-secret") as client:
        for sid, value in list(written.items())[:20]:
            record = client.read(sid)
            assert record is not None and record.data == value, "same namespace, same sessions"
    with SessionClient(service.url, "old-secret") as client, pytest.raises(Unauthorized):
        client.read(session_id())


def test_no_raw_session_id_in_service_logs(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = service_factory(
        f"sqlite:///{tmp_path / 's.db'}",
        tokens="default+admin:secret",  # admin: it runs gc too
        extra_args=["--log-level", "debug", "--max-data-bytes", "100"],
    )
    used = [session_id() for _ in range(6)]
    with SessionClient(service.url, "secret") as client:
        first = client.lock(used[0])
        client.write(used[0], b"x", 60, lock=first.lock)
        held = client.lock(used[1], lease_ms=60_000)
        for call in (
            lambda: client.lock(used[1], wait_ms=10),  # 423
            lambda: client.write(used[2], b"y" * 101, 60),  # 413
            lambda: client.write(used[3], b"z", 60, lock="0" * 32),  # 409
            lambda: client.write(used[4], b"z", 60, if_version=7),  # 412
            lambda: client.touch(used[5], 60),  # 404
        ):
            with pytest.raises(Exception):  # noqa: B017 - each is a different error
                call()
        client.release(used[1], held.lock or "")
        client.destroy(used[0])
        client.gc()
    httpx.get(f"{service.url}/v1/sessions/{used[0]}")  # 401, with the id in the path
    service.stop()
    log = (tmp_path / "service-0.log").read_text()
    assert log, "the service wrote a log"
    for sid in used:
        assert sid not in log


def test_the_end_of_run_log_check_recognises_raw_ids() -> None:
    from tests.conftest import RAW_ID_IN_LOG

    assert RAW_ID_IN_LOG.search(b"GET http://h/v1/sessions/abcdefghijklmnopqrstuvwxyz/lock 423")
    assert RAW_ID_IN_LOG.search(b"Cookie: PHPSESSID=abcdefghijklmnopqrstuvwxyz")
    assert not RAW_ID_IN_LOG.search(b"POST http://h/v1/sessions/{sid}/lock (sid 1a2b3c4d5e6f)")


def test_a_tokens_file_found_empty_is_not_applied(tmp_path: Path) -> None:
    """Read between an editor's truncate and its write, the file is empty: the tokens in
    use stay (an empty set would turn every client away) until it has tokens again."""
    from session_service import tokens
    from session_service.api.auth import TokenAuth
    from session_service.api.problems import ApiError
    from session_service.settings import Settings

    path = tmp_path / "tokens"
    path.write_text("app:old-secret\n")
    settings = Settings(tokens_file=str(path))
    auth = TokenAuth(
        tokens.read_strictly(settings), reload=lambda: tokens.load(settings), watch=str(path)
    )
    assert auth.namespace("Bearer old-secret") == "app"

    path.write_text("")
    auth._checked_at -= 2  # the next request looks at the file again
    assert auth.namespace("Bearer old-secret") == "app", "kept while the file is empty"

    path.write_text("app:new-secret\n")
    auth._checked_at -= 2
    assert auth.namespace("Bearer new-secret") == "app"
    with pytest.raises(ApiError):
        auth.namespace("Bearer old-secret")
