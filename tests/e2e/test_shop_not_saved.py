"""The example shop when a save fails: the user is told (503, "not saved"), and the
stored session is the one before the change, whole.

The service here accepts sessions of at most 90 bytes, so that adding items to the
cart (a real POST through the balancer, PHP node and handler) makes the session too
large to store: the handler's write gets a 413, the shop sees it through
Handler::lastError() and answers 503 with Retry-After instead of pretending.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from stack.runner import Stack, StackConfig

LIMIT = 90


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack-small")
    config = StackConfig(
        db_url=f"sqlite:///{workdir / 'sessions.db'}",
        workdir=workdir,
        nodes=2,
        node_workers=1,
        service_args=["--max-data-bytes", str(LIMIT)],
    )
    with Stack(config) as running:
        yield running


def test_a_change_too_large_to_store_is_refused_and_the_stored_session_kept(
    small_stack: Stack,
) -> None:
    with httpx.Client(base_url=small_stack.url, timeout=30) as client:
        state = client.get("/shop/cart.php", params={"format": "json"}).json()
        saved_cart: dict[str, int] = {}
        refused = None
        for item in ["apple", "bread", "cheese", "coffee", "pear"]:
            r = client.post("/shop/cart.php", data={"item": item})
            if r.status_code == 503:
                refused = r
                break
            assert r.status_code == 303, r.text
            saved_cart[item] = 1
        assert refused is not None, "the session never outgrew the limit: raise the items"
        assert saved_cart, "the very first change was refused: the limit is too low"
        assert "not saved" in refused.text
        assert refused.headers["retry-after"] == "1"

        # the next request (on any node) finds the session as last saved: the refused
        # item is not in it, nothing else is lost, and the session still works
        after = client.get("/shop/cart.php", params={"format": "json"}).json()
        assert after["session_id"] == state["session_id"]
        assert after["cart"] == saved_cart
        r = client.post("/shop/cart.php", data={"action": "clear"})
        assert r.status_code == 303, r.text
        assert client.get("/shop/cart.php", params={"format": "json"}).json()["cart"] == {}

    # the refusal is in a node's error log, with the service's reason, beside PHP's own
    # warning about the failed write; nothing else went wrong anywhere
    problems = small_stack.php_problems()
    assert set(problems) <= {"web1", "web2"}, problems
    lines = [line for node_lines in problems.values() for line in node_lines]
    handler = [line for line in lines if "session-service:" in line]
    assert len(handler) == 1, problems
    assert "HTTP 413 too_large" in handler[0], handler
    assert "the stored session is left unchanged" in handler[0], handler
    others = [line for line in lines if line not in handler]
    assert len(others) == 1 and "Failed to write session data" in others[0], problems
