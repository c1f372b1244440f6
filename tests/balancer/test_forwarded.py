"""X-Forwarded-* at the edge and behind a trusted proxy (nginx's set_real_ip_from)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from tests.balancer.conftest import BackendProcess, StartBalancer

SPOOFED = {
    "Host": "shop.example",
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "other.example",
    "Forwarded": "for=203.0.113.7;proto=https",
    "X-Real-IP": "203.0.113.7",
}


def forwarded_headers(port: int) -> dict[str, list[str]]:
    """What the backend received for a request carrying the SPOOFED headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/headers", headers=SPOOFED)
        response = conn.getresponse()
        assert response.status == 200
        seen: dict[str, list[str]] = {}
        for name, value in json.loads(response.read())["headers"]:
            seen.setdefault(name.lower(), []).append(value)
        return seen
    finally:
        conn.close()


def assert_edge(seen: dict[str, list[str]]) -> None:
    """A client's own claims are replaced or dropped."""
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["shop.example"]
    assert "forwarded" not in seen and "x-real-ip" not in seen


def test_at_the_edge_a_client_cannot_say_where_it_came_from(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends[:1])
    assert_edge(forwarded_headers(balancer.port))


def test_a_peer_outside_the_trusted_proxies_is_the_edge(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends[:1], "--trusted-proxy", "10.0.0.0/8,192.0.2.1")
    assert_edge(forwarded_headers(balancer.port))


def test_behind_a_trusted_proxy_its_headers_pass_and_the_peer_is_appended(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(
        backends[:1], "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "127.0.0.1"
    )
    seen = forwarded_headers(balancer.port)
    assert seen["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]  # the TLS terminator's word
    assert seen["x-forwarded-host"] == ["other.example"]
    assert seen["forwarded"] == ["for=203.0.113.7;proto=https"]
    assert seen["x-real-ip"] == ["203.0.113.7"]
    assert seen["host"] == ["shop.example"]


def test_trusted_proxies_from_the_config_file(
    backends: list[BackendProcess], start_balancer: StartBalancer, tmp_path: Path
) -> None:
    config = tmp_path / "balancer.toml"
    config.write_text('trusted_proxies = ["127.0.0.0/8", "::1"]\n')
    balancer = start_balancer(backends[:1], "--config", str(config))
    seen = forwarded_headers(balancer.port)
    assert seen["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
