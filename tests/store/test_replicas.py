"""Primary and replica with real MariaDB GTID replication, through real service processes.

What reaches the replica is counted on the replica itself (its general query log),
not taken from the service's word. The servers are private (tests.replication_support)
and shared by the tests of this module, which run in file order.
"""

from __future__ import annotations

import base64
import re
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial

import httpx
import pytest

from session_service.cli import build_parser, load_settings
from session_service.replicas import format_gtids, merge_gtids, parse_gtids
from session_service.settings import Settings, split_urls
from tests.replication_support import Replication, query
from tests.support import ServiceProcess, session_id, wait_until

pytestmark = pytest.mark.mariadb

AUTH = {"Authorization": "Bearer secret"}
READ_SQL = "SELECT sessions.data, sessions.version, sessions.expires_at"
EXISTS_SQL = re.compile(r"AS anon_1 \s*FROM sessions")
LOCK_SQL = "SELECT sessions.lock_token"
WRITE_SQL = re.compile(r"\b(INSERT INTO|UPDATE|DELETE FROM|REPLACE INTO)\s+`?sessions\b", re.I)


@pytest.fixture(scope="module")
def replication(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replication]:
    setup = Replication(tmp_path_factory.mktemp("replication"))
    try:
        yield setup.start()
    finally:
        setup.destroy()


