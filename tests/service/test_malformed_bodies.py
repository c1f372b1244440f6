"""Malformed request bodies get a 4xx with a reason, never a 500 (issue 13 item 7).

`"[" * 100000` as a JSON body used to be a 500 with a RecursionError traceback in
the log. Every case here goes through a real service process over HTTP, for both
body formats and for both endpoints that read a body.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServiceProcess, session_id

TOKEN = {"Authorization": "Bearer secret"}
JSON = "application/json"
MSGPACK = "application/msgpack"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    base = tmp_path_factory.mktemp("malformed")
    process = ServiceProcess(
        db_url=f"sqlite:///{base / 'sessions.db'}", log_path=base / "service.log"
    ).start()
    yield process
    process.stop()


CASES: list[tuple[str, str, bytes, int, str]] = [
    # (name, content type, body, status, words the detail must contain)
    ("json nested 100000 deep", JSON, b"[" * 100_000, 400, "nested too deeply"),
    ("json nested in a field", JSON, b'{"ttl": ' + b"[" * 100_000, 400, "nested too deeply"),
    ("json objects nested", JSON, b'{"a":' * 100_000, 400, "nested too deeply"),
    ("msgpack arrays nested", MSGPACK, b"\x91" * 100_000 + b"\xc0", 400, "nested too deeply"),
    ("msgpack maps nested", MSGPACK, b"\x81\xa1a" * 100_000 + b"\xc0", 400, "nested too deeply"),
    ("json not utf-8", JSON, b'{"ttl": "\xff\xfe"}', 400, "not valid JSON"),
    ("json truncated", JSON, b'{"data": "AA==", "ttl": ', 400, "not valid JSON"),
    ("json a list", JSON, b"[1, 2]", 400, "map/object"),
    ("json huge integer", JSON, b'{"data": "", "ttl": 1' + b"0" * 5000 + b"}", 400, "JSON"),
    ("json NaN ttl", JSON, b'{"data": "", "ttl": NaN}', 422, "ttl"),
    ("json Infinity ttl", JSON, b'{"data": "", "ttl": Infinity}', 422, "ttl"),
    ("json lone surrogate data", JSON, b'{"data": "\\ud800", "ttl": 5}', 422, "base64"),
    ("msgpack int keys", MSGPACK, b"\x81\x01\x02", 400, "not valid msgpack"),
    ("msgpack reserved byte", MSGPACK, b"\xc1", 400, "not valid msgpack"),
    ("msgpack truncated", MSGPACK, b"\x82\xa4data\xc4\x10ab", 400, "not valid msgpack"),
    ("msgpack extra bytes", MSGPACK, b"\x80\x80", 400, "not valid msgpack"),
    ("msgpack huge array header", MSGPACK, b"\xdd\xff\xff\xff\xff", 400, "not valid msgpack"),
    ("msgpack ext data", MSGPACK, b"\x82\xa4data\xd4\x01\x00\xa3ttl\x05", 422, "data"),
    ("msgpack invalid utf-8 str", MSGPACK, b"\x81\xa3ttl\xa2\xff\xfe", 400, "not valid msgpack"),
]


@pytest.mark.parametrize("path_suffix", ["", "/touch"])
@pytest.mark.parametrize(
    ("content_type", "body", "status", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_malformed_body_is_a_4xx_with_a_reason(
    service: ServiceProcess,
    path_suffix: str,
    content_type: str,
    body: bytes,
    status: int,
    words: str,
) -> None:
    method = "POST" if path_suffix else "PUT"
    answer = httpx.request(
        method,
        f"{service.url}/v1/sessions/{session_id()}{path_suffix}",
        content=body,
        headers={**TOKEN, "Content-Type": content_type, "Accept": JSON},
        timeout=30,
    )
    assert answer.status_code == status, answer.text[:300]
    assert words in answer.json()["detail"], answer.json()


def test_no_traceback_in_the_log(service: ServiceProcess) -> None:
    """Runs after the cases above (same module service): none of them logged a traceback."""
    assert service.log_path is not None
    log = Path(service.log_path).read_text(errors="replace")
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
