"""Engine creation: one pooled engine per process, tuned for short autocommit statements.

Every store operation is one or two single-row statements, so connections run in
autocommit (no BEGIN/COMMIT round trips) and READ COMMITTED-equivalent behaviour:
no statement holds a lock past its own execution, and none takes gap locks.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from pymysql.converters import conversions as pymysql_conversions
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from session_service.hexliteral import conversions, with_hex_literals
from session_service.mysql_conventions import (
    POOL_TIMEOUT_SECONDS,
    RECYCLE_SECONDS,
    SESSION_SETUP,
    ping_due,
)
from session_service.settings import Settings, split_urls


def is_mysql(engine: Engine) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def create_store_engine(settings: Settings) -> Engine:
    urls = split_urls(settings.db_url)
    url = make_url(urls[0])
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(settings)
    connect_args: dict[str, Any] = {
        "connect_timeout": settings.db_connect_timeout,
        "read_timeout": 30,
        "write_timeout": 30,
        "charset": "utf8mb4",
        "conv": conversions(pymysql_conversions),  # the driver's, plus HexLiteral
    }
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        # pre-ping only after idle time (ping_after_idle below), not on every checkout
        pool_pre_ping=settings.db_pre_ping and settings.db_pre_ping_idle == 0,
        pool_recycle=RECYCLE_SECONDS,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        # autocommit connections carry no transaction to roll back on return
        pool_reset_on_return=None,
        skip_autocommit_rollback=True,
        connect_args=connect_args,
    )

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _hex_literals(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any
    ) -> tuple[str, Any]:
        return statement, with_hex_literals(parameters)  # see hexliteral.py

    @event.listens_for(engine, "connect")
    def _session_setup(dbapi_conn: Any, _record: object) -> None:
        cur = dbapi_conn.cursor()
        for statement in SESSION_SETUP:  # see mysql_conventions.py
            cur.execute(statement)
        cur.close()

    if settings.db_pre_ping and settings.db_pre_ping_idle > 0:
        ping_after_idle(engine, settings.db_pre_ping_idle)
    if len(urls) > 1:
        _connect_in_turn(engine, [make_url(u) for u in urls])
    return engine


def _connect_in_turn(engine: Engine, nodes: list[Any]) -> None:
    """Connect to the first reachable, ready node of a list (Galera), starting from the
    last one that worked, so a dead node costs one refused connect, not every request.

    A node that is up but not part of the primary component (wsrep_ready OFF) is
    skipped too. Reads use wsrep_sync_wait=1 so that a read on one node sees every
    write already committed through another (read-your-writes across nodes).
    """
    dialect = engine.dialect
    current = [0]

    @event.listens_for(engine, "do_connect")
    def _first_reachable(_dialect: Any, _record: object, cargs: Any, cparams: Any) -> Any:
        last_error: Exception | None = None
        start = current[0]
        for step in range(len(nodes)):
            index = (start + step) % len(nodes)
            params = {**cparams, **dialect.create_connect_args(nodes[index])[1]}
            try:
                conn = dialect.loaded_dbapi.connect(*cargs, **params)
            except dialect.loaded_dbapi.Error as error:
                last_error = error
                continue
            try:
                cur = conn.cursor()
                cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
                row = cur.fetchone()
                if row is not None and str(row[1]).upper() != "ON":
                    raise dialect.loaded_dbapi.OperationalError(
                        1047, f"node {nodes[index].host}:{nodes[index].port} is not ready"
                    )
                if row is not None:
                    cur.execute("SET SESSION wsrep_sync_wait = 1")
                cur.close()
            except dialect.loaded_dbapi.Error as error:
                conn.close()
                last_error = error
                continue
            current[0] = index
            return conn
        assert last_error is not None
        raise last_error


def ping_after_idle(engine: Engine, idle_seconds: float) -> None:
    """pool_pre_ping, but only for connections idle longer than `idle_seconds`.

    Pinging only those spares a round trip per operation under load (the rule is
    mysql_conventions.ping_due, shared with the event loop's pool).
    """

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_conn: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if not ping_due(record.info.get("returned_at"), time.monotonic(), idle_seconds):
            return
        try:
            dbapi_conn.ping(False)
        except Exception as error:  # the pool discards it and connects anew
            raise sa_exc.DisconnectionError(f"stale pooled connection: {error}") from error


def _sqlite_engine(settings: Settings) -> Engine:
    url = make_url(settings.db_url)
    if url.database and url.database != ":memory:":
        directory = os.path.dirname(os.path.abspath(url.database))
        os.makedirs(directory, exist_ok=True)
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_reset_on_return=None,
        skip_autocommit_rollback=True,
        connect_args={"timeout": 10.0, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # WAL lets readers and one writer work at once, across processes; the busy
        # timeout makes concurrent writers wait instead of failing.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine
