"""The stats listener: JSON (``/stats``), a small HTML page (``/``) and Prometheus ``/metrics``.

It runs on its own port so that it is never exposed by accident with the service, and it
renders a snapshot dict, so the same code serves one worker or the sum of several.
"""

from __future__ import annotations

import asyncio
import html
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import httptools
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from balancer.pool import LATENCY_BUCKETS

Snapshot = dict[str, Any]
_COUNTERS = (
    "connections",
    "total_connections",
    "rejected_connections",
    "requests",
    "bad_requests",
    "no_backend",
    "timeouts",
)


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """Sum worker snapshots; a backend is UP, DOWN, or PARTIAL when workers disagree."""
    if not snapshots:  # workers have not reported yet (their first second)
        empty: Snapshot = {key: 0 for key in _COUNTERS}
        return {**empty, "mode": "?", "workers": 0, "draining": False, "backends": []}
    total: Snapshot = dict(snapshots[0])
    total["workers"] = len(snapshots)
    for key in _COUNTERS:
        total[key] = sum(s[key] for s in snapshots)
    backends: dict[str, Snapshot] = {}
    for snap in snapshots:
        for b in snap["backends"]:
            seen = backends.get(b["address"])
            if seen is None:
                backends[b["address"]] = json.loads(json.dumps(b))
                continue
            if seen["state"] != b["state"]:
                seen["state"] = "PARTIAL"
            for key in ("active", "idle", "requests", "errors", "failures", "retries"):
                seen[key] += b[key]
            for cls, count in b["responses"].items():
                seen["responses"][cls] += count
            lat, other = seen["latency"], b["latency"]
            lat["counts"] = [x + y for x, y in zip(lat["counts"], other["counts"], strict=True)]
            lat["sum"] += other["sum"]
            lat["count"] += other["count"]
    total["backends"] = list(backends.values())
    return total


def quantile(latency: Snapshot, q: float) -> float | None:
    """Upper bound of the histogram bucket holding quantile ``q`` (seconds)."""
    count = latency["count"]
    if not count:
        return None
    rank, seen = q * count, 0
    for bound, n in zip([*LATENCY_BUCKETS, float("inf")], latency["counts"], strict=True):
        seen += n
        if seen >= rank:
            return bound
    return None


def render_json(snap: Snapshot) -> bytes:
    for b in snap["backends"]:
        lat = b["latency"]
        b["latency_ms"] = {
            "mean": round(1000 * lat["sum"] / lat["count"], 3) if lat["count"] else None,
            "p50_le": _ms(quantile(lat, 0.5)),
            "p99_le": _ms(quantile(lat, 0.99)),
        }
    return json.dumps(snap, indent=2).encode()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or seconds == float("inf") else round(seconds * 1000, 3)


# (snapshot key, metric name, help) of the frontend counters
_FRONTEND_COUNTERS = (
    ("total_connections", "balancer_connections_accepted", "Client connections accepted."),
    ("rejected_connections", "balancer_connections_rejected", "Refused at max_connections."),
    ("requests", "balancer_requests", "Requests (HTTP) or connections (TCP) received."),
    ("bad_requests", "balancer_bad_requests", "Requests refused by the parser or limits."),
    ("no_backend", "balancer_no_backend", "Answered 502/503: no backend could take them."),
    ("timeouts", "balancer_timeouts", "Client or backend timeouts."),
)
# (snapshot key, is a counter, help) of the per-backend figures
_BACKEND_VALUES = (
    ("active", False, "Requests in flight."),
    ("idle", False, "Idle pooled keep-alive connections."),
    ("requests", True, "Requests sent."),
    ("errors", True, "Failed exchanges (reset, timeout, invalid response)."),
    ("failures", True, "Failed connection attempts."),
    ("retries", True, "Requests moved to another backend."),
)
_LABELS = ("backend", "address")


