"""What the PHP handler puts on the wire, request by request (tests/php/fake_service.py
records every request and forwards it to a real service).

The handler keeps one curl handle for the whole PHP request and sets the options
that never change only once on it, so each call must carry exactly its own method,
body, headers and timeout whatever the call before it on the same handle was: a
DELETE after a POST has no body, a GET after a PUT is a GET, a lock after a write
sends no session data and no msgpack Content-Type, a write after a lock does not
wait as long as the lock may. The sequences below put every transition the handler
makes (lock, write, touch, release, destroy, plain read) after one another on one
handle, with exclusive locking and with lock=none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from .conftest import TOKEN, Browser, PhpNode, ServiceProcess
from .fake_service import Action, FakeService, Received
from .test_php_handler import LOG, WRITE_FAILED, NodeFactory

# op -> keys its body must have, and the keys it may have besides
BODIES: dict[str, tuple[set[str], set[str]]] = {
    "write": ({"data", "ttl"}, {"lock"}),
    "touch": ({"ttl"}, {"lock"}),
}


@pytest.fixture(scope="module")
def fake(service: ServiceProcess) -> Iterator[FakeService]:
    f = FakeService(service.url)
    yield f
    f.close()


@pytest.fixture(params=["json", "msgpack"])
def format_(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def decode(r: Received, media_type: str) -> dict[str, Any]:
    if media_type == "application/msgpack":
        body: dict[str, Any] = msgpack.unpackb(r.body)
    else:
        body = json.loads(r.body)
    return body


def check(wire: list[Received], media_type: str) -> None:
    """Every request is complete and carries only what belongs to its operation."""
    for r in wire:
        where = f"{r.method} {r.path} {r.headers} {r.body!r}"
        assert r.op != "other", where
        assert r.headers.get("authorization") == f"Bearer {TOKEN}", where
        assert r.headers.get("accept") == media_type, where
        assert "expect" not in r.headers, where
        if r.op in BODIES:
            assert r.headers.get("content-type") == media_type, where
            assert r.headers.get("content-length") == str(len(r.body)), where
            required, optional = BODIES[r.op]
            keys = set(decode(r, media_type))
            assert required <= keys <= required | optional, where
        elif r.method == "POST":  # a lock: an empty form body, as curl sends it
            assert r.body == b"" and r.headers.get("content-length") == "0", where
            assert r.headers.get("content-type") != media_type, where
        else:  # GET, DELETE: no body at all
            assert r.body == b"", where
            assert "content-length" not in r.headers, where
            assert "content-type" not in r.headers, where


class Steps:
    """PHP requests on one node, one op each: each one's calls are checked, and every
    request the fake service saw is kept in `wire` for check()."""

    def __init__(self, node: PhpNode, fake: FakeService) -> None:
        self.node = node
        self.fake = fake
        self.browser = Browser()
        self.wire: list[Received] = []

    def __call__(self, op: str, expected_ops: list[str]) -> dict[str, Any]:
        self.fake.reset_all()
        out = self.browser.get(self.node, op)
        assert self.fake.ops() == expected_ops, (op, self.fake.seen)
        self.wire.extend(self.fake.wire)
        return out


def test_each_request_carries_only_its_own_method_body_and_headers(
    start_node: NodeFactory, fake: FakeService, format_: str
) -> None:
    media_type = f"application/{format_}"
    step = Steps(start_node(fake.url, format=format_), fake)

    # a new session: lock, then write
    assert step("incr", ["lock", "write"])["n"] == 1
    # strict mode: validateId() takes the lock, read() reuses it
    assert step("incr", ["lock", "write"])["n"] == 2
    # lazy_write: an unchanged session is touched (a POST with a body after one without)
    assert step("touch", ["lock", "touch"])["n"] == 2
    # read_and_close: the lock is released at once (a DELETE after a POST)
    assert step("get", ["lock", "release"])["session"] == {"n": 2}
    # session_reset(): a plain GET under the lock held (it reads n=2 back), then the write
    assert step("reset", ["lock", "read", "write"])["n"] == 2
    # a write, then a lock and its release on the same handle (POST after PUT)
    out = step("twice", ["lock", "write", "lock", "release"])
    assert out["again"] is True and out["n"] == 4
    # regenerate: destroy the old id, check the new one is free (lock, release), lock it, write
    old = step.browser.sid
    out = step("regenerate", ["lock", "destroy", "lock", "release", "lock", "write"])
    assert out["regenerated"] is True and step.browser.sid != old
    assert step("get", ["lock", "release"])["session"] == {"n": 4, "regenerated": True}
    step("destroy", ["lock", "destroy"])
    check(step.wire, media_type)


def test_lock_none_reads_are_gets_after_writes_and_deletes(
    start_node: NodeFactory, fake: FakeService
) -> None:
    step = Steps(start_node(fake.url, lock="none"), fake)

    assert step("incr", ["read", "write"])["n"] == 1
    # a GET after a PUT on the same handle
    out = step("twice", ["read", "write", "read"])
    assert out["again"] is True and out["n"] == 2
    # a GET after a DELETE (the new id checked after the old one was destroyed)
    old = step.browser.sid
    out = step("regenerate", ["read", "destroy", "read", "read", "write"])
    assert out["regenerated"] is True and step.browser.sid != old
    assert step("get", ["read"])["session"] == {"n": 2, "regenerated": True}
    check(step.wire, "application/msgpack")


def test_a_lock_s_longer_timeout_does_not_carry_over_to_the_next_call(
    start_node: NodeFactory, fake: FakeService
) -> None:
    """The lock request's timeout is timeout_ms + lock_wait_ms; the write after it on
    the same handle gets timeout_ms again: a write answered after 2 s times out at 0.7 s
    (with the lock's 3.7 s it would get the fake's 503 instead)."""
    node = start_node(fake.url, timeout_ms="700", lock_wait_ms="3000", lock_lease_ms="1000")
    b = Browser()
    fake.reset_all()
    fake.set("write", Action("slow", 503, "application/json", b'{"error": "x"}', seconds=2.0))
    out = b.get(node, "incr")
    assert out["started"] is True and out["n"] == 1
    assert fake.ops() == ["lock", "write"], fake.seen
    node.expect(
        LOG + rf"write failed: no answer from {re.escape(fake.url)}/v1/sessions/\{{sid\}}: "
        r"the request went out, then curl error 28"
    )
    node.expect(WRITE_FAILED)
