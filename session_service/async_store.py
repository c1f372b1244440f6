"""The service's hot path on MySQL/MariaDB: the store's own operations, run in the event loop.

Running the synchronous store in a thread pool costs a thread hand-off and GIL
contention per request, and SQLAlchemy's execution layer costs more Python time
than the protocol itself (measured in bench/store.py). Here the very same
operation functions of SessionStore run unchanged inside a greenlet, and each
`conn.execute(statement, params)` they make is sent on an asyncmy connection with
the statement's SQL compiled once by SQLAlchemy. One set of semantics, two runners.

Statements go to the server as prepared statements (asyncmy's statement cache,
the binary protocol): the server parses each once per connection, not on every
call, and no parameter is escaped into SQL text. On a lock + write cycle this
took about a fifth off the service's CPU and a quarter off MariaDB's (measured
from /proc under bench/store.py's load, see docs/design.md "Hot path"). With
`db_prepared_statements` off (for proxies that do not support them), the text
protocol is used, with bytes as hexadecimal literals (hexliteral.py).

It is used for a single MySQL/MariaDB primary. With read replicas or a Galera node
list, and on SQLite, the service runs the synchronous store in threads instead.

The parts: greenlet_bridge.py (running synchronous code that awaits),
green_connection.py (execute() over an asyncmy connection), connection_pool.py,
and here the executor that ties them to the store's retry loop, and the typed
async facade the HTTP layer calls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

import asyncmy
from asyncmy import converters
from asyncmy import errors as my_errors
from asyncmy.constants import CLIENT
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool

from session_service.connection_pool import ConnectionPool
from session_service.executors import AsyncExecutor, Operation
from session_service.green_connection import GreenConnection, StatementCache
from session_service.greenlet_bridge import await_in_greenlet, run_in_greenlet
from session_service.hexliteral import conversions
from session_service.records import LockAttempt, SessionRecord, WriteResult
from session_service.retry import run_with_retry
from session_service.store import SessionStore

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Prepared statements kept per connection: the store has about twenty statements.
STATEMENT_CACHE_SIZE = 64


class GreenletExecutor:
    """Runs the store's operations on the event loop: the store's own retry loop
    (retry.run_with_retry) in a greenlet, on pooled asyncmy connections."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.retry = store.retry
        settings = store.settings
        url = make_url(settings.db_url)
        self._connect_args: dict[str, Any] = {
            "host": url.host or "127.0.0.1",
            "port": url.port or 3306,
            "user": url.username or "root",
            "password": url.password or "",
            "db": url.database,
            "autocommit": True,
            "charset": "utf8mb4",
            "connect_timeout": settings.db_connect_timeout,
            # the same row-count semantics as SQLAlchemy's PyMySQL dialect: rows matched
            "client_flag": CLIENT.FOUND_ROWS,
            "binary_prefix": True,  # bytes go as _binary'...', never read as utf8mb4 text
            "conv": conversions(converters.conversions),  # ... or as X'...' (HexLiteral)
        }
        self.prepared = settings.db_prepared_statements
        if self.prepared:
            self._connect_args["stmt_cache_size"] = STATEMENT_CACHE_SIZE
        self.statements = StatementCache(store.engine.dialect, self.prepared)
        self.pool = ConnectionPool(
            self._connect,
            self.statements,
            settings.db_pool_size,
            settings.db_pre_ping_idle if settings.db_pre_ping else None,
        )
        self._learnt = asyncio.Lock()

    async def run(self, operation: Operation[T]) -> T:
        return await run_in_greenlet(run_with_retry, self.retry, operation, self)

    async def close(self) -> None:
        await self.pool.close()

    # -- the ConnectionSource of run_with_retry (called inside the greenlet) --------------

    def acquire(self) -> GreenConnection:
        conn = self.pool.take_idle()
        if conn is not None:
            return conn
        try:
            return await_in_greenlet(self._acquire())
        except my_errors.Error as error:
            raise sa_exc.DBAPIError.instance("CONNECT", None, error, my_errors.Error) from error
        except OSError as error:  # a socket error asyncmy did not wrap
            lost = my_errors.OperationalError(2003, str(error))
            raise sa_exc.OperationalError("CONNECT", None, lost) from error

    def release(self, conn: GreenConnection, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, Exception):
            conn.broken = True  # cancelled mid-statement: the protocol state is unknown
        self.pool.release(conn)

    def pause(self, seconds: float) -> None:
        await_in_greenlet(asyncio.sleep(seconds))

    # -- inside ----------------------------------------------------------------------------

    async def _acquire(self) -> GreenConnection:
        if self.statements.dialect.server_version_info is None:
            async with self._learnt:
                if self.statements.dialect.server_version_info is None:
                    await run_in_threadpool(self._learn_server)
        return await self.pool.acquire()

    def _learn_server(self) -> None:
        """Let SQLAlchemy's dialect learn the server (MariaDB or MySQL, which version) from
        one synchronous connection, as the engine does on its first connect: what it
        learns decides the SQL it compiles, e.g. whether INSERT ... RETURNING exists."""
        self.store.engine.connect().close()  # a DBAPIError is retried by run_with_retry

    async def _connect(self) -> Any:
        return await asyncmy.connect(**self._connect_args)


