"""Backends failing and returning, all backends down, and the signals (TERM drains, HUP reloads)."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
from collections import Counter
from pathlib import Path

from tests.balancer.conftest import (
    FAST_CHECKS,
    BackendProcess,
    Balancer,
    StartBalancer,
    get,
    raw_exchange,
)


def test_a_killed_backend_fails_no_get_then_rejoins_after_its_checks_pass(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends, *FAST_CHECKS, "--slowstart", "0")
    b2 = backends[1]
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    before = [get(balancer.port, conn=conn) for _ in range(30)]
    assert Counter(before) == {"b1": 10, "b2": 10, "b3": 10}

    hammers = [Hammer(balancer.port) for _ in range(3)]  # concurrent keep-alive clients
    for hammer in hammers:
        hammer.start()
    b2.kill()  # its pooled keep-alive connections die with it: GETs are retried elsewhere
    during = [get(balancer.port, conn=conn) for _ in range(30)]
    balancer.wait_state("b2", "DOWN")
    after_down = [get(balancer.port, conn=conn) for _ in range(20)]
    assert "b2" not in during[1:] and "b2" not in after_down
    assert set(after_down) == {"b1", "b3"}  # (other clients share the rotation meanwhile)

    b2.start()
    balancer.wait_state("b2", "UP")
    marks = [len(h.names) for h in hammers]
    finish(hammers, sum(marks) + 60)
    assert [h.failures for h in hammers] == [[], [], []]
    assert sum(len(h.names) for h in hammers) > 100
    assert "b2" in {name for h, mark in zip(hammers, marks, strict=True) for name in h.names[mark:]}
    back = [get(balancer.port, conn=conn) for _ in range(30)]
    assert Counter(back) == {"b1": 10, "b2": 10, "b3": 10}
    conn.close()
    backend = next(b for b in balancer.stats()["backends"] if b["name"] == "b2")
    assert backend["retries"] >= 1 or backend["failures"] >= 1


def test_a_refused_connect_marks_the_backend_down_at_once(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    # Health checks are slow here, so only the failed connect can take b1 out.
    balancer = start_balancer(backends, "--check-interval", "60")
    backends[0].kill()
    names = [get(balancer.port) for _ in range(6)]  # new connections: no pooled one to reuse
    assert "b1" not in names
    assert balancer.backend_states()["b1"] == "DOWN"


def test_all_backends_down_gives_a_quick_503_with_a_clear_body(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends, *FAST_CHECKS)
    for backend in backends:
        backend.kill()
    for backend in backends:
        balancer.wait_state(backend.name, "DOWN")
    answer = raw_exchange(balancer.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"no backend is available: all 3 backends are down" in answer


def test_a_returning_backend_is_eased_in_by_slow_start(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends, *FAST_CHECKS, "--slowstart", "60")
    b1 = backends[0]
    b1.kill()
    balancer.wait_state("b1", "DOWN")
    b1.start()
    balancer.wait_state("b1", "UP")
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    names = Counter(get(balancer.port, conn=conn) for _ in range(40))
    conn.close()
    # At the start of a 60 s ramp b1 weighs 10 % of the others: a few requests, not a third.
    assert 0 < names["b1"] <= 4
    weights = {b["name"]: b["effective_weight"] for b in balancer.stats()["backends"]}
    assert weights["b1"] < 1 and weights["b2"] == 1


class Hammer(threading.Thread):
    """Sequential GETs over one keep-alive connection until stopped; records every outcome."""

    def __init__(self, port: int, path: str = "/") -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.names: list[str] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        for _ in range(20000):  # bounded
            if self.halt.is_set():
                break
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    self.failures.append(f"{response.status} {body}")
                else:
                    self.names.append(body)
                if response.getheader("Connection") == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()


def finish(hammers: list[Hammer], total: int) -> None:
    """Let the hammers run until they have `total` answers between them, then stop them."""
    while sum(len(h.names) for h in hammers) < total:
        threading.Event().wait(0.02)
    for hammer in hammers:
        hammer.halt.set()
        hammer.join(30)


def test_sighup_reloads_the_backends_with_no_failed_request(
    backends: list[BackendProcess], start_balancer: StartBalancer, tmp_path: Path
) -> None:
    b1, b2, b3 = backends
    config = tmp_path / "balancer.toml"

    def write(*backs: BackendProcess) -> None:
        entries = "".join(
            f'[[backend]]\naddress = "{b.address}"\nname = "{b.name}"\n\n' for b in backs
        )
        config.write_text(f"[health]\ninterval = 0.1\n\n{entries}")

    write(b1, b2)
    balancer = start_balancer([], "--config", str(config), specs=[])
    hammers = [Hammer(balancer.port) for _ in range(3)]
    for hammer in hammers:
        hammer.start()
    while sum(len(h.names) for h in hammers) < 200:
        threading.Event().wait(0.02)
    pre = [len(h.names) for h in hammers]
    write(b2, b3)
    balancer.signal(signal.SIGHUP)
    for _ in range(500):
        if balancer.backend_states() == {"b2": "UP", "b3": "UP"}:
            break
        threading.Event().wait(0.02)
    # A request each hammer sent just before the reload may still be on its way back
    # from b1: let every hammer finish two more before the "after" part starts.
    switched = [len(h.names) for h in hammers]
    while any(len(h.names) < n + 2 for h, n in zip(hammers, switched, strict=True)):
        threading.Event().wait(0.02)
    marks = [len(h.names) for h in hammers]
    finish(hammers, sum(marks) + 300)
    assert [h.failures for h in hammers] == [[], [], []]
    before = Counter(name for h, mark in zip(hammers, pre, strict=True) for name in h.names[:mark])
    after = Counter(name for h, mark in zip(hammers, marks, strict=True) for name in h.names[mark:])
    assert set(before) == {"b1", "b2"}
    assert set(after) == {"b2", "b3"}


def test_sigterm_drains_in_flight_requests_then_exits(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends)
    results: list[str] = []

    def slow_get() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
        try:
            conn.request("GET", "/slow?s=1.5")
            response = conn.getresponse()
            results.append(f"{response.status} {response.read().decode()}")
        except (OSError, http.client.HTTPException) as exc:
            results.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=slow_get) for _ in range(9)]
    for thread in threads:
        thread.start()
    for _ in range(500):  # wait until every request is in flight at a backend
        if sum(b.count()["requests"] for b in backends) >= 9:
            break
        threading.Event().wait(0.02)
    balancer.signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert sorted(results) == sorted(f"200 {b.name}" for b in backends for _ in range(3))
    assert balancer.proc.wait(30) == 0
    log = balancer.stop()
    assert "draining 9 connection(s)" in log and "Traceback" not in log


def assert_nothing_active(balancer: Balancer) -> None:
    """Every way an exchange ends gives its backend's active count back (polled: the
    balancer may still be finishing the bookkeeping when the client has its answer)."""
    for _ in range(200):
        active = {b["name"]: b["active"] for b in balancer.stats()["backends"]}
        if not any(active.values()):
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"requests still counted as active: {active}")


def test_only_idempotent_requests_are_retried_once_they_reached_a_backend(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends, "--check-interval", "60")
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    # The rotation starts at b1: the GET reaches b1, which dies; it is retried on b2.
    conn.request("GET", "/die?who=b1")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"b2")
    # Next is b3: the POST reaches it, b3 dies, and the POST is not sent anywhere else.
    conn.request("POST", "/die?who=b3", body=b"order=1")
    response = conn.getresponse()
    assert response.status == 502
    assert b"backend b3" in response.read()
    conn.close()
    assert backends[1].count()["requests"] == 1  # only the retried GET
    assert_nothing_active(balancer)


def test_a_backend_that_does_not_answer_in_time_gives_504(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends[:1], "--server-timeout", "0.5")
    answer = raw_exchange(balancer.port, b"GET /slow?s=5 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 504 ")
    assert get(balancer.port) == "b1"
    assert_nothing_active(balancer)


def test_a_client_that_stops_reading_is_cut_off(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends[:1], "--idle-timeout", "0.5")
    sock = socket.create_connection(("127.0.0.1", balancer.port), 30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /download?n=104857600 HTTP/1.1\r\nHost: t\r\n\r\n")
    try:
        for _ in range(300):  # the client reads nothing; wait for the balancer to let go
            if balancer.stats()["connections"] == 0:
                break
            threading.Event().wait(0.05)
        stats = balancer.stats()
        assert stats["connections"] == 0 and stats["timeouts"] >= 1
    finally:
        sock.close()
    assert get(balancer.port) == "b1"
    assert_nothing_active(balancer)


def test_tcp_mode_skips_a_dead_backend_and_streams(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends, "--tcp", "--check-interval", "60")
    backends[0].kill()
    names = [get(balancer.port) for _ in range(6)]  # one connection each
    assert set(names) == {"b2", "b3"}
    assert balancer.backend_states()["b1"] == "DOWN"
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    conn.request("GET", "/download?n=5000000&chunked=1")
    assert len(conn.getresponse().read()) == 5_000_000
    conn.close()


def test_http_health_checks_take_a_sick_backend_out_and_put_it_back(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends, "--check-path", "/health", *FAST_CHECKS, "--slowstart", "0")
    b2 = backends[1]
    b2.set_sick(True)  # its port stays open: only the HTTP check can see it
    balancer.wait_state("b2", "DOWN")
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    assert set(get(balancer.port, conn=conn) for _ in range(20)) == {"b1", "b3"}
    b2.set_sick(False)
    balancer.wait_state("b2", "UP")
    assert Counter(get(balancer.port, conn=conn) for _ in range(30)) == {
        "b1": 10,
        "b2": 10,
        "b3": 10,
    }
    conn.close()


def test_expect_100_continue_is_passed_through(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends[:1])
    with socket.create_connection(("127.0.0.1", balancer.port), 30) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = b""
        while b"\r\n\r\n" not in interim:  # the body is sent only after the 100
            interim += sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello")
        final = interim.split(b"\r\n\r\n", 1)[1]
        while not final.endswith(b"\r\n\r\n5"):
            chunk = sock.recv(4096)
            assert chunk
            final += chunk
        assert final.startswith(b"HTTP/1.1 200 OK\r\n")
