"""PHP handler end to end: PHP nodes (php -S) -> session service -> MariaDB.

Each PHP node gets the handler from auto_prepend_file=php_handler/prepend.php,
configured by environment variables only (as a legacy application would), with
session.use_strict_mode=1 and lazy_write=1. See conftest.py for the harness; any
PHP warning, notice or deprecation fails the test.

Why one module of this length: 27 short, independent tests of PHP's session contract,
all on the one node-service-MariaDB harness of conftest.py; split, each file would repeat
its fixtures.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import free_port

from .conftest import (
    REPO,
    Browser,
    PhpNode,
    ServiceProcess,
    missing,
    run_concurrently,
    while_holding,
)

READ_FAILED = r"PHP Warning:  session_start\(\): Failed to read session data: user"
WRITE_FAILED = (
    r"PHP Warning:  session_write_close\(\): Failed to write session data"
    r" using user defined save handler"
)
LOG = r"session-service: session [0-9a-f]{12}: "  # a handler line: hashed id, never the raw one
NodeFactory = Callable[..., PhpNode]
SYMFONY_AUTOLOAD = "/usr/share/php/Symfony/Component/HttpFoundation/autoload.php"


@pytest.fixture(scope="module")
def nodes(
    start_node: NodeFactory, service: ServiceProcess, service2: ServiceProcess
) -> list[PhpNode]:
    """Three nodes: two talk to service 1, one to service 2 (same database).

    The lock wait is long (PHP's files handler waits for ever), so that 40 requests
    queued on one session on a loaded 2-core machine never time out.
    """
    return [
        start_node(service.url, lock_wait_ms="30000"),
        start_node(service.url, lock_wait_ms="30000", workers=3),
        start_node(service2.url, lock_wait_ms="30000"),
    ]


def test_counter_alternating_nodes_stays_exact(nodes: list[PhpNode]) -> None:
    b = Browser()
    for i in range(1, 31):
        assert b.get(nodes[i % len(nodes)], "incr")["n"] == i
    assert b.get(nodes[0], "get")["session"] == {"n": 30}


def test_40_concurrent_requests_exclusive_lock_exact(nodes: list[PhpNode]) -> None:
    b = Browser()
    assert b.get(nodes[0], "incr")["n"] == 1
    sid = b.sid

    def hit(i: int) -> int:
        return int(Browser(sid).get(nodes[i % len(nodes)], "incr", sleep_ms=5)["n"])

    seen = run_concurrently(hit, 40)
    assert sorted(seen) == list(range(2, 42)), "each request saw the previous one's write"
    assert b.get(nodes[1], "get")["session"] == {"n": 41}


def test_40_concurrent_requests_lock_none_lose_updates(
    start_node: NodeFactory, service: ServiceProcess, service2: ServiceProcess
) -> None:
    """The trade-off of SESSION_SERVICE_LOCK=none: concurrent writes of one session race."""
    unlocked = [start_node(service.url, lock="none"), start_node(service2.url, lock="none")]
    b = Browser()
    assert b.get(unlocked[0], "incr")["n"] == 1
    sid = b.sid

    def hit(i: int) -> int:
        return int(Browser(sid).get(unlocked[i % 2], "incr", sleep_ms=20)["n"])

    run_concurrently(hit, 40)
    final = b.get(unlocked[0], "get")["session"]["n"]
    assert final < 41, "without locking, concurrent read-modify-write loses updates"
    print(f"lock=none: counter {final} after 41 increments ({41 - final} lost)")


def test_strict_mode_rejects_forged_id(nodes: list[PhpNode], service: ServiceProcess) -> None:
    forged = "attackerchosenid0123456789abcdef"
    b = Browser(forged)
    r = b.get(nodes[0], "incr")
    assert r["n"] == 1
    assert r["id"] != forged and b.sid == r["id"]
    assert not service.exists(forged), "the forged id must not be created"
    assert service.exists(r["id"])
    # An id the service would refuse (too short) is replaced too, without an error.
    b2 = Browser("short")
    assert b2.get(nodes[1], "incr")["n"] == 1 and b2.sid != "short"


def test_prepend_turns_strict_mode_on(start_node: NodeFactory, service: ServiceProcess) -> None:
    """php.ini left at PHP's default use_strict_mode=0: prepend.php turns it on, so a
    forged id is replaced (and not created) all the same."""
    node = start_node(service.url, ini={"session.use_strict_mode": "0"})
    forged = "attackerchosenid0123456789abcdeg"
    b = Browser(forged)
    r = b.get(node, "incr")
    assert r["n"] == 1
    assert r["id"] != forged and b.sid == r["id"]
    assert not service.exists(forged), "the forged id must not be created"


def test_regenerate_destroys_old_and_new_id_carries_data(
    nodes: list[PhpNode], service: ServiceProcess
) -> None:
    b = Browser()
    b.get(nodes[0], "incr")
    b.get(nodes[1], "incr")
    old = b.sid
    assert old is not None
    r = b.get(nodes[2], "regenerate")
    assert r["regenerated"] is True and r["old_id"] == old and r["new_id"] != old
    assert b.sid == r["new_id"]
    assert not service.exists(old)
    assert b.get(nodes[0], "get")["session"] == {"n": 2, "regenerated": True}
    # The old cookie is dead: strict mode gives its bearer a fresh, empty session.
    stale = Browser(old)
    assert stale.get(nodes[1], "incr")["n"] == 1 and stale.sid != old


def test_destroy_removes_session_on_service(nodes: list[PhpNode], service: ServiceProcess) -> None:
    b = Browser()
    b.get(nodes[0], "incr")
    sid = b.sid
    assert sid and service.exists(sid)
    assert b.get(nodes[1], "destroy")["destroyed"] is True
    assert not service.exists(sid)
    assert Browser(sid).get(nodes[2], "incr")["n"] == 1


def test_lazy_write_touch_keeps_data(nodes: list[PhpNode]) -> None:
    b = Browser()
    b.get(nodes[0], "incr")
    for node in nodes:
        assert b.get(node, "touch")["n"] == 1
    assert b.get(nodes[0], "incr")["n"] == 2


def test_read_and_close_releases_lock_at_once(nodes: list[PhpNode], php_workdir: Path) -> None:
    b = Browser()
    b.get(nodes[0], "incr")
    sid = b.sid

    def reader(mark: str) -> dict[str, object]:
        return Browser(sid).get(nodes[0], "hold_readonly", sleep_ms=2000, mark=mark)

    def writer() -> tuple[float, dict[str, object]]:
        t = time.monotonic()
        out = Browser(sid).get(nodes[1], "incr")
        return time.monotonic() - t, out

    slow, (fast_t, fast) = while_holding(reader, writer, php_workdir)
    assert slow["n"] == 1
    assert fast["n"] == 2
    assert fast_t < 1.0, f"the writer waited {fast_t:.2f}s for a read_and_close request"


def test_lock_held_until_write_close(nodes: list[PhpNode], php_workdir: Path) -> None:
    """The lock spans session_start()..end of request, like the files handler."""
    b = Browser()
    b.get(nodes[0], "incr")
    sid = b.sid

    def holder(mark: str) -> int:
        return int(Browser(sid).get(nodes[0], "incr", sleep_ms=1000, mark=mark)["n"])

    def other() -> tuple[float, int]:
        t = time.monotonic()
        out = Browser(sid).get(nodes[1], "incr")
        return time.monotonic() - t, int(out["n"])

    first, (waited, second) = while_holding(holder, other, php_workdir)
    assert (first, second) == (2, 3)
    assert waited >= 0.5, "the second request must wait for the first one's lock"


def test_fatal_error_releases_lock(nodes: list[PhpNode]) -> None:
    b = Browser()
    b.get(nodes[0], "incr")
    r = b.request(nodes[1], "fatal")
    assert r.status_code == 500
    nodes[1].expect(
        r"PHP Fatal error:  Uncaught Error: Call to undefined function undefined_function_"
    )
    t = time.monotonic()
    out = b.get(nodes[2], "incr")
    assert time.monotonic() - t < 2.0, "the lock of the crashed request was released"
    assert out["n"] == 2


def test_expiry_honours_gc_maxlifetime(start_node: NodeFactory, service: ServiceProcess) -> None:
    node = start_node(service.url, ini={"session.gc_maxlifetime": "2"})
    b = Browser()
    assert b.get(node, "incr")["n"] == 1
    assert b.get(node, "incr")["n"] == 2
    sid = b.sid
    time.sleep(3.5)
    assert sid and not service.exists(sid)
    assert b.get(node, "incr")["n"] == 1, "an expired session starts empty"
    assert b.sid != sid, "strict mode replaces the expired id"


@pytest.mark.parametrize("fmt", ["auto", "json"])
def test_binary_data_round_trips(
    start_node: NodeFactory, service: ServiceProcess, fmt: str
) -> None:
    node = start_node(service.url, format=fmt)
    blob = bytes(range(256)) * 64 + b"\x00\xff\xfe" + "é€𝄞".encode() + os.urandom(4096)
    b = Browser()
    out = b.get(node, "set_blob", body=blob)
    assert out["written"] is True and out["sha256"] == hashlib.sha256(blob).hexdigest()
    back = b.get(node, "get_blob")
    assert back["sha256"] == hashlib.sha256(blob).hexdigest() and back["len"] == len(blob)


def test_size_limit(nodes: list[PhpNode]) -> None:
    limit = 1024 * 1024  # the service's default max_data_bytes
    overhead = len(b'blob|s:1048000:"";')
    near = os.urandom(limit - overhead - 16)
    b = Browser()
    saved = b.get(nodes[0], "set_blob", body=near)
    assert saved["written"] is True and saved["error"] is None
    back = b.get(nodes[1], "get_blob")
    assert back["len"] == len(near) and back["sha256"] == hashlib.sha256(near).hexdigest()

    over = os.urandom(limit + 1)
    out = b.get(nodes[2], "set_blob", body=over)
    assert out["started"] is True  # (session_write_close() reports true even when write failed)
    assert out["written"] is True  # still so in PHP 8.2; Handler::lastError() tells the truth:
    assert out["error"].startswith("write failed: http://127.0.0.1:")
    assert "HTTP 413 too_large" in out["error"] and b.sid not in out["error"]
    (line,) = nodes[2].expect(
        LOG
        + r"write failed: http://127\.0\.0\.1:\d+/v1/sessions/\{sid\} answered HTTP 413 too_large"
    )
    assert b.sid and b.sid not in line, "the raw session id is never logged"
    nodes[2].expect(WRITE_FAILED)
    back = b.get(nodes[0], "get_blob")
    assert back["sha256"] == hashlib.sha256(near).hexdigest(), "the stored session is intact"
    # ... and not left locked
    t = time.monotonic()
    b.get(nodes[1], "incr")
    assert time.monotonic() - t < 1.0


def test_lock_timeout_fails_by_default(
    start_node: NodeFactory, service: ServiceProcess, php_workdir: Path
) -> None:
    node = start_node(service.url, lock_wait_ms="300")
    b = Browser()
    b.get(node, "incr")
    sid = b.sid
    holder, blocked = while_holding(
        lambda mark: Browser(sid).get(node, "incr", sleep_ms=1500, mark=mark),
        lambda: Browser(sid).get(node, "incr"),
        php_workdir,
    )
    assert holder["n"] == 2
    assert blocked["started"] is False
    node.expect(LOG + r"lock not obtained within 300 ms at http://\S+ \(HTTP 423 lock_timeout")
    node.expect(READ_FAILED)
    assert b.get(node, "get")["session"] == {"n": 2}


def test_lock_timeout_readonly(
    start_node: NodeFactory, service: ServiceProcess, php_workdir: Path
) -> None:
    node = start_node(service.url, lock_wait_ms="300", on_lock_timeout="readonly")
    b = Browser()
    b.get(node, "incr")
    sid = b.sid
    holder, readonly = while_holding(
        lambda mark: Browser(sid).get(node, "incr", sleep_ms=1500, mark=mark),
        lambda: Browser(sid).get(node, "incr"),
        php_workdir,
    )
    assert holder["n"] == 2
    assert readonly["started"] is True and readonly["n"] == 2, "saw the stored data (n=1), +1"
    node.expect(r"lock not obtained within 300 ms .* serving the session read-only")
    node.expect(r"the changes of this request are discarded")
    assert b.get(node, "get")["session"] == {"n": 2}, "the read-only request's change was dropped"


def test_service_down_fail_policy(
    start_node: NodeFactory, start_service: Callable[..., ServiceProcess]
) -> None:
    svc = start_service()
    node = start_node(svc.url, fresh=True, connect_timeout_ms="300")
    b = Browser()
    assert b.get(node, "incr")["n"] == 1
    svc.stop()
    out = b.get(node, "incr")
    assert out["started"] is False
    (line,) = node.expect(
        LOG
        + rf"lock failed: service unreachable at {svc.url}/v1/sessions/\{{sid\}}/lock"
        + r"\?wait_ms=\d+&lease_ms=\d+ \(curl error 7"
    )
    assert b.sid and b.sid not in line
    node.expect(READ_FAILED)
    svc.start()
    assert b.get(node, "incr")["n"] == 2, "the session survived the outage"


def test_service_down_empty_policy(
    start_node: NodeFactory, start_service: Callable[..., ServiceProcess]
) -> None:
    svc = start_service()
    node = start_node(svc.url, fresh=True, connect_timeout_ms="300", on_unavailable="empty")
    b = Browser()
    assert b.get(node, "incr")["n"] == 1
    assert b.get(node, "incr")["n"] == 2
    sid = b.sid
    svc.stop()
    out = b.get(node, "incr")
    assert out["started"] is True and out["n"] == 1, "an empty session while the service is down"
    assert b.sid == sid, "the cookie is kept, so the stored session is found again"
    node.expect(r"on_unavailable=empty: starting with an empty session that will not be saved")
    svc.start()
    assert b.get(node, "incr")["n"] == 3, "the stored session was not overwritten"


def test_second_url_serves_when_first_is_down(
    start_node: NodeFactory, start_service: Callable[..., ServiceProcess]
) -> None:
    first, second = start_service(), start_service()
    node = start_node([first.url, second.url], fresh=True, connect_timeout_ms="300")
    b = Browser()
    assert b.get(node, "incr")["n"] == 1
    first.stop()
    for i in range(2, 5):
        assert b.get(node, "incr")["n"] == i
    hits = node.expect(
        rf"session-service: {first.url} unreachable \(curl error 7.*\), trying {second.url}"
    )
    assert len(hits) == 3, "one line per request that found the first service down"
    dead = f"http://127.0.0.1:{free_port()}"  # never started at all
    node2 = start_node([dead, second.url], fresh=True, connect_timeout_ms="300")
    assert b.get(node2, "incr")["n"] == 5
    node2.expect(rf"session-service: {dead} unreachable")


def test_symfony_native_session_storage(
    start_node: NodeFactory, service: ServiceProcess, service2: ServiceProcess
) -> None:
    if not Path(SYMFONY_AUTOLOAD).exists():
        missing(f"{SYMFONY_AUTOLOAD} missing (apt-get install php-symfony-http-foundation)")
    sym = [
        start_node(service.url, prepend=False),
        start_node(service2.url, prepend=False),
    ]
    b = Browser()
    for i in range(1, 5):
        assert b.get(sym[i % 2], "incr", page="symfony.php")["n"] == i
    got = b.get(sym[0], "get", page="symfony.php")
    assert got["n"] == 4 and got["flashes"] == ["incremented"] * 4
    old = b.sid
    assert old is not None
    m = b.get(sym[1], "migrate", page="symfony.php")
    assert m["migrated"] is True and m["new_id"] != old and b.sid == m["new_id"]
    assert not service.exists(old)
    assert b.get(sym[0], "get", page="symfony.php")["n"] == 4
    new = b.sid
    assert new and service.exists(new)
    b.get(sym[1], "invalidate", page="symfony.php")
    assert not service.exists(new)
    forged = Browser("forgedsymfonysessionid0123456789")
    assert forged.get(sym[0], "incr", page="symfony.php")["n"] == 1
    assert forged.sid != "forgedsymfonysessionid0123456789"


def test_session_reset_rereads_under_own_lock(nodes: list[PhpNode]) -> None:
    b = Browser()
    b.get(nodes[0], "incr")
    t = time.monotonic()
    out = b.get(nodes[1], "reset")
    assert time.monotonic() - t < 1.5, "session_reset() must not wait for its own lock"
    assert out["reset"] is True and out["n"] == 1
    assert b.get(nodes[2], "get")["session"] == {"n": 2}


def test_regenerate_without_delete_keeps_old_session(
    nodes: list[PhpNode], service: ServiceProcess
) -> None:
    b = Browser()
    b.get(nodes[0], "incr")
    old = b.sid
    assert old is not None
    out = b.get(nodes[1], "regenerate_keep")
    assert out["regenerated"] is True and b.sid != old
    assert old and service.exists(old)
    assert b.get(nodes[2], "get")["session"] == {"n": 2}
    assert Browser(old).get(nodes[0], "get")["session"] == {"n": 1}


def test_empty_session_keeps_its_id(nodes: list[PhpNode], service: ServiceProcess) -> None:
    """Like the files handler (which creates an empty file), an empty session exists."""
    b = Browser()
    first = b.get(nodes[0], "id")["id"]
    assert service.exists(first)
    assert b.get(nodes[1], "id")["id"] == first
    assert b.get(nodes[2], "incr")["n"] == 1 and b.sid == first


def test_lock_lost_after_lease_is_logged(
    start_node: NodeFactory, service: ServiceProcess, php_workdir: Path
) -> None:
    """A request that outlives its lease loses the lock: its write is refused (409), logged."""
    node = start_node(service.url, lock_lease_ms="500")
    b = Browser()
    b.get(node, "incr")
    sid = b.sid
    slow, fast = while_holding(
        lambda mark: Browser(sid).get(node, "incr", sleep_ms=2000, mark=mark),
        lambda: Browser(sid).get(node, "incr"),
        php_workdir,
        delay=0.8,  # after the first request's lease ran out
    )
    assert slow["n"] == 2 and fast["n"] == 2
    node.expect(LOG + r"write failed: \S+ answered HTTP 409 lock_lost.*the lock was lost")
    node.expect(WRITE_FAILED)
    assert b.get(node, "get")["session"] == {"n": 2}, "the stale write did not overwrite"


def test_wrong_token_fails_clearly(start_node: NodeFactory, service: ServiceProcess) -> None:
    node = start_node(service.url, token="not-the-token")
    out = Browser().get(node, "incr")
    assert out["started"] is False
    node.expect(
        LOG + r"lock failed: \S+ answered HTTP 401 unauthorized.*check SESSION_SERVICE_TOKEN"
    )
    node.expect(READ_FAILED)


def test_invalid_options_are_configuration_errors() -> None:
    """Bad option values throw at registration, with the option named."""
    script = (
        "require 'php_handler/autoload.php';"
        "foreach ([['lock' => 'sometimes'], ['lock_wait_ms' => '-1'], ['url' => 'ftp://x'],"
        " ['colour' => 'red'], ['on_unavailable' => 'ignore']] as $o) {"
        ' try { new SessionService\\Handler($o); echo "accepted\\n"; }'
        ' catch (InvalidArgumentException $e) { echo $e->getMessage(), "\\n"; } }'
        "putenv('SESSION_SERVICE_LOCK=none'); putenv('SESSION_SERVICE_URL=http://a:1, http://b:2');"
        "$h = new SessionService\\Handler();"
        "var_dump($h instanceof SessionUpdateTimestampHandlerInterface);"
    )
    out = subprocess.run(
        ["php", "-d", "error_reporting=-1", "-d", "display_errors=stderr", "-r", script],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert 'option "lock" must be one of exclusive, none, got "sometimes"' in lines[0]
    assert 'option "lock_wait_ms" must be an integer >= 0' in lines[1]
    assert 'url "ftp://x" must start with http://' in lines[2]
    assert 'unknown option "colour"' in lines[3]
    assert 'option "on_unavailable" must be one of fail, empty' in lines[4]
    assert lines[5] == "bool(true)"


def test_request_timed_out_after_sending_is_not_retried_elsewhere(
    start_node: NodeFactory, start_service: Callable[..., ServiceProcess], php_workdir: Path
) -> None:
    """A write that timed out on the kept-alive connection may still be applied by the
    frozen service: it must fail, not be replayed on the next URL."""
    first, second = start_service(), start_service()
    node = start_node([first.url, second.url], fresh=True, timeout_ms="800")
    b = Browser()
    b.get(node, "incr")
    sid = b.sid
    assert first.proc is not None
    pid = first.proc.pid

    def freeze() -> None:
        os.kill(pid, signal.SIGSTOP)

    try:
        out, _ = while_holding(
            lambda mark: Browser(sid).get(node, "incr", sleep_ms=500, mark=mark),
            freeze,
            php_workdir,
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    assert out["n"] == 2
    node.expect(
        LOG
        + rf"write failed: no answer from {first.url}/v1/sessions/\{{sid\}}: "
        + "the request went out, then curl error 28"
    )
    node.expect(WRITE_FAILED)
    node.collect()
    assert not [e for e in node.pending if "trying" in e], "the write was replayed elsewhere"
