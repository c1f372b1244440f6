"""Prometheus metrics shared by the store and the HTTP layer (names listed in docs/api.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "session_http_requests_total",
    "HTTP requests by route and status",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "session_http_request_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LOCK_WAIT = Histogram(
    "session_lock_wait_seconds",
    "time spent waiting for a session lock (acquired or not)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LOCK_TIMEOUTS = Counter("session_lock_timeouts_total", "lock requests that gave up waiting")
DB_ERRORS = Counter("session_db_errors_total", "database errors by kind", ["kind"])
DB_RETRIES = Counter("session_db_retries_total", "database operations retried after an error")
GC_DELETED = Counter("session_gc_deleted_total", "expired sessions deleted by gc")
GC_RUNS = Counter("session_gc_runs_total", "gc runs completed")
DB_READS = Counter(
    "session_db_reads_total", "lock-free reads by the database that served them", ["db"]
)
REPLICA_FALLBACKS = Counter(
    "session_replica_fallbacks_total",
    "lock-free reads sent to the primary although replicas are configured, by reason",
    ["reason"],
)
REPLICA_LAG = Gauge(
    "session_replica_lag_seconds",
    "Seconds_Behind_Master at the last check (-1 when unknown or down)",
    ["replica"],
    multiprocess_mode="livemax",
)
REPLICA_HEALTHY = Gauge(
    "session_replica_healthy",
    "1 while the replica serves reads, else 0",
    ["replica"],
    multiprocess_mode="livemin",
)
TOKENS_RELOAD_SUCCESSFUL = Gauge(
    "session_tokens_last_reload_successful",
    "1 when the last reading of the tokens (start, or the tokens file's last change) had "
    "no problem, 0 when an item was refused or the file could not be applied",
    multiprocess_mode="livemin",
)
TOKENS_RELOAD_SUCCESS_TIME = Gauge(
    "session_tokens_last_reload_success_timestamp_seconds",
    "Unix time of the last reading of the tokens without a problem",
    multiprocess_mode="livemin",
)
TOKENS_IN_FORCE = Gauge(
    "session_tokens_in_force", "bearer tokens accepted now", multiprocess_mode="livemin"
)
