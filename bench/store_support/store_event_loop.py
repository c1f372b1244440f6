"""Variants (e) and (f) of bench/store.py: the store's operations on one event loop.

(e) runs them on the service's own greenlet executor over asyncmy (AsyncSessionStore),
(f) on SQLAlchemy's asyncio extension (create_async_engine, AsyncConnection.run_sync), so
that the two executors are compared on the same operations, without HTTP. Kept apart from
the threaded variants because their loop (run_tasks) is a different one: tasks, not threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from store_harness import TTL, Result, incremented, sessions_for

from session_service.settings import Settings
from session_service.store import SessionStore


def run_tasks(
    name: str,
    concurrency: int,
    duration: float,
    setup: Callable[[], Any],
) -> Result:
    """`concurrency` tasks on one event loop, each cycling over its own sessions.
    `setup()` (called in the loop) returns (cycle, close): cycle(sid) is a coroutine."""

    async def main() -> Result:
        cycle, close = setup()
        latencies: list[list[float]] = [[] for _ in range(concurrency)]
        started = asyncio.Event()
        stop = asyncio.Event()
        primed = [0]

        async def worker(index: int) -> None:
            sids = sessions_for(index)
            for sid in sids:  # prime: every session exists before timing
                await cycle(sid)
            primed[0] += 1
            if primed[0] == concurrency:
                started.set()
            await started.wait()
            sink, turn = latencies[index], 0
            while not stop.is_set():
                began = time.perf_counter()
                await cycle(sids[turn % len(sids)])
                sink.append(time.perf_counter() - began)
                turn += 1

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await started.wait()
        began = time.perf_counter()
        await asyncio.sleep(duration)
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
        await close()
        flat = [x for sink in latencies for x in sink]
        return Result(name, concurrency, len(flat), elapsed, flat)

    return asyncio.run(main())


def greenlet_executor(settings: Settings) -> Callable[[], Any]:
    """(e) the service's own path: AsyncSessionStore, the greenlet executor on asyncmy."""
    from session_service.async_store import AsyncSessionStore

    def setup() -> Any:
        store = SessionStore(settings)
        sessions = AsyncSessionStore(store)
        assert sessions.in_event_loop

        async def cycle(sid: str) -> None:
            attempt = await sessions.try_lock("bench", sid, 30_000)
            assert attempt.record is not None, "bench sessions are never contended"
            data = incremented(attempt.record.data)
            await sessions.write("bench", sid, data, TTL, lock=attempt.record.lock)

        async def close() -> None:
            await sessions.close()
            store.close()

        return cycle, close

    return setup


def sqlalchemy_run_sync(settings: Settings) -> Callable[[], Any]:
    """(f) the same operations, run by SQLAlchemy's asyncio extension instead:
    create_async_engine on asyncmy and AsyncConnection.run_sync(operation)."""
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    from session_service.mysql_conventions import SESSION_SETUP

    url = settings.db_url.replace("mysql+pymysql://", "mysql+asyncmy://")

    def setup() -> Any:
        store = SessionStore(settings)  # builds the operations; its engine is not used
        engine = create_async_engine(
            url,
            isolation_level="AUTOCOMMIT",
            pool_size=settings.db_pool_size,
            pool_reset_on_return=None,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _session_setup(dbapi_conn: Any, _record: object) -> None:
            cur = dbapi_conn.cursor()
            for statement in SESSION_SETUP:
                cur.execute(statement)
            cur.close()

        async def run(operation: Any) -> Any:
            async with engine.connect() as conn:
                return await conn.run_sync(operation.work)

        async def cycle(sid: str) -> None:
            attempt = await run(store.try_lock_op("bench", sid, 30_000))
            assert attempt.record is not None, "bench sessions are never contended"
            data = incremented(attempt.record.data)
            await run(store.write_op("bench", sid, data, TTL, lock=attempt.record.lock))

        async def close() -> None:
            await engine.dispose()
            store.close()

        return cycle, close

    return setup
