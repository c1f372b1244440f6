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
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections import namedtuple
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import asyncmy
import greenlet
from asyncmy import converters
from asyncmy import errors as my_errors
from asyncmy.constants import CLIENT
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from session_service.hexliteral import conversions, with_hex_literals
from session_service.store import LockAttempt, SessionRecord, SessionStore, WriteResult

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Prepared statements kept per connection: the store has about twenty statements.
STATEMENT_CACHE_SIZE = 64

#: Pooled connections older than this are closed and replaced (asyncmy's pool_recycle).
_RECYCLE_SECONDS = 3600

#: Connection errors after which a connection is not given back to the pool.
_BROKEN = {2006, 2013, 2014, 2055, 1053, 1927, 4031}


# -- running synchronous code that awaits, through a greenlet --------------------------


def await_in_greenlet(awaitable: Awaitable[T]) -> T:
    """From synchronous code running under run_in_greenlet: wait for `awaitable`."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Worker):
        raise RuntimeError("await_in_greenlet called outside run_in_greenlet")
    return cast(T, current.parent.switch(awaitable))


class _Done:
    """What a worker greenlet hands back when its call has finished."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any, error: BaseException | None) -> None:
        self.value = value
        self.error = error


class _Worker(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet that runs one call after another. Reused, because each new greenlet
    costs Python a fresh frame stack: an mmap and an munmap per call (seen with strace)."""

    def __init__(self) -> None:
        super().__init__(self._serve)

    def _serve(self, job: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
        while True:
            function, args = job
            try:
                done = _Done(function(*args), None)
            except BaseException as error:  # handed to the awaiting task
                done = _Done(None, error)
            del function, args
            job = self.parent.switch(done)


class _IdleWorkers(threading.local):
    """Idle workers of this thread (a greenlet can only run in the thread that made it)."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []


_idle = _IdleWorkers()


async def run_in_greenlet(function: Callable[..., T], *args: Any) -> T:
    """Call a synchronous `function`; each await_in_greenlet inside it is awaited here."""
    idle = _idle.workers
    worker = idle.pop() if idle else _Worker()
    request = worker.switch((function, args))
    while not isinstance(request, _Done):
        try:
            value = await request
        except BaseException as error:  # hand it to the code that awaited
            request = worker.throw(error)
        else:
            request = worker.switch(value)
    if not worker.dead:
        idle.append(worker)
    if request.error is not None:
        raise request.error
    return cast(T, request.value)


# -- a Connection look-alike over asyncmy ----------------------------------------------


def positional_dialect(dialect: Any) -> Any:
    """The engine's dialect, as it knows the server, but compiling `%s` placeholders:
    asyncmy prepares a statement only when its parameters are positional."""
    positional = copy.copy(dialect)
    positional.paramstyle = "format"
    positional.positional = True
    return positional


class _Compiled:
    """One statement's SQL for the driver, compiled once, and its column names."""

    def __init__(self, statement: Any, dialect: Any) -> None:
        self.compiled = statement.compile(dialect=dialect)
        self.sql = str(self.compiled)
        self.positional: Sequence[str] | None = self.compiled.positiontup
        #: values of literals SQLAlchemy made into binds (e.g. the 0 in version > 0)
        self.defaults: dict[str, Any] = dict(self.compiled.params)
        #: the parameters the SQL uses: the store's dicts carry more, and the driver
        #: escapes every value it is given
        self.names = tuple(dict.fromkeys(self.compiled.bind_names.values()))
        #: the namedtuple of its result rows, made from the first result's columns
        self.row_type: Any = None

    def arguments(self, params: dict[str, Any]) -> Any:
        defaults = self.defaults
        if self.positional is None:
            return {name: params[name] if name in params else defaults[name] for name in self.names}
        return tuple(
            [params[name] if name in params else defaults[name] for name in self.positional]
        )


class Outcome:
    """The parts of a SQLAlchemy CursorResult that the store's operations use."""

    def __init__(self, rows: list[Any], rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise sa_exc.NoResultFound("expected exactly one row")
        return self._rows[0]

    def all(self) -> list[Any]:
        return self._rows

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


class GreenConnection:
    """What the store's operations see as `conn`: execute() on an asyncmy connection."""

    def __init__(self, raw: Any, runner: AsyncMySQLRunner) -> None:
        self.raw = raw
        self.runner = runner
        #: what the store asks about the server (insert_returning picks the lock statement)
        self.dialect = runner.dialect

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> Outcome:
        runner = self.runner
        compiled = runner.compiled(statement)
        args = compiled.arguments(params or {})
        try:
            return await_in_greenlet(
                self._execute(compiled, args if runner.prepared else with_hex_literals(args))
            )
        except my_errors.Error as error:
            code = error.args[0] if error.args and isinstance(error.args[0], int) else None
            self.runner.mark_broken(self.raw, code)
            raise sa_exc.DBAPIError.instance(compiled.sql, args, error, my_errors.Error) from error

    async def _execute(self, compiled: _Compiled, args: Any) -> Outcome:
        # One cursor per connection, reused: a buffered cursor keeps nothing between
        # statements that the next execute() does not reset.
        raw = self.raw
        cursor = getattr(raw, "_session_service_cursor", None)
        if cursor is None:
            cursor = raw._session_service_cursor = raw.cursor()
        await cursor.execute(compiled.sql, args)
        rows: list[Any] = []
        if cursor.description:
            row_type = compiled.row_type
            if row_type is None:
                row_type = compiled.row_type = self.runner.row_type(
                    tuple(d[0] for d in cursor.description)
                )
            rows = [row_type(*row) for row in await cursor.fetchall()]
        return Outcome(rows, cursor.rowcount, cursor.lastrowid)


# -- the runner --------------------------------------------------------------------------


class AsyncMySQLRunner:
    """Runs SessionStore operations on a pool of asyncmy connections, with the store's
    own retry policy (RetryPolicy) and ambiguity check."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.dialect = store.engine.dialect
        self._compiled: dict[int, _Compiled] = {}
        self._compile_with: Any = None
        self._row_types: dict[tuple[str, ...], Any] = {}
        self._pool: Any = None
        #: connections back from a call, the last one on top (see _acquire)
        self._idle: list[Any] = []
        #: calls waiting in asyncmy's pool for a connection (then _release gives it there)
        self._waiting = 0
        self._pool_lock = asyncio.Lock()
        url = make_url(store.settings.db_url)
        settings = store.settings
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
            "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        }
        #: server-side prepared statements (binary protocol), else the text protocol
        self.prepared = settings.db_prepared_statements
        if self.prepared:
            self._connect_args["stmt_cache_size"] = STATEMENT_CACHE_SIZE
        self._pool_size = settings.db_pool_size
        self._ping_idle = settings.db_pre_ping_idle if settings.db_pre_ping else None

    def compiled(self, statement: Any) -> _Compiled:
        found = self._compiled.get(id(statement))
        if found is None:
            if self._compile_with is None:  # after _learn_server: the SQL depends on it
                self._compile_with = (
                    positional_dialect(self.dialect) if self.prepared else self.dialect
                )
            found = self._compiled[id(statement)] = _Compiled(statement, self._compile_with)
        return found

    def row_type(self, names: tuple[str, ...]) -> Any:
        found = self._row_types.get(names)
        if found is None:
            found = self._row_types[names] = namedtuple("Row", names, rename=True)
        return found

    def mark_broken(self, raw: Any, code: int | None) -> None:
        if code in _BROKEN or code is None:
            raw._session_service_broken = True

    async def _acquire(self) -> Any:
        # The connection given back last comes first (its buffers and the server's
        # thread are warm), without a trip through asyncmy's pool.
        idle = self._idle
        while idle:
            raw = idle.pop()
            now = time.monotonic()
            # closed by the server meanwhile (a restart, wait_timeout), as asyncmy's
            # pool checks too, or due for recycling
            if (
                not raw.connected
                or getattr(raw, "_stream_broken", False)
                or now - raw._session_service_born >= _RECYCLE_SECONDS
            ):
                self._discard(raw)
                continue
            if not self._due_ping(raw, now) or await self._answers_ping(raw):
                return raw
        if self._pool is None:
            async with self._pool_lock:
                if self.dialect.server_version_info is None:
                    await self._learn_server()
                if self._pool is None:
                    self._pool = await asyncmy.create_pool(
                        minsize=0,
                        maxsize=self._pool_size,
                        pool_recycle=_RECYCLE_SECONDS,
                        **self._connect_args,
                    )
        for _ in range(self._pool_size + 1):  # at most every pooled connection is stale
            self._waiting += 1
            try:
                raw = await self._pool.acquire()
            finally:
                self._waiting -= 1
            if self._due_ping(raw, time.monotonic()) and not await self._answers_ping(raw):
                continue
            if not getattr(raw, "_session_service_ready", False):
                async with raw.cursor() as cursor:
                    await cursor.execute("SET SESSION innodb_lock_wait_timeout = 5")
                raw._session_service_ready = True
                raw._session_service_born = time.monotonic()
                raw._session_service_green = GreenConnection(raw, self)
            return raw
        raise my_errors.OperationalError(2013, "no live connection in the pool")

    def _due_ping(self, raw: Any, now: float) -> bool:
        """Whether a pooled connection was idle for db_pre_ping_idle (checked without
        a coroutine: this runs before every statement)."""
        idle_since = getattr(raw, "_session_service_idle_since", None)
        return (
            self._ping_idle is not None
            and idle_since is not None
            and now - idle_since >= self._ping_idle
        )

    async def _answers_ping(self, raw: Any) -> bool:
        """False (and the connection discarded) if it does not answer a ping: closed
        meanwhile by a restart or wait_timeout."""
        try:
            await raw.ping(reconnect=False)
        except (my_errors.Error, OSError):
            self._discard(raw)
            return False
        return True

    async def _learn_server(self) -> None:
        """Let SQLAlchemy's dialect learn the server (MariaDB or MySQL, which version) from
        one synchronous connection, as the engine does on its first connect: what it
        learns decides the SQL it compiles, e.g. whether INSERT ... RETURNING exists."""
        from starlette.concurrency import run_in_threadpool

        def connect_once() -> None:
            self.store.engine.connect().close()

        await run_in_threadpool(connect_once)  # a DBAPIError is retried by run()

    def _release(self, raw: Any) -> None:
        if getattr(raw, "_session_service_broken", False):
            self._discard(raw)
        elif self._waiting:  # someone waits in the pool for a connection: this one
            raw._session_service_idle_since = time.monotonic()
            self._pool.release(raw)
        else:
            raw._session_service_idle_since = time.monotonic()
            self._idle.append(raw)

    def _discard(self, raw: Any) -> None:
        raw.close()
        self._pool.release(raw)  # not a coroutine in asyncmy; a closed one is dropped

    async def run(
        self,
        operation: Callable[[Any], T],
        applied: Callable[[Any], T | None] | None = None,
        *,
        writes: bool = True,
    ) -> T:
        window = self.store.retry.open()
        while True:
            try:
                try:
                    raw = await self._acquire()
                except my_errors.Error as error:
                    raise sa_exc.DBAPIError.instance(
                        "CONNECT", None, error, my_errors.Error
                    ) from error
                try:
                    conn = raw._session_service_green
                    if window.ambiguous and applied is not None:
                        done = await run_in_greenlet(applied, conn)
                        if done is not None:
                            return done
                    result = await run_in_greenlet(operation, conn)
                    self.store.retry.succeeded()
                    return result
                finally:
                    self._release(raw)
            except sa_exc.DBAPIError as error:
                await asyncio.sleep(window.failed(error))
            except OSError as error:  # a socket error asyncmy did not wrap
                await asyncio.sleep(
                    window.failed(
                        sa_exc.OperationalError(
                            "CONNECT", None, my_errors.OperationalError(2013, str(error))
                        )
                    )
                )

    async def close(self) -> None:
        if self._pool is not None:
            while self._idle:
                self._pool.release(self._idle.pop())
            self._pool.close()
            await self._pool.wait_closed()


# -- what the HTTP layer calls --------------------------------------------------------------


class AsyncSessionStore:
    """The store's operations as coroutines: on asyncmy in the event loop for a single
    MySQL primary (AsyncMySQLRunner), else the synchronous store in worker threads."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.runner: AsyncMySQLRunner | None = None
        if eligible_for_asyncmy(store):
            self.runner = AsyncMySQLRunner(store)
            # A second SessionStore whose operations are run by the async runner: the
            # same code builds the statements and decides, only the I/O differs.
            self._ops = SessionStore(store.settings, engine=store.engine, clock=store._clock)
            self._ops.retry = store.retry
            self._ops._run = self.runner.run  # type: ignore[method-assign,assignment]
            log.info("MySQL operations run in the event loop (asyncmy)")

    @property
    def in_event_loop(self) -> bool:
        return self.runner is not None

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.runner is None:
            from starlette.concurrency import run_in_threadpool

            method = getattr(self.store, name)
            return await run_in_threadpool(lambda: method(*args, **kwargs))
        return await getattr(self._ops, name)(*args, **kwargs)

    async def read(self, namespace: str, sid: str) -> SessionRecord | None:
        record: SessionRecord | None = await self._call("read", namespace, sid)
        return record

    async def exists(self, namespace: str, sid: str) -> bool:
        found: bool = await self._call("exists", namespace, sid)
        return found

    async def try_lock(self, namespace: str, sid: str, lease_ms: int) -> LockAttempt:
        attempt: LockAttempt = await self._call("try_lock", namespace, sid, lease_ms)
        return attempt

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
        result: WriteResult = await self._call(
            "write", namespace, sid, data, ttl, lock=lock, if_version=if_version
        )
        return result

    async def touch(
        self, namespace: str, sid: str, ttl: int, *, lock: str | None = None
    ) -> WriteResult:
        result: WriteResult = await self._call("touch", namespace, sid, ttl, lock=lock)
        return result

    async def release(self, namespace: str, sid: str, lock: str) -> None:
        await self._call("release", namespace, sid, lock)

    async def destroy(self, namespace: str, sid: str) -> None:
        await self._call("destroy", namespace, sid)

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
