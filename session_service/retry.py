"""Which database errors are transient, and whether a failed statement may have been applied.

A deadlock or lock-wait timeout rolls the statement back, and a refused connection
never sent it: those are simply retried. A connection lost mid-statement is
ambiguous (the server may have committed before the socket died), so mutating
operations first check whether their write id landed before trying again; that is
how a write is never applied twice.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

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
