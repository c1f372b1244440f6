"""What every connection to MySQL/MariaDB gets, and how its errors are read: one module
for both executors (the SQLAlchemy engine's PyMySQL connections and the event loop's
asyncmy ones), so that the two cannot drift apart."""

from __future__ import annotations

#: Run on every new connection. READ COMMITTED: no gap locks. Short InnoDB row-lock
#: waits: our statements touch one row each, so a long wait means trouble, and a
#: retry beats a stuck worker.
SESSION_SETUP = (
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION innodb_lock_wait_timeout = 5",
)

#: Pooled connections older than this are closed and replaced.
RECYCLE_SECONDS = 3600

#: Seconds a caller waits for a free pooled connection before StoreUnavailable.
POOL_TIMEOUT_SECONDS = 10

#: The statement was rolled back or never sent: simply retried.
ROLLED_BACK = frozenset(
    {
        1205,  # lock wait timeout
        1213,  # deadlock (also Galera certification failure)
        1047,  # WSREP has not yet prepared node for application use
        2003,  # can't connect
        1040,  # too many connections
        1129,  # host blocked
    }
)

#: The connection is gone: it is never given back to a pool, and a statement sent on
#: it may or may not have been applied.
CONNECTION_LOST = frozenset(
    {
        2006,  # server has gone away
        2013,  # lost connection during query
        2014,  # commands out of sync
        2055,  # lost connection (SSL/socket error)
        1053,  # server shutdown in progress
        1927,  # connection was killed
        4031,  # disconnected by the server because of inactivity
    }
)

#: The statement may have been applied: retried only after asking whether it was.
AMBIGUOUS = CONNECTION_LOST | {1317}  # 1317: query execution was interrupted


def mysql_code(error: BaseException | None) -> int | None:
    """The server's (or the driver's) numeric error code, as both drivers put it in args[0]."""
    args = getattr(error, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def ping_due(idle_since: float | None, now: float, ping_idle: float | None) -> bool:
    """Whether a pooled connection sat idle long enough that a server restart or
    wait_timeout may have closed it: then it is pinged before use (db_pre_ping_idle).
    A connection used a moment ago is alive, and the retry covers the rare one that
    dies in between (docs/design.md, Failures)."""
    return ping_idle is not None and idle_since is not None and now - idle_since >= ping_idle