@pytest.fixture(scope="module")
def services(
    replication: Replication, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Two real service processes over the primary and the replica, shared by the tests
    (starting one costs seconds on a busy machine); the tests compare metric deltas."""
    logs = tmp_path_factory.mktemp("replica-services")
    args = [
        "--db-replica", replication.replica_url(),
        "--replica-check-interval", "0.1",
        "--replica-retry-seconds", "0.5",
        "--replica-gtid-wait", "0.2",
        "--db-retry-seconds", "1",
        "--gc-interval", "0",
    ]  # fmt: skip
    pair = [
        ServiceProcess(
            replication.primary_url(), log_path=logs / f"service-{n}.log", extra_args=args
        )
        for n in range(2)
    ]
    try:
        for service in pair:
            service.start(wait_ready=False)
        for service in pair:
            if not wait_until(service.ready, 30):
                raise RuntimeError(f"service on {service.url} did not become ready")
            if not wait_until(partial(_replica_healthy_is, service, 1), 10):
                raise RuntimeError(f"service on {service.url} never found the replica healthy")
        yield pair[0], pair[1]
    finally:
        for service in pair:
            service.stop()


class ReplicaLog:
    """Counts of client statements in the replica's general query log since creation."""

    def __init__(self, replication: Replication) -> None:
        self.path = replication.general_log
        self.offset = self.path.stat().st_size

    def text(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")

    def reads(self) -> int:
        text = self.text()
        return text.count(READ_SQL) + len(EXISTS_SQL.findall(text))

    def locked_reads_and_writes(self) -> int:
        text = self.text()
        return text.count(LOCK_SQL) + len(WRITE_SQL.findall(text))


def metric(service: ServiceProcess, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in httpx.get(service.url + "/metrics", timeout=5).text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _replica_healthy_is(service: ServiceProcess, value: float) -> bool:
    return metric(service, "session_replica_healthy") == value


def put(client: httpx.Client, sid: str, data: bytes, lock: str | None = None) -> httpx.Response:
    body: dict[str, object] = {"data": base64.b64encode(data).decode(), "ttl": 600}
    if lock is not None:
        body["lock"] = lock
    return client.put(f"/v1/sessions/{sid}", json=body)


def get_data(client: httpx.Client, sid: str) -> bytes:
    response = client.get(f"/v1/sessions/{sid}")
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["data"])


def locked_increment(client: httpx.Client, sid: str) -> None:
    """PHP's cycle: lock and read, then write back under the lock."""
    locked = client.post(f"/v1/sessions/{sid}/lock", params={"wait_ms": 10000})
    assert locked.status_code == 200, locked.text
    count = int(base64.b64decode(locked.json()["data"]) or b"0")
    written = put(client, sid, str(count + 1).encode(), lock=locked.json()["lock"])
    assert written.status_code == 200, written.text


def test_lock_free_reads_reach_the_replica_locks_and_writes_never_do(
    replication: Replication, services: tuple[ServiceProcess, ServiceProcess]
) -> None:
    service = services[0]
    replica = f"127.0.0.1:{replication.replica.port}"
    assert metric(service, "session_replica_healthy", replica=replica) == 1
    replica_before = metric(service, "session_db_reads_total", db=replica)
    primary_before = metric(service, "session_db_reads_total", db="primary")
    log = ReplicaLog(replication)
    sid = session_id()
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=10) as client:
        for i in range(20):
            assert put(client, sid, f"v{i}".encode()).status_code == 200
            assert get_data(client, sid) == f"v{i}".encode()  # read-your-writes
            assert client.head(f"/v1/sessions/{sid}").status_code == 200
        counter = session_id()
        for _ in range(10):
            locked_increment(client, counter)
        assert get_data(client, counter) == b"10"

    served = metric(service, "session_db_reads_total", db=replica) - replica_before
    assert wait_until(lambda: log.reads() == served, 5), (log.reads(), served)
    assert served >= 25, f"only {served} of 41 lock-free reads reached the replica"
    assert log.locked_reads_and_writes() == 0, log.text()
    primary_reads = metric(service, "session_db_reads_total", db="primary") - primary_before
    assert served + primary_reads == 41


def test_stopped_sql_thread_sends_reads_to_the_primary_without_stale_results(
    replication: Replication, services: tuple[ServiceProcess, ServiceProcess]
) -> None:
    writer, reader = services
    replica = f"127.0.0.1:{replication.replica.port}"
    writer_fallbacks = metric(writer, "session_replica_fallbacks_total")
    reader_fallbacks = metric(reader, "session_replica_fallbacks_total")
    sid = session_id()
    a = httpx.Client(base_url=writer.url, headers=AUTH, timeout=10)
    b = httpx.Client(base_url=reader.url, headers=AUTH, timeout=10)
    with a, b:
        assert put(a, sid, b"before").status_code == 200
        assert get_data(a, sid) == b"before"
        query(replication.replica, "STOP SLAVE SQL_THREAD")
        log = ReplicaLog(replication)
        try:
            # At once, before any check has seen it: the GTID wait keeps the writer fresh.
            for i in range(5):
                assert put(a, sid, f"lagging {i}".encode()).status_code == 200
                assert get_data(a, sid) == f"lagging {i}".encode()
            fallbacks = metric(writer, "session_replica_fallbacks_total") - writer_fallbacks
            assert fallbacks >= 5  # "behind" or "no_healthy_replica", whichever came first
            # Once checked, every instance keeps lock-free reads off the stale replica.
            for service in (writer, reader):
                assert wait_until(partial(_replica_healthy_is, service, 0), 5)
            assert log.reads() == 0
            log = ReplicaLog(replication)
            for i in range(5):
                assert put(a, sid, f"stale? {i}".encode()).status_code == 200
                assert get_data(b, sid) == f"stale? {i}".encode()
                assert b.head(f"/v1/sessions/{sid}").status_code == 200
            assert log.reads() == 0
            assert metric(reader, "session_replica_fallbacks_total") - reader_fallbacks >= 10
            assert metric(reader, "session_replica_lag_seconds", replica=replica) == -1
        finally:
            query(replication.replica, "START SLAVE SQL_THREAD")
        # Caught up again: reads go back to the replica, and see the latest write.
        assert wait_until(lambda: metric(reader, "session_replica_healthy") == 1, 10)
        log = ReplicaLog(replication)
        assert get_data(b, sid) == b"stale? 4"
        assert log.reads() == 1


def test_a_dead_replica_fails_no_request_and_is_used_again_when_back(
    replication: Replication, services: tuple[ServiceProcess, ServiceProcess]
) -> None:
    service = services[0]
    assert wait_until(lambda: metric(service, "session_replica_healthy") == 1, 10)
    fallbacks_before = metric(service, "session_replica_fallbacks_total")
    failures: list[str] = []
    done = threading.Event()
    cycles = [0]

    def traffic() -> None:
        counter = session_id()
        with httpx.Client(base_url=service.url, headers=AUTH, timeout=15) as client:
            while not done.is_set():
                try:
                    locked_increment(client, counter)
                    cycles[0] += 1
                    if get_data(client, counter) != str(cycles[0]).encode():
                        failures.append(f"stale read after {cycles[0]} increments")
                except (AssertionError, httpx.HTTPError) as error:
                    failures.append(repr(error))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        replication.replica.stop(signal.SIGKILL)
        time.sleep(1.5)
        before_restart = cycles[0]
    finally:
        done.set()
        worker.join(30)
    assert failures == []
    assert before_restart > 5
    assert metric(service, "session_replica_fallbacks_total") > fallbacks_before
    assert metric(service, "session_replica_healthy") == 0

    replication.replica.start()  # replication resumes by itself (master.info)
    assert wait_until(lambda: metric(service, "session_replica_healthy") == 1, 15)
    log = ReplicaLog(replication)
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=10) as client:
        sid = session_id()
        assert put(client, sid, b"back").status_code == 200
        assert get_data(client, sid) == b"back"
    assert log.reads() == 1