class SnapshotCollector(Collector):
    """The metric families of one snapshot, for prometheus_client to write out.

    The balancer keeps its figures in plain attributes (no lock, no registry on the
    request path) and a snapshot may be the sum of several workers, so the families are
    built when /metrics is asked for, not kept up to date as they change.
    """

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        yield GaugeMetricFamily(
            "balancer_connections", "Open client connections.", value=snap["connections"]
        )
        for key, name, text in _FRONTEND_COUNTERS:
            yield CounterMetricFamily(name, text, value=snap[key])
        backends = snap["backends"]
        up = GaugeMetricFamily(
            "balancer_backend_up", "1 when the backend is in the rotation.", labels=_LABELS
        )
        for b in backends:
            up.add_metric(_label_values(b), 1 if b["state"] == "UP" else 0)
        yield up
        for key, counter, text in _BACKEND_VALUES:
            family: GaugeMetricFamily | CounterMetricFamily
            if counter:
                family = CounterMetricFamily(f"balancer_backend_{key}", text, labels=_LABELS)
            else:
                family = GaugeMetricFamily(f"balancer_backend_{key}", text, labels=_LABELS)
            for b in backends:
                family.add_metric(_label_values(b), b[key])
            yield family
        responses = CounterMetricFamily(
            "balancer_backend_responses", "Responses by status class.", labels=(*_LABELS, "code")
        )
        for b in backends:
            for cls, count in b["responses"].items():
                responses.add_metric([*_label_values(b), cls], count)
        yield responses
        latency = HistogramMetricFamily(
            "balancer_backend_response_seconds", "Time to the first response byte.", labels=_LABELS
        )
        for b in backends:
            lat, cumulative, buckets = b["latency"], 0, []
            for bound, count in zip([*LATENCY_BUCKETS, "+Inf"], lat["counts"], strict=True):
                cumulative += count
                buckets.append((str(bound), cumulative))
            latency.add_metric(_label_values(b), buckets, lat["sum"])
        yield latency


def _label_values(b: Snapshot) -> list[str]:
    return [b["name"], b["address"]]


def render_metrics(snap: Snapshot) -> bytes:
    """Prometheus text exposition of a snapshot, written by prometheus_client."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)


def render_html(snap: Snapshot) -> bytes:
    rows = []
    for b in snap["backends"]:
        lat = b["latency"]
        mean = f"{1000 * lat['sum'] / lat['count']:.2f}" if lat["count"] else "-"
        p99 = _ms(quantile(lat, 0.99))
        color = {"UP": "#cfc", "DOWN": "#fcc"}.get(b["state"], "#ffc")
        cells = [
            b["name"],
            b["address"],
            b["state"],
            f"{b['weight']} ({b['effective_weight']})",
            b["active"],
            b["idle"],
            b["requests"],
            " ".join(f"{k}:{v}" for k, v in b["responses"].items()),
            b["errors"],
            b["failures"],
            b["retries"],
            mean,
            "-" if p99 is None else f"&le;{p99}",
        ]
        tds = "".join(f"<td>{c if c == cells[-1] else html.escape(str(c))}</td>" for c in cells)
        rows.append(f'<tr style="background:{color}">{tds}</tr>')
    uptime = int(time.time() - snap.get("started", time.time()))
    heads = [
        *("name", "address", "state", "weight", "active", "idle", "requests", "responses"),
        *("errors", "conn-failures", "retries", "mean-ms", "p99-ms"),
    ]
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5"><title>session-balancer stats</title>
<style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;border:1px solid #999}}
table{{border-collapse:collapse}}</style></head><body>
<h1>session-balancer</h1>
<p>mode {snap.get("mode")}, workers {snap.get("workers", 1)}, up {uptime} s,
connections {snap["connections"]} open / {snap["total_connections"]} total
({snap["rejected_connections"]} rejected), requests {snap["requests"]},
bad requests {snap["bad_requests"]}, no backend {snap["no_backend"]},
timeouts {snap["timeouts"]}{", <b>draining</b>" if snap.get("draining") else ""}</p>
<table><tr>{"".join(f"<th>{h}</th>" for h in heads)}</tr>
{"".join(rows)}</table>
<p><a href="/stats">JSON</a> &middot; <a href="/metrics">Prometheus</a></p></body></html>
"""
    return page.encode()


class StatsProtocol(asyncio.Protocol):
    """A deliberately tiny HTTP/1.1 server: GET only, one request per connection."""

    def __init__(self, provider: Callable[[], Snapshot]) -> None:
        self.provider = provider
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, "text/plain", b"bad request\n")

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        path = httptools.parse_url(self.url).path.decode("ascii", "replace")
        method = self.parser.get_method()
        if method not in (b"GET", b"HEAD"):
            self._send(405, "text/plain", b"method not allowed\n")
        elif path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", render_html(self.provider()))
        elif path in ("/stats", "/stats.json"):
            self._send(200, "application/json", render_json(self.provider()))
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, render_metrics(self.provider()))
        else:
            self._send(404, "text/plain", b"not found: try /, /stats or /metrics\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


async def serve_stats(sock: socket.socket, provider: Callable[[], Snapshot]) -> asyncio.Server:
    """Serve stats on an already bound socket (bound early so that errors show at start-up)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: StatsProtocol(provider), sock=sock)
