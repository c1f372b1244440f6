"""The service's event-loop path on the real MariaDB: AsyncSessionStore over asyncmy,
with server-side prepared statements (the default), and on the text protocol with
bytes sent as hexadecimal literals up to HEX_LIMIT and escaped beyond it."""

from __future__ import annotations

import asyncio
import os

import pytest

from session_service import metrics
from session_service.async_store import AsyncSessionStore
from session_service.hexliteral import HEX_LIMIT
from session_service.ids import hash_session_id
from session_service.settings import Settings
from session_service.store import SessionStore
from tests.support import session_id

SIZES = [0, 1, 256, 64 * 1024, HEX_LIMIT, HEX_LIMIT + 1]


def _payload(size: int) -> bytes:
    every_byte = bytes(range(256))  # quotes, backslashes, NUL, 0x1a, high bytes
    return (every_byte * (size // 256 + 1))[: size // 2] + os.urandom(size - size // 2)


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "text"])
@pytest.mark.parametrize("size", SIZES)
def test_data_round_trips_exactly_through_lock_write_and_read(
    mariadb_url: str, size: int, prepared: bool
) -> None:
    store = SessionStore(
        Settings(
            db_url=mariadb_url, max_data_bytes=8 * 1024 * 1024, db_prepared_statements=prepared
        )
    )
    sessions = AsyncSessionStore(store)
    assert sessions.in_event_loop, "a single MariaDB primary runs on the event loop"
    assert sessions.runner is not None and sessions.runner.prepared is prepared
    sid, data = session_id(), _payload(size)

    async def main() -> None:
        try:
            first = await sessions.try_lock("default", sid, 5000)
            assert first.record is not None and first.record.new
            await sessions.write("default", sid, data, 600, lock=first.record.lock)
            read = await sessions.read("default", sid)
            assert read is not None and read.data == data
            again = await sessions.try_lock("default", sid, 5000)
            assert again.record is not None and again.record.data == data
            written = await sessions.write("default", sid, data[::-1], 600, lock=again.record.lock)
            assert written.version == 2
            assert (await sessions.read("default", sid)).data == data[::-1]  # type: ignore[union-attr]
        finally:
            await sessions.close()
            store.close()

    asyncio.run(main())


def test_statements_are_prepared_once_per_connection(mariadb_url: str) -> None:
    """The server sees each statement prepared once, then executed: no re-parsing."""
    import pymysql

    store = SessionStore(Settings(db_url=mariadb_url, db_pool_size=1))
    sessions = AsyncSessionStore(store)
    admin = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)

    def counters() -> dict[str, int]:
        with admin.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Com_stmt_%'")
            return {name: int(value) for name, value in cur.fetchall()}

    async def cycles(count: int) -> None:
        for _ in range(count):
            sid = session_id()
            attempt = await sessions.try_lock("default", sid, 5000)
            assert attempt.record is not None
            await sessions.write("default", sid, b"x", 600, lock=attempt.record.lock)

    async def main() -> tuple[dict[str, int], dict[str, int]]:
        try:
            await cycles(2)  # the pool's one connection prepares what a cycle runs
            before = counters()
            await cycles(20)
            return before, counters()
        finally:
            await sessions.close()
            store.close()
            admin.close()

    before, after = asyncio.run(main())
    executed = after["Com_stmt_execute"] - before["Com_stmt_execute"]
    assert executed >= 40, "each lock and each write runs as a prepared statement"
    # other clients of this server (tests running beside) may prepare their own
    assert after["Com_stmt_prepare"] - before["Com_stmt_prepare"] < executed // 4


def test_more_callers_than_pooled_connections_all_get_one(mariadb_url: str) -> None:
    """Connections come back to a LIFO list; a caller that waits for one must still
    get the next one given back (no one waits for ever)."""
    store = SessionStore(Settings(db_url=mariadb_url, db_pool_size=2))
    sessions = AsyncSessionStore(store)

    async def cycle(sid: str) -> int:
        attempt = await sessions.try_lock("default", sid, 5000)
        assert attempt.record is not None
        written = await sessions.write("default", sid, b"x", 600, lock=attempt.record.lock)
        return written.version

    async def main() -> list[int]:
        try:
            calls = [cycle(session_id()) for _ in range(40)]
            return await asyncio.wait_for(asyncio.gather(*calls), 60)
        finally:
            await sessions.close()
            store.close()

    assert asyncio.run(main()) == [1] * 40


def _innodb_deadlocks(store: SessionStore) -> int:
    with store.engine.connect() as conn:
        row = conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'").one()
    return int(row[1])


def _deadlock_retries() -> float:
    return metrics.DB_ERRORS.labels(kind="mysql_1213")._value.get()  # type: ignore[no-any-return]


