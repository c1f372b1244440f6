"""Hot-path metrics counted in plain Python and added to Prometheus in bulk.

prometheus_client takes a lock for every value it changes and walks a
histogram's buckets in Python: recording one `/v1/sessions` request cost about
19k instructions, 5% of a whole lock + write cycle (bench/instructions.py). Here
a request costs a dict update and a bisect; `flush()` adds what was counted to
the real metrics (the same names and labels, docs/api.md), at the latest a second
later and before every `/metrics` answer. A scrape is therefore exact for the
process that answers it, and at most a second behind for the other workers of a
`--workers N` service (Prometheus multiprocess mode).

Everything here runs in the event loop's thread: no lock is needed.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from typing import Any

from prometheus_client import Histogram

from session_service import metrics

log = logging.getLogger(__name__)

#: how often counted values reach the Prometheus metrics without a scrape
FLUSH_SECONDS = 1.0


def _bulk_capable(histogram: Any) -> bool:
    """Whether a histogram child exposes the bucket values a bulk add needs (it has,
    in every prometheus_client release this project supports; if one day it has not,
    each observation goes to observe() instead, as before)."""
    return all(hasattr(histogram, name) for name in ("_buckets", "_sum", "_upper_bounds"))


class _HistogramTally:
    """Observations of one histogram child, kept as bucket counts and a sum."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)  # the last one is +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # prometheus_client counts an observation in the first bucket with value <= bound
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def flush(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        buckets = self.child._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0
        self.child._sum.inc(self.total)
        self.total = 0.0


class RequestTally:
    """Requests (route, method, status), their latency (route, method) and lock waits."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latencies: dict[tuple[str, str], _HistogramTally] = {}
        self._lock_wait = self._histogram(metrics.LOCK_WAIT)

    @staticmethod
    def _histogram(child: Histogram) -> Any:
        return _HistogramTally(child) if _bulk_capable(child) else child

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latencies.get((route, method))
        if latency is None:
            latency = self._latencies[(route, method)] = self._histogram(
                metrics.HTTP_LATENCY.labels(route, method)
            )
        latency.observe(seconds)

    def lock_wait(self, seconds: float) -> None:
        self._lock_wait.observe(seconds)

    def flush(self) -> None:
        """Add everything counted since the last flush to the Prometheus metrics."""
        requests, self._requests = self._requests, {}
        for (route, method, status), count in requests.items():
            metrics.HTTP_REQUESTS.labels(route, method, str(status)).inc(count)
        for latency in (*self._latencies.values(), self._lock_wait):
            if isinstance(latency, _HistogramTally):
                latency.flush()

    async def flush_forever(self, interval: float = FLUSH_SECONDS) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    self.flush()
                except Exception:  # never let metrics stop the service
                    log.exception("flushing request metrics failed")
        finally:
            self.flush()
