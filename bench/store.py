#!/usr/bin/env python3
"""Lock+write cycles per second on MariaDB, four ways (six with --only), in one run.

(a) the HTTP service (real uvicorn processes, a lean asyncio HTTP/1.1 client so the
    client is not what is measured; PHP's curl client is C, too)
(b) the SessionStore library in-process (threads)
(c) raw PyMySQL issuing the same SQL statements as the store (threads)
(d) raw PyMySQL doing the classic PHP PDO handler transaction:
    BEGIN; SELECT ... FOR UPDATE; UPDATE (or INSERT); COMMIT   (threads)
(e) the store's operations on one event loop, run by the service's own greenlet
    executor over asyncmy (async_store.py), without HTTP
(f) the same operations run by SQLAlchemy's asyncio extension instead
    (create_async_engine on asyncmy, AsyncConnection.run_sync), without HTTP

Each worker cycles over its own 50 sessions, all created in a priming pass before
timing starts, so this measures steady throughput, not contention on one row nor
the first inserts. The four variants alternate --rounds times per concurrency
level; each printed cell is the variant's median round, with its ratio to (d)
in that round, so that drift on a shared machine hits all four alike.

(Over 450 lines on purpose: one script, so that every variant shares one harness
and one database and they alternate within one run.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import msgpack
import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from session_service.schema import migrate  # noqa: E402
from session_service.settings import Settings  # noqa: E402
from session_service.store import SessionStore  # noqa: E402
from stack.processes import Process, ProcessError, free_port  # noqa: E402

PAYLOAD = secrets.token_bytes(190)


def incremented(data: bytes | None) -> bytes:
    """The read-modify-write every variant does: a 10-digit counter + 190 bytes.

    The data must change on every cycle, as a real session's does: InnoDB skips
    the write (and the log flush at commit) for an UPDATE that changes nothing,
    which would make a baseline look faster than any real handler can be.
    """
    count = int(data[:10]) if data and data[:10].isdigit() else 0
    return b"%010d" % (count + 1) + PAYLOAD


TTL = 1440


@dataclass
class Result:
    name: str
    concurrency: int
    cycles: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.cycles / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


SESSIONS_PER_WORKER = 50


def sessions_for(worker: int, count: int = SESSIONS_PER_WORKER) -> list[str]:
    return [f"{uuid.uuid4().hex}w{worker}" for _ in range(count)]


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


# -- (e), (f) the store's operations on the event loop, two executors ----------------------


AsyncCycle = Callable[[str], Any]


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


# -- (a) the HTTP service ---------------------------------------------------------------------


class _Response:
    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def http_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str, body: bytes = b""
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a keep-alive connection: (status, body)."""
    writer.write(head.encode() + body)
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    while not response.done:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("service closed the connection")
        parser.feed_data(chunk)
    return parser.get_status_code(), bytes(response.body)


async def http_cycle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auth: str, sid: str
) -> None:
    """Lock, read-modify-write, write and release, as a PHP request does (msgpack)."""
    status, body = await http_request(
        reader,
        writer,
        f"POST /v1/sessions/{sid}/lock?wait_ms=10000 HTTP/1.1\r\nHost: b\r\n{auth}"
        "Accept: application/msgpack\r\nContent-Length: 0\r\n\r\n",
    )
    assert status == 200, (status, body[:200])
    record = msgpack.unpackb(body)
    payload = msgpack.packb(
        {"data": incremented(record["data"]), "ttl": TTL, "lock": record["lock"]}
    )
    status, body = await http_request(
        reader,
        writer,
        f"PUT /v1/sessions/{sid} HTTP/1.1\r\nHost: b\r\n{auth}"
        "Content-Type: application/msgpack\r\nAccept: application/msgpack\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n",
        payload,
    )
    assert status == 200, (status, body[:200])


async def _http_worker(
    port: int,
    token: str,
    worker: int,
    start: asyncio.Barrier,
    go: asyncio.Event,
    stop_at: list[float],
    sink: list[float],
    counter: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sids = sessions_for(worker)
    auth = f"Authorization: Bearer {token}\r\n"

    async def cycle(sid: str) -> None:
        await http_cycle(reader, writer, auth, sid)

    for sid in sids:  # prime: every session exists before timing
        await cycle(sid)
    await start.wait()
    await go.wait()  # stop_at is set
    i = 0
    while time.perf_counter() < stop_at[0]:
        began = time.perf_counter()
        await cycle(sids[i % len(sids)])
        i += 1
        sink.append(time.perf_counter() - began)
        counter[0] += 1
    writer.close()


def run_http(port: int, token: str, concurrency: int, duration: float) -> Result:
    async def main() -> Result:
        sinks: list[list[float]] = [[] for _ in range(concurrency)]
        counter = [0]
        stop_at = [0.0]
        start = asyncio.Barrier(concurrency + 1)
        go = asyncio.Event()
        workers = asyncio.gather(
            *(
                _http_worker(port, token, i, start, go, stop_at, sinks[i], counter)
                for i in range(concurrency)
            )
        )
        await start.wait()
        began = time.perf_counter()
        stop_at[0] = began + duration
        go.set()
        await workers
        elapsed = time.perf_counter() - began
        return Result(
            "(a) HTTP service", concurrency, counter[0], elapsed, [x for s in sinks for x in s]
        )

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())


