"""Round robin with no hidden stickiness, and what is forwarded to the backends."""

from __future__ import annotations

import http.client
import json
import socket
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from tests.balancer.conftest import BackendProcess, StartBalancer, get, raw_exchange


def test_one_keepalive_client_sees_each_backend_exactly_ten_times(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends)
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    names = [get(balancer.port, conn=conn) for _ in range(30)]
    sock = conn.sock
    get(balancer.port, conn=conn)
    assert conn.sock is sock, "the client connection was not kept alive"
    conn.close()
    assert Counter(names) == {"b1": 10, "b2": 10, "b3": 10}
    assert names[:6] == ["b1", "b2", "b3", "b1", "b2", "b3"]


def test_connection_close_clients_rotate_too(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends)
    names = []
    for _ in range(9):
        conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        assert response.getheader("Connection") == "close"
        names.append(response.read().decode())
        conn.close()
    assert Counter(names) == {"b1": 3, "b2": 3, "b3": 3}


def test_tcp_mode_moves_each_new_connection_to_the_next_backend(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends, "--tcp")
    names = []
    for _ in range(6):
        conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
        # Several requests on one connection stay on one backend in TCP mode.
        first, second = get(balancer.port, conn=conn), get(balancer.port, conn=conn)
        assert first == second
        names.append(first)
        conn.close()
    # (The fixture's own readiness probe was a connection too, so the cycle may start anywhere.)
    assert sorted(names[:3]) == ["b1", "b2", "b3"] and names[3:] == names[:3]


def test_weights_are_respected_exactly(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    b1, b2, _ = backends
    balancer = start_balancer([], specs=[f"{b1.address},weight=2,name=b1", f"{b2.address},name=b2"])
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    names = [get(balancer.port, conn=conn) for _ in range(30)]
    conn.close()
    assert Counter(names) == {"b1": 20, "b2": 10}


def test_pipelined_requests_are_answered_in_order_by_successive_backends(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends)
    request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    last = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    data = raw_exchange(balancer.port, request * 3 + last)
    assert data.count(b"HTTP/1.1 200 OK") == 4
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"b1", b"b2", b"b3", b"b1"]


def test_forwarded_headers_are_set_and_hop_by_hop_headers_dropped(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends[:1], "--debug-header")
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    conn.request(
        "GET",
        "/headers",
        headers={
            "Host": "shop.example:8080",
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https-spoofed",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "must not pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "X-Custom": "kept",
        },
    )
    response = conn.getresponse()
    seen = json.loads(response.read())
    assert response.getheader("X-Balancer-Backend") == "b1"
    assert response.getheader("Connection") is None  # HTTP/1.1 keep-alive is the default
    headers = {name.lower(): value for name, value in seen["headers"]}
    names = [name.lower() for name, _ in seen["headers"]]
    assert len(names) == len(set(names)), f"a header was sent twice: {names}"
    assert headers["x-forwarded-for"] == "127.0.0.1"  # at the edge: replaced
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "shop.example:8080"
    assert headers["host"] == "shop.example:8080"
    assert headers["x-custom"] == "kept"
    for hop in ("connection", "x-secret-hop", "keep-alive", "te"):
        assert hop not in headers
    conn.close()


