"""The event loop's pool of asyncmy connections.

The connection given back last is handed out first (its buffers and the server's
thread are warm), and taking it is plain synchronous code (`take_idle`): no
coroutine, no await, on the hot path. Only a connection due for a ping, a new
connection, or waiting for one when all `size` are in use, awaits (`acquire`).
A caller waits at most POOL_TIMEOUT_SECONDS, then StoreUnavailable, as with
SQLAlchemy's pool. Connections released while callers wait go to them directly,
in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from asyncmy import errors as my_errors

from session_service import metrics
from session_service.errors import StoreUnavailable
from session_service.green_connection import GreenConnection, StatementCache
from session_service.mysql_conventions import (
    POOL_TIMEOUT_SECONDS,
    RECYCLE_SECONDS,
    SESSION_SETUP,
    ping_due,
)

log = logging.getLogger(__name__)


class ConnectionPool:
    """At most `size` connections, made by `connect` (an asyncmy.connect call)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        statements: StatementCache,
        size: int,
        ping_idle: float | None,
        timeout: float = POOL_TIMEOUT_SECONDS,
    ) -> None:
        self._connect = connect
        self._statements = statements
        self._size = size
        self._ping_idle = ping_idle
        self._timeout = timeout
        self._idle: list[GreenConnection] = []
        self._open = 0
        #: callers waiting for a connection: given one, or None when a slot came free
        self._waiters: deque[asyncio.Future[GreenConnection | None]] = deque()

    def take_idle(self) -> GreenConnection | None:
        """The most recently released live connection, or None when there is none, or
        when it is due for a ping (then acquire() pings it)."""
        idle = self._idle
        while idle:
            conn = idle[-1]
            now = time.monotonic()
            if not conn.raw.connected or now - conn.born >= RECYCLE_SECONDS:
                idle.pop()  # closed by the server meanwhile (a restart, wait_timeout)
                self._discard(conn)
                continue
            if ping_due(conn.idle_since, now, self._ping_idle):
                return None
            return idle.pop()
        return None

    async def acquire(self) -> GreenConnection:
        deadline = time.monotonic() + self._timeout
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn
            if self._idle:  # the last one released is due for a ping
                conn = self._idle.pop()
                if await self._answers_ping(conn):
                    return conn
                continue
            if self._open < self._size:
                return await self._new()
            given = await self._wait(deadline)
            if given is not None:
                return given

    def release(self, conn: GreenConnection) -> None:
        if conn.broken:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def close(self) -> None:
        while self._idle:
            self._discard(self._idle.pop())

    # -- inside ------------------------------------------------------------------------

    async def _new(self) -> GreenConnection:
        self._open += 1
        try:
            raw = await self._connect()
            try:
                async with raw.cursor() as cursor:
                    for statement in SESSION_SETUP:
                        await cursor.execute(statement)
            except BaseException:
                raw.close()
                raise
        except BaseException:
            self._open -= 1
            self._slot_free()
            raise
        return GreenConnection(raw, self._statements, time.monotonic())

    async def _wait(self, deadline: float) -> GreenConnection | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            metrics.DB_ERRORS.labels(kind="pool_timeout").inc()
            raise StoreUnavailable("no database connection free in time")
        waiter: asyncio.Future[GreenConnection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter, remaining)
        except TimeoutError:
            metrics.DB_ERRORS.labels(kind="pool_timeout").inc()
            raise StoreUnavailable("no database connection free in time") from None
        except BaseException:  # cancelled: what was given just as it ended goes on
            if waiter.done() and not waiter.cancelled():
                given = waiter.result()
                if given is not None:
                    self.release(given)
                else:
                    self._slot_free()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _answers_ping(self, conn: GreenConnection) -> bool:
        """False (and the connection discarded) if it does not answer a ping: closed
        meanwhile by a restart or wait_timeout."""
        try:
            await conn.raw.ping(reconnect=False)
        except (my_errors.Error, OSError):
            self._discard(conn)
            return False
        return True

    def _discard(self, conn: GreenConnection) -> None:
        try:
            conn.raw.close()
        except Exception as error:  # already gone: nothing more to free
            log.debug("closing a pooled connection: %s", error)
        self._open -= 1
        self._slot_free()

    def _slot_free(self) -> None:
        """A connection fewer: the first waiter may make a new one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