def start_service(url: str, port: int, token: str, workers: int, pre_ping: bool) -> Process:
    args = [
        sys.executable, "-m", "session_service", "serve", "--db", url, "--port", str(port),
        "--tokens", f"bench:{token}", "--workers", str(workers), "--log-level", "warning",
        "--gc-interval", "0",
        "--db-pre-ping" if pre_ping else "--no-db-pre-ping",
    ]  # fmt: skip
    proc = Process("session-service", args, cwd=ROOT).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=20)
    except ProcessError as exc:
        proc.kill()
        raise SystemExit(f"service did not start: {exc}") from None
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument(
        "--service-workers",
        type=int,
        default=1,
        help="uvicorn workers for (a) (default 1: on 2 cores shared with MariaDB and "
        "the clients, a second worker only adds contention)",
    )
    parser.add_argument(
        "--no-pre-ping", action="store_true", help="run (a) and (b) without pool_pre_ping"
    )
    parser.add_argument(
        "--only",
        default="abcd",
        help="which of a, b, c, d, e, f to run (e and f: in-process event loop, the "
        "store's greenlet executor against SQLAlchemy's asyncio run_sync)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternate the variants this many times per level; print each one's median",
    )
    args = parser.parse_args()

    database = f"bench_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {database}")
    url = f"mysql+pymysql://root@127.0.0.1:3306/{database}"
    settings = Settings(
        db_url=url, db_pool_size=70, db_max_overflow=10, db_pre_ping=not args.no_pre_ping
    )
    store = SessionStore(settings)
    migrate(store.engine)
    with connect(database, autocommit=True).cursor() as cur:
        cur.execute(
            "CREATE TABLE php_sessions (sess_id VARBINARY(128) NOT NULL PRIMARY KEY, "
            "sess_data MEDIUMBLOB NOT NULL, sess_lifetime INTEGER UNSIGNED NOT NULL, "
            "sess_time INTEGER UNSIGNED NOT NULL, INDEX (sess_time)) ENGINE=InnoDB"
        )
    token = secrets.token_urlsafe(16)
    port = free_port(17000 + os.getpid() % 1000)
    service = (
        start_service(url, port, token, args.service_workers, not args.no_pre_ping)
        if "a" in args.only
        else None
    )
    levels = [int(x) for x in args.concurrency.split(",")]
    ratios_at_16: list[float] = []
    try:
        for level in levels:
            rounds: list[list[Result]] = []
            for _ in range(args.rounds):  # the variants alternate, so drift hits them alike
                row: list[Result] = []
                if "d" in args.only:
                    row.append(
                        run_threads(
                            "(d) PyMySQL FOR UPDATE txn",
                            level,
                            args.duration,
                            classic_cycle(database),
                        )
                    )
                if "c" in args.only:
                    row.append(
                        run_threads(
                            "(c) PyMySQL store SQL",
                            level,
                            args.duration,
                            raw_same_cycle(database, store),
                        )
                    )
                if "b" in args.only:
                    row.append(
                        run_threads("(b) store library", level, args.duration, store_cycle(store))
                    )
                if "a" in args.only:
                    row.append(run_http(port, token, level, args.duration))
                if "e" in args.only:
                    row.append(
                        run_tasks(
                            "(e) store, greenlet executor",
                            level,
                            args.duration,
                            greenlet_executor(settings),
                        )
                    )
                if "f" in args.only:
                    row.append(
                        run_tasks(
                            "(f) store, SQLAlchemy run_sync",
                            level,
                            args.duration,
                            sqlalchemy_run_sync(settings),
                        )
                    )
                rounds.append(row)
            report(level, rounds, ratios_at_16 if level == 16 else [])
    finally:
        if service is not None:
            service.stop(10)
        store.close()
        admin.cursor().execute(f"DROP DATABASE {database}")
    summary = f"{statistics.median(ratios_at_16):.2f}" if ratios_at_16 else "n/a"
    print(
        f"\nservice workers: {args.service_workers}, pool_pre_ping: {not args.no_pre_ping}, "
        f"{args.duration:.0f} s per cell, {args.rounds} round(s), {os.cpu_count()} cores; "
        f"median c=16 ratio (a)/(d): {summary}"
    )


def report(level: int, rounds: list[list[Result]], ratios: list[float]) -> None:
    """Print each variant's median round (by rate), with its ratio to (d) in that round.

    Each round's ratio compares two figures measured seconds apart; `ratios` gets the
    (a)/(d) ratio of every round."""
    for index in range(len(rounds[0])):
        cells = [row[index] for row in rounds]
        per_round = [
            cell.rate / row[0].rate if row[0].name.startswith("(d)") else float("nan")
            for cell, row in zip(cells, rounds, strict=True)
        ]
        if cells[0].name.startswith("(a)"):
            ratios.extend(r for r in per_round if r == r)
        middle = sorted(cells, key=lambda cell: cell.rate)[len(cells) // 2]
        ratio = statistics.median(per_round)
        spread = f"   rounds {', '.join(f'{c.rate:.0f}' for c in cells)}" if len(cells) > 1 else ""
        print(
            f"c={level:<3} {middle.name:<28} {middle.rate:9.0f} cycles/s   p50 "
            f"{middle.pct(0.5):7.2f} ms   p99 {middle.pct(0.99):7.2f} ms   x(d) "
            + (f"{ratio:5.2f}" if ratio == ratio else "  n/a")
            + spread,
            flush=True,
        )


if __name__ == "__main__":
    main()