def test_http10_request_without_host_reaches_the_backend_with_one(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    """HTTP/1.0 allows no Host; the HTTP/1.1 request made of it must have one: the
    address the client connected to (what nginx does with its upstream's name)."""
    balancer = start_balancer(backends[:1])
    data = raw_exchange(balancer.port, b"GET /headers HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    seen = json.loads(body)
    hosts = [value for name, value in seen["headers"] if name.lower() == "host"]
    assert hosts == [f"127.0.0.1:{balancer.port}"]
    assert not any(name.lower() == "x-forwarded-host" for name, _ in seen["headers"])


def test_head_204_and_http10_clients(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends)
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    conn.request("HEAD", "/download?n=5000")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Length") == "5000"
    assert response.read() == b""
    conn.request("GET", "/nocontent")
    response = conn.getresponse()
    assert response.status == 204 and response.read() == b""
    assert get(balancer.port, conn=conn) in {"b1", "b2", "b3"}  # still in sync
    conn.close()
    # An HTTP/1.0 client gets a chunked backend response as a close-delimited body.
    data = raw_exchange(balancer.port, b"GET /download?n=70000&chunked=1 HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    assert b"chunked" not in head.lower() and body == b"x" * 70000


def test_close_delimited_responses_keep_the_client_connection(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends)
    conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=30)
    names = []
    for _ in range(6):
        conn.request("GET", "/until-close")
        response = conn.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked"
        names.append(response.read().decode())
    sock = conn.sock
    assert get(balancer.port, conn=conn) in {"b1", "b2", "b3"}
    assert conn.sock is sock, "the client connection was closed"
    conn.close()
    assert Counter(names) == {"b1": 2, "b2": 2, "b3": 2}


def test_a_stats_port_serves_json_html_and_prometheus(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends)
    for _ in range(3):
        get(balancer.port)
    stats = balancer.stats()
    assert stats["requests"] == 3
    assert balancer.backend_states() == {"b1": "UP", "b2": "UP", "b3": "UP"}
    with socket.create_connection(("127.0.0.1", balancer.stats_port), 10):
        pass
    for path, needle in (("/", b"<table>"), ("/metrics", b"# TYPE balancer_backend_up gauge")):
        conn = http.client.HTTPConnection("127.0.0.1", balancer.stats_port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        assert needle in response.read()
        conn.close()


# The families docs/balancer.md lists, with their Prometheus types.
METRICS = {
    "balancer_connections": "gauge",
    "balancer_connections_accepted": "counter",
    "balancer_connections_rejected": "counter",
    "balancer_requests": "counter",
    "balancer_bad_requests": "counter",
    "balancer_no_backend": "counter",
    "balancer_timeouts": "counter",
    "balancer_backend_up": "gauge",
    "balancer_backend_active": "gauge",
    "balancer_backend_idle": "gauge",
    "balancer_backend_requests": "counter",
    "balancer_backend_errors": "counter",
    "balancer_backend_failures": "counter",
    "balancer_backend_retries": "counter",
    "balancer_backend_responses": "counter",
    "balancer_backend_response_seconds": "histogram",
}


def test_prometheus_metrics_keep_their_names_and_meanings(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends)
    for _ in range(6):
        get(balancer.port)
    raw_exchange(balancer.port, b"GET / HTTP/1.1\r\n\r\n")  # no Host: a bad request
    conn = http.client.HTTPConnection("127.0.0.1", balancer.stats_port, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.getheader("Content-Type", "").startswith("text/plain")
    text = response.read().decode()
    conn.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: f.type for name, f in families.items()} == METRICS

    def value(sample: str, **labels: str) -> float:
        found = [
            s.value
            for f in families.values()
            for s in f.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, (sample, labels, found)
        return found[0]

    assert value("balancer_requests_total") == 6  # the bad one is not forwarded
    assert value("balancer_bad_requests_total") == 1
    assert value("balancer_connections_accepted_total") >= 7
    for name in ("b1", "b2", "b3"):
        address = next(b.address for b in backends if b.name == name)
        assert value("balancer_backend_up", backend=name, address=address) == 1
        assert value("balancer_backend_requests_total", backend=name) == 2
        assert value("balancer_backend_responses_total", backend=name, code="2xx") == 2
        assert value("balancer_backend_responses_total", backend=name, code="5xx") == 0
        assert value("balancer_backend_active", backend=name) == 0
        assert value("balancer_backend_response_seconds_count", backend=name) == 2
        assert value("balancer_backend_response_seconds_bucket", backend=name, le="+Inf") == 2
        assert value("balancer_backend_response_seconds_sum", backend=name) > 0
