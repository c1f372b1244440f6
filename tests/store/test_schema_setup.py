"""The schema at start-up: created even when the database comes later, and never
silently "migrated" over another application's table of the same name."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from session_service.client import SessionClient
from session_service.ids import hash_session_id
from session_service.schema import SchemaConflict, current_version, migrate
from session_service.settings import Settings
from session_service.store import SessionStore
from tests.support import (
    ROOT,
    ServiceProcess,
    create_database,
    drop_database,
    mariadb_connect,
    mariadb_url,
    session_id,
    wait_until,
)

FOREIGN_TABLE = (
    "CREATE TABLE sessions (sess_id VARBINARY(128) NOT NULL PRIMARY KEY, "
    "sess_data MEDIUMBLOB NOT NULL, sess_lifetime INTEGER UNSIGNED NOT NULL, "
    "sess_time INTEGER UNSIGNED NOT NULL) ENGINE=InnoDB"
)  # Symfony's PdoSessionHandler names its table "sessions" too


@pytest.fixture
def foreign_database() -> Iterator[str]:
    name = create_database()
    with mariadb_connect(name) as conn, conn.cursor() as cur:
        cur.execute(FOREIGN_TABLE)
    yield name
    drop_database(name)


def test_migrate_refuses_another_applications_sessions_table(foreign_database: str) -> None:
    store = SessionStore(Settings(db_url=mariadb_url(foreign_database)))
    try:
        with pytest.raises(SchemaConflict, match=r'table "sessions" exists but is not session-'):
            migrate(store.engine)
    finally:
        store.close()
    with mariadb_connect(foreign_database) as conn, conn.cursor() as cur:
        cur.execute("SHOW COLUMNS FROM sessions")
        assert [row[0] for row in cur.fetchall()] == [
            "sess_id",
            "sess_data",
            "sess_lifetime",
            "sess_time",
        ]


def test_migrate_command_names_the_conflict_without_a_traceback(foreign_database: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "session_service", "migrate", "--db", mariadb_url(foreign_database)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode != 0
    assert 'table "sessions" exists but is not session-service\'s' in done.stderr
    assert "a database of its own" in done.stderr
    assert "Traceback" not in done.stderr


def test_service_is_not_ready_over_a_foreign_table(foreign_database: str, tmp_path: Path) -> None:
    service = ServiceProcess(mariadb_url(foreign_database), log_path=tmp_path / "service.log")
    service.start(wait_ready=False)
    try:

        def answer() -> httpx.Response | None:
            try:
                return httpx.get(service.url + "/readyz", timeout=2)
            except httpx.HTTPError:
                return None

        assert wait_until(lambda: answer() is not None, 20)
        reply = answer()
        assert reply is not None and reply.status_code == 503
        assert 'table "sessions" exists but is not session-service' in reply.json()["reason"]
    finally:
        service.stop()


def test_schema_is_created_when_the_database_appears_after_start(tmp_path: Path) -> None:
    """Started before its database exists (as when MariaDB is still coming up): not
    ready meanwhile, then the schema is created without a restart."""
    name = f"sstest_{uuid.uuid4().hex[:12]}"
    service = ServiceProcess(mariadb_url(name), log_path=tmp_path / "service.log")
    service.start(wait_ready=False)
    try:
        assert wait_until(lambda: _status(service) == 503, 20), "answers, but not ready"
        with mariadb_connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        assert wait_until(service.ready, 40), "the schema was created by the retry"
        with SessionClient(service.url, "secret") as client:
            sid = session_id()
            record = client.lock(sid)
            client.write(sid, b"after the database came", 60, lock=record.lock)
            stored = client.read(sid)
            assert stored is not None and stored.data == b"after the database came"
    finally:
        service.stop()
        drop_database(name)


def _status(service: ServiceProcess) -> int:
    try:
        return httpx.get(service.url + "/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


# -- issue 13.5: tenants compared byte for byte on MariaDB --------------------------------

OLD_COLLATION = (
    "ALTER TABLE sessions MODIFY namespace VARCHAR(64) CHARACTER SET utf8mb4 "
    "COLLATE utf8mb4_general_ci NOT NULL"
)


@pytest.fixture
def schema_1_database() -> Iterator[str]:
    """A database as schema 1 left it: namespace in the server's case-insensitive collation."""
    name = create_database()
    store = SessionStore(Settings(db_url=mariadb_url(name)))
    migrate(store.engine)
    store.close()
    with mariadb_connect(name) as conn, conn.cursor() as cur:
        cur.execute(OLD_COLLATION)
        cur.execute("UPDATE session_service_schema SET version = 1")
    yield name
    drop_database(name)