def test_primary_down_writes_fail_fast_with_a_reason_and_the_service_recovers(
    replication: Replication, services: tuple[ServiceProcess, ServiceProcess]
) -> None:
    service = services[0]
    sid = session_id()
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=15) as client:
        assert put(client, sid, b"one").status_code == 200
        replication.primary.stop(signal.SIGKILL)
        try:
            started = time.monotonic()
            response = put(client, sid, b"two")
            elapsed = time.monotonic() - started
            assert response.status_code == 503
            assert response.json()["error"] == "unavailable"
            assert "database unavailable" in response.json()["detail"]
            assert elapsed < 3, f"503 after {elapsed:.1f} s with --db-retry-seconds 1"
            started = time.monotonic()  # the next ones fail at once, not after another window
            again = put(client, sid, b"two")
            assert again.status_code == 503 and "failing fast" in again.json()["detail"]
            assert time.monotonic() - started < 0.5
            ready = httpx.get(service.url + "/readyz", timeout=10)
            assert ready.status_code == 503
            assert "unreachable" in ready.json()["reason"]
            locked = client.post(f"/v1/sessions/{sid}/lock", params={"wait_ms": 0})
            assert locked.status_code == 503
        finally:
            replication.primary.start()
        assert wait_until(service.ready, 15)
        assert put(client, sid, b"three").status_code == 200
        assert get_data(client, sid) == b"three"
        locked_increment(client, session_id())
    assert wait_until(lambda: metric(service, "session_replica_healthy") == 1, 15)


def test_replica_settings_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = "mysql+pymysql://ro@db2/s", "mysql+pymysql://ro@db3/s?charset=utf8mb4,x"
    args = build_parser().parse_args(["serve", "--db-replica", one, "--db-replica", two])
    assert load_settings(args).db_replica_urls == [one, two]
    monkeypatch.setenv("SESSION_SERVICE_DB_REPLICA_URLS", f"{one},{two}")
    assert Settings().db_replica_urls == [one, two]  # a comma inside a query string stays
    assert load_settings(build_parser().parse_args(["serve"])).db_replica_urls == [one, two]
    with pytest.raises(ValueError):
        Settings(db_replica_urls=["sqlite:///x.db"])
    nodes = "mysql+pymysql://u@n1/s,mysql+pymysql://u@n2/s, mysql+pymysql://u@n3/s"
    assert split_urls(Settings(db_url=nodes).db_url) == [
        "mysql+pymysql://u@n1/s", "mysql+pymysql://u@n2/s", "mysql+pymysql://u@n3/s"
    ]  # fmt: skip


def test_gtid_positions_merge_per_domain() -> None:
    position = parse_gtids("0-1-42,1-3-7")
    assert merge_gtids(position, parse_gtids("0-2-41,1-3-9,2-1-1"))
    assert format_gtids(position) == "0-1-42,1-3-9,2-1-1"
    assert not merge_gtids(position, parse_gtids("0-1-40"))
    assert parse_gtids("") == {} and parse_gtids(None) == {}
