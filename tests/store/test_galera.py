"""The unchanged service on a real three-node MariaDB Galera cluster (Debian's galera-4).

Service instances point at different nodes (each gets the node list starting with
its own node), run PHP's lock/increment/write cycle concurrently on shared sessions,
and one node is killed mid-run: every session must end exact, and no operation may
fail or take longer than the retry window.
"""

from __future__ import annotations

import base64
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pytest
from sqlalchemy import event

from session_service import metrics
from session_service.errors import VersionConflict
from session_service.schema import migrate
from session_service.settings import Settings
from session_service.store import SessionStore
from tests.replication_support import GALERA_INSTALL, GALERA_PROVIDER, GaleraCluster
from tests.support import ServiceProcess, session_id, wait_until

pytestmark = pytest.mark.mariadb

AUTH = {"Authorization": "Bearer secret"}
RETRY_WINDOW = 10.0  # --db-retry-seconds of the services


@pytest.fixture(scope="module")
def galera() -> Iterator[GaleraCluster]:
    if not GALERA_PROVIDER.exists() or shutil.which("rsync") is None:
        pytest.fail(f"Galera needs galera-4 and rsync: run `{GALERA_INSTALL}`", pytrace=False)
    # Not under pytest's tmp dir (mode 0700): the state transfer's rsync daemon runs as
    # `nobody` and must reach the joiners' datadirs.
    base = Path(tempfile.mkdtemp(prefix="session-galera-"))
    cluster = GaleraCluster(base)
    try:
        cluster.start()
        store = SessionStore(Settings(db_url=cluster.url()))
        migrate(store.engine)
        store.close()
        yield cluster
    finally:
        cluster.destroy()


def _stores(galera: GaleraCluster) -> list[SessionStore]:
    return [
        SessionStore(Settings(db_url=galera.url(first=i), db_retry_seconds=RETRY_WINDOW))
        for i in range(2)
    ]


def test_certification_conflicts_are_retried_and_compare_and_set_ends_exact(
    galera: GaleraCluster,
) -> None:
    """Two stores on two nodes write one session blindly and increment another by
    compare-and-set, concurrently: conflicts surface as deadlocks (1213) and are retried."""
    stores = _stores(galera)
    sid, blind, rounds = session_id(), session_id(), 60
    stores[0].write("default", sid, b"0", 600)
    conflicts_before = metrics.DB_ERRORS.labels(kind="mysql_1213")._value.get()
    errors: list[BaseException] = []

    def increment(store: SessionStore) -> None:
        try:
            for n in range(rounds):
                # a blind write on both nodes at once: the usual certification conflict
                store.write("default", blind, f"{n}".encode(), 600)
                while True:
                    record = store.read("default", sid)
                    assert record is not None
                    try:
                        store.write(
                            "default",
                            sid,
                            str(int(record.data) + 1).encode(),
                            600,
                            if_version=record.version,
                        )
                        break
                    except VersionConflict:
                        continue
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=increment, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        for store in stores:
            record = store.read("default", sid)
            assert record is not None and record.data == str(2 * rounds).encode()
        conflicts = metrics.DB_ERRORS.labels(kind="mysql_1213")._value.get() - conflicts_before
        print(f"certification conflicts retried: {conflicts:.0f}")
        assert conflicts > 0, "no certification conflict: the two nodes never raced"
    finally:
        for store in stores:
            store.close()


def _start_services(galera: GaleraCluster, logs: Path) -> list[ServiceProcess]:
    started = [
        ServiceProcess(
            db_url=galera.url(first=i),
            log_path=logs / f"service-{i}.log",
            extra_args=["--db-retry-seconds", str(RETRY_WINDOW), "--gc-interval", "0"],
        )
        for i in range(3)
    ]
    for service in started:
        service.start(wait_ready=False)
    for service in started:
        if not wait_until(service.ready, 30):
            for other in started:
                other.stop()
            raise RuntimeError(f"service on {service.url} did not become ready")
    return started