def _insert_row(database: str, namespace: str, sid: str, data: bytes) -> None:
    """A row as an earlier release (no namespace validation) could have written it."""
    with mariadb_connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO sessions (namespace, id_hash, data, version, expires_at, created_at, "
            "updated_at) VALUES (%s, %s, %s, 1, %s, 0, 0)",
            (namespace, hash_session_id(sid), data, 4_000_000_000_000),
        )


def _collation(database: str) -> str:
    with mariadb_connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
            "AND TABLE_NAME = 'sessions' AND COLUMN_NAME = 'namespace'",
            (database,),
        )
        row = cur.fetchone()
        assert row is not None, "the sessions table has no namespace column"
        return str(row[0])


def test_migration_makes_namespaces_binary_and_tenants_isolated(schema_1_database: str) -> None:
    sid = session_id()
    _insert_row(schema_1_database, "Shop", sid, b"Shop's session")
    store = SessionStore(Settings(db_url=mariadb_url(schema_1_database)))
    try:
        assert migrate(store.engine) == 2
        assert _collation(schema_1_database) == "utf8mb4_bin"
        assert current_version(store.engine) == 2
        assert store.read("shop", sid) is None, "'shop' must not read 'Shop''s session"
        store.write("shop", sid, b"shop's own", 100)
        record = store.read("shop", sid)
        assert record is not None and record.data == b"shop's own"
        assert migrate(store.engine) == 2, "running it again changes nothing"
    finally:
        store.close()
    with mariadb_connect(schema_1_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT namespace, data FROM sessions ORDER BY namespace")
        assert cur.fetchall() == (("Shop", b"Shop's session"), ("shop", b"shop's own"))


def test_migration_refuses_namespaces_the_old_collation_made_one(schema_1_database: str) -> None:
    _insert_row(schema_1_database, "A", session_id(), b"A")
    _insert_row(schema_1_database, "a", session_id(), b"a")
    _insert_row(schema_1_database, "shöp", session_id(), b"umlaut")
    _insert_row(schema_1_database, "shop", session_id(), b"plain")
    store = SessionStore(Settings(db_url=mariadb_url(schema_1_database)))
    try:
        with pytest.raises(SchemaConflict) as refused:
            migrate(store.engine)
        message = str(refused.value)
        assert "'A' and 'a'" in message or "'a' and 'A'" in message
        assert "shöp" in message and "'shop'" in message and "DELETE FROM sessions" in message
        assert _collation(schema_1_database) == "utf8mb4_general_ci", "nothing was changed"
        assert current_version(store.engine) == 1
        with mariadb_connect(schema_1_database) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM sessions WHERE CAST(namespace AS BINARY) IN ('A', 'shop')")
        assert migrate(store.engine) == 2
        assert _collation(schema_1_database) == "utf8mb4_bin"
    finally:
        store.close()


def test_a_fresh_schema_keeps_tenants_apart(mariadb_url: str) -> None:
    """Rows written before namespaces were validated ('Shop') stay their own tenant's."""
    name = mariadb_url.rsplit("/", 1)[1].split("?")[0]
    sid = session_id()
    _insert_row(name, "Shop", sid, b"Shop's session")
    store = SessionStore(Settings(db_url=mariadb_url))
    try:
        assert store.read("shop", sid) is None
    finally:
        store.close()
