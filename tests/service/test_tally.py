"""Hot-path metrics counted in bulk (session_service/api/tally.py) add up to exactly what
prometheus_client would have recorded one observation at a time."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from session_service.api.tally import RequestTally, _HistogramTally
from session_service.client import SessionClient
from tests.support import ServiceProcess, session_id

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _histogram(name: str) -> Histogram:
    return Histogram(name, "test", ["route"], buckets=BUCKETS, registry=CollectorRegistry())


def _samples(histogram: Histogram) -> dict[str, float]:
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for metric in histogram.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_bulk_histogram_equals_observing_one_by_one() -> None:
    values = [0.0, -1.0, 1e9, *BUCKETS, *(b * 1.000001 for b in BUCKETS)]
    values += [random.uniform(0, 12) for _ in range(500)]
    values += [random.expovariate(1000) for _ in range(500)]
    one_by_one, bulk = _histogram("one"), _histogram("bulk")
    tally = _HistogramTally(bulk.labels("r"))
    for value in values:
        one_by_one.labels("r").observe(value)
        tally.observe(value)
    tally.flush()
    expected = {k.replace("one", "bulk", 1): v for k, v in _samples(one_by_one).items()}
    got = _samples(bulk)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) < 1e-6, key
    tally.flush()  # nothing new: nothing added
    assert _samples(bulk) == got


def test_request_tally_reaches_the_service_metrics_on_flush() -> None:
    from session_service import metrics

    def count() -> float:
        return float(metrics.HTTP_REQUESTS.labels("/t/{sid}", "GET", "200")._value.get())

    tally = RequestTally()
    before = count()
    for _ in range(7):
        tally.request("/t/{sid}", "GET", 200, 0.003)
    assert count() == before, "counted, not yet added"
    tally.flush()
    assert count() == before + 7
    text = generate_latest().decode()
    assert 'session_http_request_seconds_bucket{le="0.005",method="GET",route="/t/{sid}"}' in text


def test_a_scrape_counts_every_request_answered_before_it(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 's.db'}")

    def locks_counted() -> float:
        text = httpx.get(service.url + "/metrics", timeout=5).text
        for line in text.splitlines():
            if (
                line.startswith("session_http_requests_total{")
                and 'route="/v1/sessions/{sid}/lock"' in line
                and 'status="200"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = locks_counted()
    with SessionClient(service.url, "secret") as client:
        for _ in range(5):
            sid = session_id()
            record = client.lock(sid)
            client.write(sid, b"x", 60, lock=record.lock)
    assert locks_counted() == before + 5, "no waiting for the next periodic flush"
