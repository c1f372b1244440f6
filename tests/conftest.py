"""Fixtures with real parts: MariaDB databases, SQLite files, service processes.

MariaDB must be reachable: a test that needs it fails (never skips) when it is not,
with the command that starts it. `make test` starts or installs it first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest

from session_service.schema import migrate
from session_service.settings import Settings
from session_service.store import SessionStore
from tests.support import (
    ISSUED_IDS,
    MARIADB_HOST,
    MARIADB_PORT,
    FakeClock,
    ServiceProcess,
    create_database,
    drop_database,
    mariadb_connect,
    mariadb_url,
)

#: A raw id where logs must only ever show `{sid}` or a hash prefix.
RAW_ID_IN_LOG = re.compile(
    rb"(/v1/sessions/(?!\{sid\})[A-Za-z0-9,-]{22,256})|(PHPSESSID=[A-Za-z0-9,-]{22,})"
)


@pytest.fixture(scope="session", autouse=True)
def no_raw_session_id_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole run: no log file the tests' processes wrote (services, PHP nodes,
    balancers, MariaDB) holds a raw session id, neither one the tests made nor one
    that PHP generated and a URL or cookie carried."""
    yield
    base = tmp_path_factory.getbasetemp()
    ids = [sid.encode() for sid in ISSUED_IDS]
    found: list[str] = []
    for path in base.rglob("*"):
        if not path.is_file() or not ("log" in path.name or path.suffix == ".err"):
            continue
        try:
            data = path.read_bytes()[:50_000_000]
        except OSError:
            continue
        if match := RAW_ID_IN_LOG.search(data):
            found.append(f"{path}: {match.group(0)[:80]!r}")
        for sid in ids:
            if sid in data:
                found.append(f"{path}: a test's session id")
                break
    assert not found, "raw session ids in logs:\n" + "\n".join(found[:20])


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    """One fresh MariaDB database for the whole run, dropped afterwards."""
    try:
        mariadb_connect().close()
    except pymysql.MySQLError as error:
        pytest.fail(
            f"MariaDB is not reachable on {MARIADB_HOST}:{MARIADB_PORT} ({error}); start it with "
            "`start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd` "
            "or run `make test`, which does",
            pytrace=False,
        )
    name = create_database()
    try:
        store = SessionStore(Settings(db_url=mariadb_url(name)))
        migrate(store.engine)
        store.close()
        yield name
    finally:
        drop_database(name)


@pytest.fixture(name="mariadb_url", scope="session")
def _mariadb_url(mariadb_database: str) -> str:
    """SQLAlchemy URL of the run's MariaDB database (schema already migrated)."""
    return mariadb_url(mariadb_database)


@pytest.fixture(params=["sqlite", "mariadb", "mariadb-two-step-lock"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on both backends, and on MariaDB also with the lock path the
    store takes on MySQL (no INSERT ... RETURNING: a read, then a conditional update)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    url: str = request.getfixturevalue("mariadb_url")
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(
    db_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., SessionStore]]:
    stores: list[SessionStore] = []
    two_step_lock = request.node.callspec.params.get("db_url") == "mariadb-two-step-lock"

    def factory(clock: Callable[[], float] | None = None, **overrides: object) -> SessionStore:
        settings = Settings(db_url=db_url, **overrides)  # type: ignore[arg-type]
        store = SessionStore(settings, clock=clock) if clock else SessionStore(settings)
        if two_step_lock:
            store.lock_upsert = False
        migrate(store.engine)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., SessionStore], clock: FakeClock) -> SessionStore:
    return make_store(clock)


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start real `session-service serve` processes; all are stopped after the test."""
    started: list[ServiceProcess] = []

    def factory(db_url: str, **kwargs: object) -> ServiceProcess:
        service = ServiceProcess(
            db_url=db_url,
            log_path=tmp_path / f"service-{len(started)}.log",
            **kwargs,  # type: ignore[arg-type]  # the factory passes ServiceProcess's own options
        )
        started.append(service)
        return service.start()

    yield factory
    for service in started:
        service.stop()