class ThreadExecutor:
    """Runs the synchronous store's operations in worker threads (SQLite, replicas,
    Galera: where the event loop path does not apply)."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def run(self, operation: Operation[T]) -> T:
        return await run_in_threadpool(self.store.executor.run, operation)


class AsyncSessionStore:
    """The store's operations as coroutines: built by SessionStore, run by the greenlet
    executor for a single MySQL primary, else by the synchronous store in threads."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.runner: GreenletExecutor | None = None
        self.executor: AsyncExecutor = ThreadExecutor(store)
        if eligible_for_asyncmy(store):
            self.runner = self.executor = GreenletExecutor(store)
            log.info("MySQL operations run in the event loop (asyncmy)")

    @property
    def in_event_loop(self) -> bool:
        return self.runner is not None

    async def read(self, namespace: str, sid: str) -> SessionRecord | None:
        return await self.executor.run(self.store.read_op(namespace, sid))

    async def exists(self, namespace: str, sid: str) -> bool:
        return await self.executor.run(self.store.exists_op(namespace, sid))

    async def try_lock(self, namespace: str, sid: str, lease_ms: int) -> LockAttempt:
        return await self.executor.run(self.store.try_lock_op(namespace, sid, lease_ms))

    async def write(
        self,
        namespace: str,
        sid: str,
        data: bytes,
        ttl: int,
        *,
        lock: str | None = None,
        if_version: int | None = None,
    ) -> WriteResult:
        operation = self.store.write_op(namespace, sid, data, ttl, lock=lock, if_version=if_version)
        return await self.executor.run(operation)

    async def touch(
        self, namespace: str, sid: str, ttl: int, *, lock: str | None = None
    ) -> WriteResult:
        return await self.executor.run(self.store.touch_op(namespace, sid, ttl, lock=lock))

    async def release(self, namespace: str, sid: str, lock: str) -> None:
        await self.executor.run(self.store.release_op(namespace, sid, lock))

    async def destroy(self, namespace: str, sid: str) -> None:
        await self.executor.run(self.store.destroy_op(namespace, sid))

    def now_ms(self) -> int:
        return self.store.now_ms()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.close()


def eligible_for_asyncmy(store: SessionStore) -> bool:
    """A single MySQL/MariaDB primary, no replicas, and the async path not turned off."""
    settings = store.settings
    if not settings.db_async or store.replicas is not None:
        return False
    if store.engine.dialect.name not in ("mysql", "mariadb"):
        return False
    return "," not in settings.db_url