@pytest.fixture
def services(galera: GaleraCluster, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """Three service instances, service i preferring node i."""
    started = _start_services(galera, tmp_path)
    try:
        yield started
    finally:
        for service in started:
            service.stop()


def test_lock_increment_write_cycles_end_exact_when_a_node_is_killed(
    galera: GaleraCluster, services: list[ServiceProcess]
) -> None:
    sids = [session_id() for _ in range(4)]
    done: dict[str, int] = dict.fromkeys(sids, 0)
    failures: list[str] = []
    slowest = [0.0]
    total = [0]
    guard = threading.Lock()
    stop = threading.Event()

    def call(client: httpx.Client, method: str, url: str, **kwargs: object) -> httpx.Response:
        started = time.monotonic()
        response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
        with guard:
            slowest[0] = max(slowest[0], time.monotonic() - started)
        return response

    def worker(n: int) -> None:
        service = services[n % len(services)]
        rng = random.Random(n)
        with httpx.Client(base_url=service.url, headers=AUTH, timeout=60) as client:
            while not stop.is_set():
                sid = rng.choice(sids)
                try:
                    locked = call(
                        client, "POST", f"/v1/sessions/{sid}/lock", params={"wait_ms": 30000}
                    )
                    if locked.status_code != 200:
                        failures.append(f"lock {locked.status_code} {locked.text}")
                        continue
                    count = int(base64.b64decode(locked.json()["data"]) or b"0")
                    body = {
                        "data": base64.b64encode(str(count + 1).encode()).decode(),
                        "ttl": 600,
                        "lock": locked.json()["lock"],
                    }
                    written = call(client, "PUT", f"/v1/sessions/{sid}", json=body)
                    if written.status_code != 200:
                        failures.append(f"write {written.status_code} {written.text}")
                        continue
                except httpx.HTTPError as error:
                    failures.append(repr(error))
                    continue
                with guard:
                    done[sid] += 1
                    total[0] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: total[0] >= 60, 60), f"only {total[0]} cycles"
        galera.kill(2)  # the node that service 2 was using
        killed_at = total[0]
        assert wait_until(lambda: total[0] >= killed_at + 120, 60), f"stalled at {total[0]}"
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == [], failures[:5]
    assert slowest[0] < RETRY_WINDOW, f"an operation took {slowest[0]:.1f} s"
    for service in services:  # every instance, on either surviving node, agrees
        with httpx.Client(base_url=service.url, headers=AUTH, timeout=10) as client:
            for sid, count in done.items():
                response = client.get(f"/v1/sessions/{sid}")
                assert response.status_code == 200, response.text
                assert base64.b64decode(response.json()["data"]) == str(count).encode()
    print(f"{total[0]} cycles, slowest operation {slowest[0]:.2f} s")


@pytest.mark.parametrize("upsert", [True, False], ids=["one-statement-lock", "two-step-lock"])
def test_a_lock_whose_lost_first_attempt_landed_is_taken_not_waited_for(
    mariadb_url: str, upsert: bool
) -> None:
    """A node dies after committing the lease but before answering: the retry must see its
    own token in the row and return the lock, not wait for its own lease to run out.
    (The lease is taken by the INSERT ... RETURNING upsert on MariaDB, by an UPDATE after
    a read on MySQL.)"""
    store = SessionStore(Settings(db_url=mariadb_url, db_pre_ping=False))
    store.lock_upsert = upsert
    sid = session_id()
    store.write("galera", sid, b"data", 600)
    fired: list[str] = []
    takes_lease = "INSERT" if upsert else "UPDATE"

    def lose(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(takes_lease) and not fired:
            fired.append(statement)
            raise pymysql.err.OperationalError(2013, "Lost connection to server during query")

    event.listen(store.engine, "after_cursor_execute", lose)
    try:
        started = time.monotonic()
        record = store.lock("galera", sid, wait_ms=2000, lease_ms=60_000)
    finally:
        event.remove(store.engine, "after_cursor_execute", lose)
        store.close()
    assert fired, "the fault was injected"
    assert time.monotonic() - started < 1.5, "waited for its own lease"
    assert (record.data, record.version, record.new) == (b"data", 1, False)