def test_racing_for_new_sessions_never_deadlocks(mariadb_url: str) -> None:
    """design.md ("Concurrency without blocking"): the lock is one autocommit upsert
    that touches only the session's own row, so callers racing to create and lock the
    same new sessions queue on the row and never deadlock. 20 new sessions, 30 racers
    on each, all at once over 16 connections: every increment lands, and InnoDB
    reports no deadlock (none hidden by the store's retries either)."""
    store = SessionStore(Settings(db_url=mariadb_url, db_pool_size=16))
    sessions = AsyncSessionStore(store)
    sids = [session_id() for _ in range(20)]
    racers = 30

    async def increment(sid: str) -> None:
        while True:
            attempt = await sessions.try_lock("default", sid, 10_000)
            if attempt.record is not None:
                count = int(attempt.record.data or b"0")
                lock = attempt.record.lock
                await sessions.write("default", sid, b"%d" % (count + 1), 600, lock=lock)
                return
            await asyncio.sleep(0.002)

    async def main() -> list[int]:
        try:
            calls = [increment(sid) for _ in range(racers) for sid in sids]
            await asyncio.wait_for(asyncio.gather(*calls), 120)
            return [int((await sessions.read("default", sid)).data) for sid in sids]  # type: ignore[union-attr]
        finally:
            await sessions.close()

    deadlocks, retries = _innodb_deadlocks(store), _deadlock_retries()
    try:
        assert asyncio.run(main()) == [racers] * len(sids)
        assert _deadlock_retries() == retries
        assert _innodb_deadlocks(store) == deadlocks
    finally:
        store.close()


def test_a_connection_killed_while_idle_is_replaced_transparently(mariadb_url: str) -> None:
    """The server closes a pooled connection (KILL, as wait_timeout or a restart would):
    the next operation retries on a new connection, and nothing is stamped on the
    driver's connection object (the pool's own wrapper holds what it knows)."""
    import pymysql

    store = SessionStore(Settings(db_url=mariadb_url, db_pool_size=1, db_pre_ping=False))
    sessions = AsyncSessionStore(store)
    assert sessions.runner is not None
    pool = sessions.runner.pool
    admin = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    sid = session_id()

    async def main() -> bytes:
        try:
            await sessions.write("default", sid, b"before", 600)
            (conn,) = pool._idle
            assert not [n for n in getattr(conn.raw, "__dict__", {}) if "session_service" in n]
            with admin.cursor() as cur:
                cur.execute(f"KILL {conn.raw.thread_id()}")
            await sessions.write("default", sid, b"after", 600)
            assert pool._idle and pool._idle[0] is not conn, "the killed one was discarded"
            return (await sessions.read("default", sid)).data  # type: ignore[union-attr]
        finally:
            await sessions.close()
            store.close()
            admin.close()

    assert asyncio.run(main()) == b"after"


def test_a_caller_cancelled_mid_statement_does_not_return_its_connection(
    mariadb_url: str,
) -> None:
    """A task cancelled while its statement is on the wire (a client that went away)
    leaves that connection in an unknown state: it is closed, never handed to the
    next caller, and the pool's slot is free again."""
    store = SessionStore(Settings(db_url=mariadb_url, db_pool_size=1))
    sessions = AsyncSessionStore(store)
    assert sessions.runner is not None
    pool = sessions.runner.pool
    holder, sid = session_id(), session_id()

    async def main() -> bytes:
        try:
            await sessions.write("default", holder, b"v1", 600)
            # hold the row lock in another connection so the write below waits on it
            with store.engine.connect() as blocker:
                blocker.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 50")
                blocker.exec_driver_sql("BEGIN")
                blocker.exec_driver_sql(
                    "SELECT 1 FROM sessions WHERE id_hash = %s FOR UPDATE",
                    (hash_session_id(holder),),
                )
                task = asyncio.create_task(sessions.write("default", holder, b"x", 600))
                await asyncio.sleep(0.5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                blocker.exec_driver_sql("ROLLBACK")
            assert pool._open == 0 and not pool._idle, "the cancelled call's connection is gone"
            await asyncio.wait_for(sessions.write("default", sid, b"next", 600), 30)
            return (await sessions.read("default", sid)).data  # type: ignore[union-attr]
        finally:
            await sessions.close()
            store.close()

    assert asyncio.run(main()) == b"next"


def test_waiting_for_a_connection_ends_with_store_unavailable(mariadb_url: str) -> None:
    """All pooled connections busy for longer than the pool timeout: StoreUnavailable
    (503), as SQLAlchemy's pool answers, and the pool works again afterwards."""
    from session_service.errors import StoreUnavailable

    store = SessionStore(Settings(db_url=mariadb_url, db_pool_size=1))
    sessions = AsyncSessionStore(store)
    assert sessions.runner is not None
    runner = sessions.runner

    async def main() -> None:
        try:
            await sessions.exists("default", session_id())  # the one connection exists
            pool = runner.pool
            pool._timeout = 0.3
            busy = await pool.acquire()
            with pytest.raises(StoreUnavailable, match="no database connection free in time"):
                await sessions.exists("default", session_id())
            pool.release(busy)
            assert await sessions.exists("default", session_id()) is False
        finally:
            await sessions.close()
            store.close()

    asyncio.run(main())
