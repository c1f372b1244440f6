"""A write that may have been applied is never sent to another service.

The lock (or, with lock=none, the read) and the write of one PHP request share a
keep-alive connection. When the instance applies the write and dies before
answering, libcurl silently sends the request again on a new connection; that
connect is refused (curl error 7, which on its own means "never reached"). The
handler must see that the write went out, not try the next URL (where a locked
write would be refused with 409 and reported "not saved" although it was saved,
and an unlocked one applied twice), and report the outcome as unknown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from .conftest import Browser, ServiceProcess
from .fake_service import Action, FakeService
from .test_garbage_service import stored
from .test_php_handler import LOG, WRITE_FAILED, NodeFactory


@pytest.fixture()
def fakes(service: ServiceProcess) -> Iterator[tuple[FakeService, FakeService]]:
    """Two fakes in front of the real service, keeping connections alive as it does."""
    first = FakeService(service.url, keep_alive=True)
    second = FakeService(service.url, keep_alive=True)
    yield first, second
    first.close()
    second.close()


@pytest.mark.parametrize("lock", ["exclusive", "none"])
def test_write_applied_then_instance_dies_is_not_resent(
    lock: str,
    start_node: NodeFactory,
    service: ServiceProcess,
    fakes: tuple[FakeService, FakeService],
) -> None:
    first, second = fakes
    node = start_node([first.url, second.url], fresh=True, lock=lock)
    b = Browser()
    assert b.get(node, "incr")["n"] == 1
    version, _ = stored(service, b.sid)
    assert first.ops() == (["lock", "write"] if lock == "exclusive" else ["read", "write"])

    first.set("write", Action("die"))
    out = b.get(node, "set_blob", body=b"applied-once")
    assert out["started"] is True

    assert "write" not in second.ops(), "the write was sent again to the second URL"
    assert first.forwarded.count("write") == 2, "the first instance applied the write"
    after, data = stored(service, b.sid)
    assert after == version + 1, "the write was applied exactly once"
    assert b"applied-once" in data
    error = out["error"]
    assert error is not None and "may or may not have been saved" in error, error
    assert "409" not in error and "not saved" not in error.replace("may or may not", "")
    node.expect(
        LOG
        + rf"write failed: no answer from {re.escape(first.url)}/v1/sessions/\{{sid\}}: "
        + r"the request went out on a kept-alive connection that closed without an answer,"
        + r" and curl's retry on a new connection failed: curl error 7: .*"
        + r"may or may not have been saved"
    )
    node.expect(WRITE_FAILED)
    node.collect()
    assert not [e for e in node.pending if "trying" in e], node.pending
