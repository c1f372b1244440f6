#!/usr/bin/env python3
"""Lock+write cycles per second on MariaDB, four ways (six with --only), in one run.

(a) the HTTP service (real uvicorn processes, a lean asyncio HTTP/1.1 client so the
    client is not what is measured; PHP's curl client is C, too)
(b) the SessionStore library in-process (threads)
(c) raw PyMySQL issuing the same SQL statements as the store (threads)
(d) raw PyMySQL doing the classic PHP PDO handler transaction:
    BEGIN; SELECT ... FOR UPDATE; UPDATE (or INSERT); COMMIT   (threads)
(e) the store's operations on one event loop, run by the service's own greenlet
    executor over asyncmy (executors.py, greenlet_bridge.py), without HTTP
(f) the same operations run by SQLAlchemy's asyncio extension instead
    (create_async_engine on asyncmy, AsyncConnection.run_sync), without HTTP

Each worker cycles over its own 50 sessions, all created in a priming pass before
timing starts, so this measures steady throughput, not contention on one row nor
the first inserts. The four variants alternate --rounds times per concurrency
level; each printed cell is the variant's median round, with its ratio to (d)
in that round, so that drift on a shared machine hits all four alike.
"""

# This script creates the database, alternates the variants and prints the table; their
# client loops are in bench/store_support/, one module per kind of loop (store_threaded.py:
# b, c, d; store_event_loop.py: e, f; store_http.py: a; store_harness.py: what they share).

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import uuid
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "store_support"))

from store_event_loop import greenlet_executor, run_tasks, sqlalchemy_run_sync  # noqa: E402
from store_harness import Result  # noqa: E402
from store_http import run_http, start_service  # noqa: E402
from store_threaded import (  # noqa: E402
    classic_cycle,
    connect,
    raw_same_cycle,
    run_threads,
    store_cycle,
)

from session_service.schema import migrate  # noqa: E402
from session_service.settings import Settings  # noqa: E402
from session_service.store import SessionStore  # noqa: E402
from stack.processes import free_port  # noqa: E402


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
