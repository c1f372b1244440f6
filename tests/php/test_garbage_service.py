"""The PHP handler against a service that answers garbage (tests/php/fake_service.py).

A PHP node (php -S, handler from auto_prepend_file) talks to the fake, which
forwards to a real service except for the operation under test, where it answers
a wrong Content-Type, a truncated or undecodable body, a 5xx, a body without the
fields of the contract, too late, or resets the connection. For every case:

- the request fails (session_start() or the write returns false);
- the handler logs one specific line naming the URL and what was wrong;
- the only PHP warnings are the ones PHP itself emits for a failed session
  (READ_FAILED for a failed read, WRITE_FAILED for a failed write);
- the session stored in the real service is unchanged (same version and data):
  garbage never overwrites it, and a read that failed never leads to a write.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest

from .conftest import TOKEN, Browser, PhpNode, ServiceProcess
from .fake_service import Action, FakeService
from .test_php_handler import LOG, READ_FAILED, WRITE_FAILED, NodeFactory

# Room for a real lock through the fake service when CI has just run the browser and
# chaos tests (one run in CI timed out at 700 + 500 ms); the "slow" cases wait longer.
TIMEOUT_MS = 2000
LOCK_WAIT_MS = 500


@pytest.fixture(scope="module")
def fake(service: ServiceProcess) -> Iterator[FakeService]:
    f = FakeService(service.url)
    yield f
    f.close()


@pytest.fixture()
def node(start_node: NodeFactory, fake: FakeService) -> PhpNode:
    fake.reset_all()
    return start_node(
        fake.url, timeout_ms=str(TIMEOUT_MS), lock_wait_ms=str(LOCK_WAIT_MS),
        connect_timeout_ms="500",
    )  # fmt: skip


@pytest.fixture()
def direct(start_node: NodeFactory, service: ServiceProcess) -> PhpNode:
    """A node on the real service, to create sessions and check them afterwards."""
    return start_node(service.url, lock_wait_ms="5000")


def stored(service: ServiceProcess, sid: str | None) -> tuple[int, bytes]:
    """(version, data) of the session as the real service has it (plain read, no lock)."""
    r = httpx.get(
        f"{service.url}/v1/sessions/{sid}",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/msgpack"},
    )
    assert r.status_code == 200, r
    rec: dict[str, Any] = msgpack.unpackb(r.content)
    return int(rec["version"]), bytes(rec["data"])


def url_of(fake: FakeService, op: str) -> str:
    path = {
        "lock": r"/v1/sessions/\{sid\}/lock\?wait_ms=\d+&lease_ms=\d+",
        "write": r"/v1/sessions/\{sid\}",
        "touch": r"/v1/sessions/\{sid\}/touch",
    }[op]
    return re.escape(fake.url) + path


def drop(key: str) -> Any:
    def fn(rec: dict[str, Any]) -> dict[str, Any]:
        rec.pop(key)
        return rec

    return fn


def replace(key: str, value: Any) -> Any:
    def fn(rec: dict[str, Any]) -> dict[str, Any]:
        rec[key] = value
        return rec

    return fn


HTML = b"<html><body>502 Bad Gateway</body></html>"
SLOW = (TIMEOUT_MS + LOCK_WAIT_MS) / 1000 + 1.0

# name -> (action, what the log line must say after "<url> ")
CASES: dict[str, tuple[Action, str]] = {
    "html_200": (
        Action("respond", 200, "text/html", HTML),
        r'answered HTTP 200 but its Content-Type is "text/html", not msgpack or JSON \(41 bytes\)'
        r": not a session-service answer",
    ),
    "no_content_type": (
        Action("respond", 200, None, b"\x81\xa1a\x01"),
        r"answered HTTP 200 but its Content-Type is missing, not msgpack or JSON",
    ),
    "invalid_msgpack": (
        Action("respond", 200, "application/msgpack", b"\xc1\xc1\xc1"),
        r"answered HTTP 200 but its body \(3 bytes, application/msgpack\) is not a msgpack map",
    ),
    "invalid_json": (
        Action("respond", 200, "application/json", b'{"lock": "abc", "data": '),
        r"answered HTTP 200 but its body \(\d+ bytes, application/json\) is not a JSON object",
    ),
    "empty_200": (
        Action("respond", 200, "application/msgpack", b""),
        r"answered HTTP 200 but its body is empty",
    ),
    "truncated": (
        Action("truncate", 200, "application/msgpack", b"\x84\xa4data\xc4\x10abc", claimed=400),
        r"^incomplete answer: HTTP 200, then curl error 18: .* from URL",
    ),
    "announces_200_mib": (
        # something on the service's port that would fill PHP's memory_limit
        Action("truncate", 200, "application/msgpack", b"\x84", claimed=200 << 20),
        r"^incomplete answer: HTTP 200, then curl error 63: .*(size|exceed)",
    ),
    "500_no_body": (
        Action("respond", 500, None, b""),
        r"answered HTTP 500 \(no error body\)",
    ),
    "502_html": (
        Action("respond", 502, "text/html", HTML),
        r'answered HTTP 502 \(no error body: its Content-Type is "text/html"',
    ),
    "503_json": (
        Action("respond", 503, "application/json", b'{"error": "unavailable", "detail": "down"}'),
        r"answered HTTP 503 unavailable: down",
    ),
    "slow": (
        # not forwarded: a late forward would land in the next test
        Action("slow", 503, "application/json", b'{"error": "unavailable"}', seconds=SLOW),
        r"^no answer from URL: the request went out, then curl error 28: ",
    ),
    "reset": (
        Action("reset"),
        r"^no answer from URL: the request went out, then curl error (52|56): ",
    ),
}

# Answers the real lock took place behind (the fake forwarded it, then garbled it).
LOCK_ONLY: dict[str, tuple[Action, str]] = {
    "lock_missing": (
        Action("corrupt", fn=drop("lock")),
        r'answered HTTP 200 but its body has no string "lock"',
    ),
    "lock_data_int": (
        Action("corrupt", fn=replace("data", 12345)),
        r'answered HTTP 200 but its "data" is int, not bytes: not a session-service answer;'
        r" the lock was released",
    ),
    "lock_data_missing": (
        Action("corrupt", fn=drop("data")),
        r'answered HTTP 200 but its body has no "data"',
    ),
    "lock_data_php_object": (
        # ext-msgpack's PHP object encoding (a map whose nil key names the class): with
        # its default msgpack.php_only=1 the handler would instantiate ArrayObject here.
        Action("corrupt", fn=replace("data", {None: "ArrayObject"})),
        r'answered HTTP 200 but its "data" is array, not bytes',
    ),
    "lock_html_after_real_lock": (
        Action("respond", 200, "text/html", HTML, forward=True),
        r'answered HTTP 200 but its Content-Type is "text/html"',
    ),
}

WRITE_ONLY: dict[str, tuple[Action, str]] = {
    "write_no_version": (
        Action("respond", 200, "application/msgpack", msgpack.packb({"ok": True})),
        r'answered HTTP 200 but its body has no integer "version": not a session-service answer;'
        r" whether the data was saved is unknown",
    ),
}


def line_pattern(fake: FakeService, op: str, said: str) -> str:
    url = url_of(fake, op)
    if said.startswith("^"):
        said = said[1:].replace("URL", url)
        return LOG + f"{op} failed: " + said
    return LOG + f"{op} failed: {url} " + said


def make_session(direct: PhpNode, service: ServiceProcess) -> tuple[Browser, tuple[int, bytes]]:
    b = Browser()
    assert b.get(direct, "incr")["n"] == 1
    assert b.get(direct, "incr")["n"] == 2
    before = stored(service, b.sid)
    assert before[1] == b"n|i:2;"
    return b, before


@pytest.mark.parametrize("case", [*CASES, *LOCK_ONLY])
def test_garbage_lock_answer_fails_session_start(
    case: str, node: PhpNode, direct: PhpNode, fake: FakeService, service: ServiceProcess
) -> None:
    action, said = {**CASES, **LOCK_ONLY}[case]
    b, before = make_session(direct, service)
    fake.set("lock", action)
    out = b.get(node, "incr")
    assert out["started"] is False, out
    assert "n" not in out
    (line,) = node.expect(line_pattern(fake, "lock", said))
    assert b.sid and b.sid not in line
    node.expect(READ_FAILED)
    assert "write" not in fake.ops() and "touch" not in fake.ops(), fake.seen
    assert "write" not in fake.forwarded
    assert stored(service, b.sid) == before, "the stored session is unchanged"
    if case == "lock_data_int":
        # the real lock it took was released: the next request does not wait for a lease
        assert fake.forwarded.count("release") == 1
        assert b.get(direct, "incr")["n"] == 3


@pytest.mark.parametrize("case", [*CASES, *WRITE_ONLY])
def test_garbage_write_answer_fails_and_keeps_stored_session(
    case: str, node: PhpNode, direct: PhpNode, fake: FakeService, service: ServiceProcess
) -> None:
    action, said = {**CASES, **WRITE_ONLY}[case]
    b, before = make_session(direct, service)
    fake.set("write", action)
    out = b.get(node, "incr")
    assert out["started"] is True and out["n"] == 3, out
    node.expect(line_pattern(fake, "write", said))
    node.expect(WRITE_FAILED)
    assert "write" not in fake.forwarded, "the fake never passed the write on"
    assert fake.ops().count("write") == 1, f"the write was not retried: {fake.seen}"
    assert stored(service, b.sid) == before, "the stored session is unchanged"


@pytest.mark.parametrize("case", ["html_200", "truncated", "500_no_body"])
def test_garbage_touch_answer_fails(
    case: str, node: PhpNode, direct: PhpNode, fake: FakeService, service: ServiceProcess
) -> None:
    action, said = CASES[case]
    b, before = make_session(direct, service)
    fake.set("touch", action)
    out = b.get(node, "touch")
    assert out["started"] is True and out["n"] == 2, out
    node.expect(line_pattern(fake, "touch", said))
    node.expect(
        r"PHP Warning:  session_write_close\(\): Failed to write session data"
        r" using user defined save handler"
    )
    assert stored(service, b.sid) == before


def test_garbage_on_first_url_is_not_retried_on_second(
    start_node: NodeFactory, fake: FakeService, service: ServiceProcess, direct: PhpNode
) -> None:
    """Only unreachable/503 moves on to the next URL; a garbage 200 write is not replayed."""
    fake.reset_all()
    node = start_node([fake.url, service.url], timeout_ms=str(TIMEOUT_MS))
    b, before = make_session(direct, service)
    fake.set("write", CASES["html_200"][0])
    out = b.get(node, "incr")
    assert out["n"] == 3
    node.expect(line_pattern(fake, "write", CASES["html_200"][1]))
    node.expect(WRITE_FAILED)
    node.collect()
    assert not [e for e in node.pending if "trying" in e]
    assert stored(service, b.sid) == before


def test_json_answer_to_a_msgpack_request_is_decoded_as_json(
    node: PhpNode, direct: PhpNode, fake: FakeService, service: ServiceProcess
) -> None:
    """The contract allows either format; a JSON answer's data is base64, not raw bytes.
    (Taking the base64 text as the session made PHP fail to decode it and destroy the
    stored session.)"""
    b, before = make_session(direct, service)
    fake.set("lock", Action("corrupt", fn=lambda rec: rec, as_json=True))
    assert b.get(node, "incr")["n"] == 3
    assert stored(service, b.sid) == (before[0] + 1, b"n|i:3;")


def test_json_data_that_is_not_base64(
    start_node: NodeFactory, direct: PhpNode, fake: FakeService, service: ServiceProcess
) -> None:
    fake.reset_all()
    node = start_node(fake.url, format="json", timeout_ms=str(TIMEOUT_MS))
    b, before = make_session(direct, service)
    fake.set("lock", Action("corrupt", fn=replace("data", "*not base64*"), as_json=True))
    out = b.get(node, "incr")
    assert out["started"] is False
    node.expect(
        line_pattern(fake, "lock", r'answered HTTP 200 but its "data" is not valid base64')
        + r".*the lock was released"
    )
    node.expect(READ_FAILED)
    assert fake.forwarded.count("release") == 1 and "write" not in fake.forwarded
    assert stored(service, b.sid) == before
    assert b.get(direct, "incr")["n"] == 3, "the real lock was released"


@pytest.mark.parametrize("case", ["html_200", "lock_missing", "truncated", "500_no_body"])
def test_garbage_under_on_unavailable_empty_never_writes(
    case: str,
    start_node: NodeFactory,
    direct: PhpNode,
    fake: FakeService,
    service: ServiceProcess,
) -> None:
    """on_unavailable=empty starts an empty session on a garbage answer: it must never
    be written over the stored one."""
    fake.reset_all()
    node = start_node(
        fake.url, on_unavailable="empty", timeout_ms=str(TIMEOUT_MS), lock_lease_ms="1000"
    )
    action, said = {**CASES, **LOCK_ONLY}[case]
    b, before = make_session(direct, service)
    fake.set("lock", action)
    out = b.get(node, "incr")
    assert out["started"] is True and out["n"] == 1, "an empty session, as documented"
    node.expect(
        line_pattern(fake, "lock", said)
        + r".*; on_unavailable=empty: starting with an empty session"
    )
    assert not {"write", "touch", "destroy"} & set(fake.ops()), fake.seen
    assert stored(service, b.sid) == before
