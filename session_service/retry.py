"""Which database errors are transient, and whether a failed statement may have been applied.

A deadlock or lock-wait timeout rolls the statement back, and a refused connection
never sent it: those are simply retried (the error codes are in mysql_conventions.py).
A connection lost mid-statement is ambiguous (the server may have committed before
the socket died), so mutating operations first check whether their write id landed
before trying again; that is how a write is never applied twice.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import exc as sa_exc

from session_service import metrics
from session_service.errors import StoreUnavailable
from session_service.mysql_conventions import AMBIGUOUS, ROLLED_BACK, mysql_code

log = logging.getLogger(__name__)
C = TypeVar("C")
T = TypeVar("T")
C_contra = TypeVar("C_contra", contravariant=True)
T_co = TypeVar("T_co", covariant=True)


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
    code = mysql_code(orig)
    if code in ROLLED_BACK:
        return Transient(f"mysql_{code}", ambiguous=False)
    if code in AMBIGUOUS:
        return Transient(f"mysql_{code}", ambiguous=True)
    if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
        return Transient("disconnect", ambiguous=True)
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


class ConnectionSource(Protocol[C]):
    """Where run_with_retry gets its connections: an executor (executors.py)."""

    def acquire(self) -> C: ...

    def release(self, conn: C, error: BaseException | None) -> None: ...

    def pause(self, seconds: float) -> None: ...


class Attempt(Protocol[C_contra, T_co]):
    """One operation: what it does, and how to tell whether an earlier try applied it."""

    def work(self, conn: C_contra, /) -> T_co: ...

    def applied(self, conn: C_contra, /) -> T_co | None: ...


def run_with_retry(policy: RetryPolicy, operation: Attempt[C, T], source: ConnectionSource[C]) -> T:
    """The one retry loop of both executors: run `operation` on a connection from
    `source`, retrying transient errors within the policy's window.

    After an ambiguous failure (the connection died mid-statement), the operation's
    `applied` is asked first whether the earlier attempt already took effect.
    """
    window = policy.open()
    while True:
        try:
            conn = source.acquire()
            try:
                if window.ambiguous:
                    done = operation.applied(conn)
                    if done is not None:
                        source.release(conn, None)
                        return done
                result = operation.work(conn)
            except BaseException as error:
                source.release(conn, error)
                raise
            source.release(conn, None)
            policy.succeeded()
            return result
        except sa_exc.DBAPIError as error:
            source.pause(window.failed(error))
