"""Variants (b), (c) and (d) of bench/store.py: threads against MariaDB, one connection each.

(b) the SessionStore library in-process, (c) raw PyMySQL sending the store's own SQL and
(d) raw PyMySQL doing the classic PHP PDO handler transaction. Kept together because they
share one loop (run_threads: every worker primes its sessions, then all start at once);
each variant is a factory of per-worker cycles.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pymysql
from store_harness import SESSIONS_PER_WORKER, TTL, Result, incremented, sessions_for

from session_service.store import SessionStore


def run_threads(
    name: str, concurrency: int, duration: float, make_cycle: Callable[[int], Callable[[], None]]
) -> Result:
    cycles_per_worker = [make_cycle(i) for i in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start_barrier = threading.Barrier(concurrency + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        cycle, sink = cycles_per_worker[index], latencies[index]
        for _ in range(SESSIONS_PER_WORKER):  # prime: every session exists before timing
            cycle()
        start_barrier.wait()
        while not stop.is_set():
            began = time.perf_counter()
            cycle()
            sink.append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start_barrier.wait()
    began = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [x for sink in latencies for x in sink]
    return Result(name, concurrency, len(flat), elapsed, flat)


# -- (b) the store library -------------------------------------------------------------


def store_cycle(store: SessionStore) -> Callable[[int], Callable[[], None]]:
    def make(worker: int) -> Callable[[], None]:
        sids = sessions_for(worker)
        state = [0]

        def cycle() -> None:
            sid = sids[state[0] % len(sids)]
            state[0] += 1
            record = store.lock("bench", sid, wait_ms=10_000, lease_ms=30_000)
            store.write("bench", sid, incremented(record.data), TTL, lock=record.lock)

        return cycle

    return make


# -- (c) raw PyMySQL, the store's statements ---------------------------------------------


def connect(database: str, autocommit: bool) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", user="root", database=database, autocommit=autocommit)


def raw_same_cycle(database: str, store: SessionStore) -> Callable[[int], Callable[[], None]]:
    """The store's own SQL (compiled once by SQLAlchemy for this server), sent with a
    plain PyMySQL cursor: what the store costs without SQLAlchemy's execution layer."""
    import hashlib

    from session_service.green_connection import Compiled as _Compiled

    with store.engine.connect():  # the dialect learns the server (INSERT ... RETURNING?)
        pass
    dialect = store.engine.dialect
    upsert = dialect.insert_returning
    lock_upsert = _Compiled(store.sql.lock_upsert, dialect) if upsert else None
    lock_read = _Compiled(store.sql.lock_read, dialect)
    lock_insert = _Compiled(store.sql.lock_insert, dialect)
    lock_take = _Compiled(store.sql.lock_take, dialect)
    write = _Compiled(store.sql.write_fenced, dialect)

    def make(worker: int) -> Callable[[], None]:
        conn = connect(database, autocommit=True)
        conn.cursor().execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        hashes = [hashlib.sha256(s.encode()).digest() for s in sessions_for(worker)]
        state = [0]

        def lock(cur: Any, p: dict[str, Any]) -> bytes:
            if lock_upsert is not None:
                cur.execute(lock_upsert.sql, lock_upsert.arguments(p))
                row = cur.fetchone()
                assert row[0] == p["token"], "bench sessions are never contended"
                return bytes(row[4]) if row[2] else b""
            cur.execute(lock_read.sql, lock_read.arguments(p))
            row = cur.fetchone()
            if row is None:
                cur.execute(lock_insert.sql, lock_insert.arguments(p))
                return b""
            p.update(seen_version=row[2], seen_wid=row[4])
            cur.execute(lock_take.sql, lock_take.arguments(p))
            assert cur.rowcount == 1
            return bytes(row[5]) if row[2] else b""

        def cycle() -> None:
            h = hashes[state[0] % len(hashes)]
            state[0] += 1
            now = int(time.time() * 1000)
            p: dict[str, Any] = {"ns": "raw", "h": h, "now": now, "token": os.urandom(16)}
            p.update(lease_end=now + 30_000, expires=now + 30_000, payload=b"", new_version=0)
            p["wid"] = None
            with conn.cursor() as cur:
                data = incremented(lock(cur, p))
                p.update(held=p["token"], payload=data, expires=now + TTL * 1000)
                p.update(wid=os.urandom(16), token=None, lease_end=None)
                cur.execute(write.sql, write.arguments(p))
                assert cur.rowcount == 1

        return cycle

    return make


# -- (d) the classic PDO handler transaction ------------------------------------------------


def classic_cycle(database: str) -> Callable[[int], Callable[[], None]]:
    def make(worker: int) -> Callable[[], None]:
        conn = connect(database, autocommit=False)
        sids = sessions_for(worker)
        state = [0]

        def cycle() -> None:
            sid = sids[state[0] % len(sids)]
            state[0] += 1
            now = int(time.time())
            for _ in range(10):  # a deadlock between first inserts is retried, as PDO apps must
                try:
                    classic_transaction(conn, sid, now)
                    return
                except pymysql.err.OperationalError as error:
                    conn.rollback()
                    if error.args[0] != 1213:
                        raise

        return cycle

    return make


def classic_transaction(conn: pymysql.Connection, sid: str, now: int) -> None:
    """What a PDO handler with transactional locking does per request."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT sess_data FROM php_sessions WHERE sess_id = %s FOR UPDATE", (sid,))
        row = cur.fetchone()
        if row is None:
            cur.execute(
                "INSERT INTO php_sessions (sess_id, sess_data, sess_lifetime, sess_time) "
                "VALUES (%s, %s, %s, %s)",
                (sid, incremented(None), TTL, now),
            )
        else:
            cur.execute(
                "UPDATE php_sessions SET sess_data = %s, sess_lifetime = %s, sess_time = %s "
                "WHERE sess_id = %s",
                (incremented(row[0]), TTL, now, sid),
            )
    conn.commit()
