"""Which database errors are transient, and whether a failed statement may have been applied.

A deadlock or lock-wait timeout rolls the statement back, and a refused connection
never sent it: those are simply retried. A connection lost mid-statement is
ambiguous (the server may have committed before the socket died), so mutating
operations first check whether their write id landed before trying again; that is
how a write is never applied twice.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

from session_service import metrics
from session_service.errors import StoreUnavailable

log = logging.getLogger(__name__)

# MySQL/MariaDB error codes.
_ROLLED_BACK = {
    1205,  # lock wait timeout
    1213,  # deadlock (also Galera certification failure)
    1047,  # WSREP has not yet prepared node for application use
    2003,  # can't connect
    1040,  # too many connections
    1129,  # host blocked
}
_AMBIGUOUS = {
    2006,  # server has gone away
    2013,  # lost connection during query
    2014,
    2055,  # lost connection (SSL/socket error)
    1053,  # server shutdown in progress
    1927,  # connection was killed
    4031,  # disconnected by the server because of inactivity
    1317,  # query execution was interrupted
}


@dataclass(frozen=True, slots=True)
class Transient:
    """A retryable failure; `ambiguous` when the statement may already be applied."""

    kind: str
    ambiguous: bool


def classify(error: BaseException) -> Transient | None:
    """Return how to retry `error`, or None when it is permanent."""
    if isinstance(error, sa_exc.TimeoutError):  # pool exhausted: the database is slow, not gone
        return None
    if not isinstance(error, sa_exc.DBAPIError):
        return None
    orig = error.orig
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        if "locked" in text or "busy" in text:
            return Transient("sqlite_busy", ambiguous=False)
        return None
    code = _mysql_code(orig)
    if code in _ROLLED_BACK:
        return Transient(f"mysql_{code}", ambiguous=False)
    if code in _AMBIGUOUS:
        return Transient(f"mysql_{code}", ambiguous=True)
    if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
        return Transient("disconnect", ambiguous=True)
    return None


def _mysql_code(orig: BaseException | None) -> int | None:
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter: ~10 ms, 20 ms, ... capped at 500 ms."""
    ceiling: float = min(0.5, 0.01 * (2**attempt))
    return random.uniform(ceiling / 2, ceiling)


#: Contention on one hot row, not a sick server: never a reason to fail fast.
_ROW_CONTENTION = {"mysql_1205", "mysql_1213", "sqlite_busy"}


class RetryPolicy:
    """How long transient errors are retried, shared by every operation of one store.

    Once the database was unreachable for a whole retry window, later operations fail
    at once for `fail_fast_seconds` instead of each waiting out a window of its own,
    so a dead database costs callers milliseconds, not seconds, until it answers.
    """

    def __init__(self, retry_seconds: float, fail_fast_seconds: float) -> None:
        self.retry_seconds = retry_seconds
        self.fail_fast_seconds = fail_fast_seconds
        self._down_until = 0.0
        self._down_reason = ""

    def open(self) -> RetryWindow:
        """Start one operation's window; StoreUnavailable at once while failing fast."""
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailable(self._down_reason)
        return RetryWindow(self, time.monotonic() + self.retry_seconds)

    def succeeded(self) -> None:
        self._down_until = 0.0

    def give_up(self, reason: str, kind: str) -> None:
        if kind not in _ROW_CONTENTION:  # the server, not one hot row
            self._down_reason = f"{reason} (failing fast until it answers)"
            self._down_until = time.monotonic() + self.fail_fast_seconds


class RetryWindow:
    """One operation's attempts: `failed()` says how long to pause, or raises."""

    def __init__(self, policy: RetryPolicy, deadline: float) -> None:
        self.policy = policy
        self.deadline = deadline
        self.attempt = 0
        self.ambiguous = False

    def failed(self, error: sa_exc.DBAPIError) -> float:
        """Seconds to wait before the next attempt; raises when the error is final."""
        transient = classify(error)
        kind = transient.kind if transient else type(error.orig).__name__
        metrics.DB_ERRORS.labels(kind=kind).inc()
        if transient is None:
            if isinstance(error, sa_exc.OperationalError):
                raise StoreUnavailable(f"database error: {error.orig}") from error
            raise error
        self.ambiguous = self.ambiguous or transient.ambiguous
        pause = backoff_seconds(self.attempt)
        if time.monotonic() + pause > self.deadline:
            reason = f"database unavailable after {self.attempt + 1} attempts: {error.orig}"
            self.policy.give_up(reason, transient.kind)
            raise StoreUnavailable(reason) from error
        metrics.DB_RETRIES.inc()
        log.warning("transient database error (%s), retrying", kind)
        self.attempt += 1
        return pause
