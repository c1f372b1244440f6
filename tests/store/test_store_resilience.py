"""Transient database failures on the real MariaDB: retried, and never applied twice."""

from __future__ import annotations

from typing import Any

import pymysql
import pytest
from sqlalchemy import event, exc

from session_service.errors import StoreUnavailable
from session_service.retry import classify
from session_service.schema import migrate
from session_service.settings import Settings
from session_service.store import SessionStore
from tests.support import mariadb_connect, session_id

NS = "resilience"


@pytest.fixture
def mariadb_store(mariadb_url: str) -> Any:
    store = SessionStore(Settings(db_url=mariadb_url, db_pre_ping=False, db_pool_size=2))
    migrate(store.engine)
    yield store
    store.close()


def _kill_pool_connections(store: SessionStore) -> int:
    """KILL, from another connection, every server thread the store's pool holds."""
    ids = []
    for _ in range(2):
        with store.engine.connect() as conn:
            ids.append(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar())
    with mariadb_connect() as admin, admin.cursor() as cur:
        for thread_id in set(ids):
            cur.execute(f"KILL {int(thread_id)}")  # type: ignore[arg-type]
    return len(set(ids))


def test_killed_connections_are_replaced_transparently(mariadb_store: SessionStore) -> None:
    sid = session_id()
    mariadb_store.write(NS, sid, b"before", 100)
    assert _kill_pool_connections(mariadb_store) >= 1
    assert mariadb_store.write(NS, sid, b"after", 100).version == 2
    record = mariadb_store.read(NS, sid)
    assert record is not None and (record.data, record.version) == (b"after", 2)


def test_write_lost_after_commit_is_not_applied_twice(mariadb_store: SessionStore) -> None:
    """The statement commits, then the client sees 'lost connection': the ambiguous case."""
    sid = session_id()
    mariadb_store.write(NS, sid, b"v1", 100)
    held = mariadb_store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    fired: list[str] = []

    def lose_connection_after_update(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and not fired:
            fired.append(statement)
            raise pymysql.err.OperationalError(2013, "Lost connection to server during query")

    event.listen(mariadb_store.engine, "after_cursor_execute", lose_connection_after_update)
    try:
        result = mariadb_store.write(NS, sid, b"v2", 100, lock=held.lock)
    finally:
        event.remove(mariadb_store.engine, "after_cursor_execute", lose_connection_after_update)
    assert fired, "the fault was injected"
    assert result.version == 2, "the write reports the version it really made"
    record = mariadb_store.read(NS, sid)
    assert record is not None and (record.data, record.version) == (b"v2", 2)


def test_unlocked_write_lost_after_commit_bumps_version_once(mariadb_store: SessionStore) -> None:
    sid = session_id()
    mariadb_store.write(NS, sid, b"v1", 100)
    fired: list[str] = []

    def lose(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT") and not fired:
            fired.append(statement)
            raise pymysql.err.OperationalError(2006, "MySQL server has gone away")

    event.listen(mariadb_store.engine, "after_cursor_execute", lose)
    try:
        assert mariadb_store.write(NS, sid, b"v2", 100).version == 2
    finally:
        event.remove(mariadb_store.engine, "after_cursor_execute", lose)
    record = mariadb_store.read(NS, sid)
    assert record is not None and record.version == 2


def test_unreachable_database_raises_store_unavailable_quickly() -> None:
    settings = Settings(
        db_url="mysql+pymysql://root@127.0.0.1:1/nowhere",
        db_retry_seconds=0.3,
        db_connect_timeout=1,
    )
    store = SessionStore(settings)
    with pytest.raises(StoreUnavailable):
        store.read(NS, session_id())
    with pytest.raises(StoreUnavailable):
        store.ping()
    store.close()


def test_classification_of_errors() -> None:
    def wrap(code: int) -> exc.OperationalError:
        return exc.OperationalError("stmt", {}, pymysql.err.OperationalError(code, "x"))

    deadlock = classify(wrap(1213))
    assert deadlock is not None and not deadlock.ambiguous
    lost = classify(wrap(2013))
    assert lost is not None and lost.ambiguous
    assert classify(wrap(1146)) is None, "table missing is permanent"
