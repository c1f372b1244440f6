"""Read routing to MySQL/MariaDB replicas, and only when that cannot lose an update.

A replica serves lock-free reads (`read`, `exists`) only while a background check
finds it replicating (IO and SQL threads running) with Seconds_Behind_Master within
replica_max_lag_seconds, and only once it has applied, by MASTER_GTID_WAIT, every
write this process has made and the primary's position as of the last check.
Anything else (a lock, every read that precedes a write, every write) stays on the
primary: docs/design-replicas.md explains why a stale read there would lose updates.

A replica that fails is skipped for replica_retry_seconds; a read that hits a
failing or lagging replica is served by the primary instead, and counted.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from session_service import metrics
from session_service.database import create_store_engine, is_mysql
from session_service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

_LAST_GTID = text("SELECT @@last_gtid")
_PRIMARY_POS = text("SELECT @@global.gtid_binlog_pos")
_GTID_WAIT = text("SELECT MASTER_GTID_WAIT(:target_pos, :wait_seconds)")


def parse_gtids(position: str | None) -> dict[int, tuple[int, int]]:
    """ "0-1-42,1-3-7" -> {domain: (server_id, seq_no)}."""
    out: dict[int, tuple[int, int]] = {}
    for item in (position or "").split(","):
        parts = item.strip().split("-")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            domain, server, seq = (int(p) for p in parts)
            if seq >= out.get(domain, (0, -1))[1]:
                out[domain] = (server, seq)
    return out


def format_gtids(position: dict[int, tuple[int, int]]) -> str:
    return ",".join(f"{d}-{s}-{q}" for d, (s, q) in sorted(position.items()))


def merge_gtids(into: dict[int, tuple[int, int]], position: dict[int, tuple[int, int]]) -> bool:
    """Keep the highest sequence number per domain; True when `into` moved."""
    moved = False
    for domain, (server, seq) in position.items():
        if seq > into.get(domain, (0, -1))[1]:
            into[domain] = (server, seq)
            moved = True
    return moved


@dataclass
class Replica:
    """One replica: its own engine, and what the last check found."""

    name: str
    engine: Engine
    healthy: bool = False
    lag_seconds: float | None = None
    reason: str = "not checked yet"
    skip_until: float = 0.0
    reached: str = ""  # a target position this replica is known to have applied

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "healthy": self.healthy,
            "lag_seconds": self.lag_seconds,
            "reason": self.reason,
        }


@dataclass
class ReplicaSet:
    """The replicas of one primary, checked in the background, chosen round-robin."""

    settings: Settings
    primary: Engine
    replicas: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not is_mysql(self.primary):
            raise ValueError("read replicas need a MySQL/MariaDB primary")
        for url in self.settings.db_replica_urls:
            parsed = make_url(url)
            name = f"{parsed.host or 'localhost'}:{parsed.port or 3306}"
            engine = create_store_engine(self.settings.model_copy(update={"db_url": url}))
            event.listen(engine, "connect", _read_only_session)
            self.replicas.append(Replica(name, engine))
            metrics.REPLICA_HEALTHY.labels(replica=name).set(0)
        self._lock = threading.Lock()
        self._written: dict[int, tuple[int, int]] = {}
        self._target = ""
        self._gtid = True  # False on a server without MariaDB GTIDs: replicas unused
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- background checks ---------------------------------------------------------

    def start(self) -> None:
        """Check once now (so the first reads can use replicas), then in a daemon thread."""
        if self._thread is not None or not self.replicas:
            return
        self.check_all()
        self._thread = threading.Thread(target=self._loop, name="replica-check", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for replica in self.replicas:
            replica.engine.dispose()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.replica_check_interval):
            try:
                self.check_all()
            except Exception:  # the checker must outlive any surprise
                log.exception("replica check failed")

    def check_all(self) -> None:
        now = time.monotonic()
        for replica in self.replicas:
            if replica.healthy or now >= replica.skip_until:
                self._check(replica)
        self._refresh_primary_position()

    def _refresh_primary_position(self) -> None:
        """Fold the primary's binlog position into the target: bounds what another
        service instance's writes may be missing from a replica read to one interval."""
        try:
            with self.primary.connect() as conn:
                position = parse_gtids(conn.execute(_PRIMARY_POS).scalar())
        except (sa_exc.DBAPIError, sa_exc.TimeoutError):
            return  # the primary is down: keep the last known position
        self._advance(position)

    def _check(self, replica: Replica) -> None:
        try:
            with replica.engine.connect() as conn:
                status = _replication_status(conn)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as error:
            self._mark_down(replica, f"unreachable: {getattr(error, 'orig', error)}")
            return
        if status is None:
            self._mark_down(replica, "not a replica (SHOW REPLICA STATUS is empty)")
            return
        io, sql, lag = status
        replica.lag_seconds = lag
        metrics.REPLICA_LAG.labels(replica=replica.name).set(-1 if lag is None else lag)
        if io != "Yes" or sql != "Yes":
            self._mark_lagging(replica, f"replication stopped (IO {io}, SQL {sql})")
        elif lag is None or lag > self.settings.replica_max_lag_seconds:
            self._mark_lagging(replica, f"lag {lag} s over {self.settings.replica_max_lag_seconds}")
        else:
            if not replica.healthy:
                log.info("replica %s serves reads again", replica.name)
            replica.healthy, replica.reason = True, "ok"
            metrics.REPLICA_HEALTHY.labels(replica=replica.name).set(1)

    def _mark_lagging(self, replica: Replica, reason: str) -> None:
        if replica.healthy:
            log.warning("replica %s skipped: %s", replica.name, reason)
        replica.healthy, replica.reason = False, reason
        metrics.REPLICA_HEALTHY.labels(replica=replica.name).set(0)

    def _mark_down(self, replica: Replica, reason: str) -> None:
        """Skip a failed replica for replica_retry_seconds and drop its pooled connections."""
        self._mark_lagging(replica, reason)
        replica.lag_seconds = None
        replica.skip_until = time.monotonic() + self.settings.replica_retry_seconds
        metrics.REPLICA_LAG.labels(replica=replica.name).set(-1)
        replica.engine.dispose()

    # -- read-your-writes ------------------------------------------------------------

    def _advance(self, position: dict[int, tuple[int, int]]) -> None:
        with self._lock:
            if merge_gtids(self._written, position):
                self._target = format_gtids(self._written)

    def note_write(self, conn: Connection) -> None:
        """After a write on the primary: remember its GTID (this connection's last one)."""
        if not self._gtid:
            return
        try:
            position = conn.execute(_LAST_GTID).scalar()
        except sa_exc.DBAPIError as error:
            if getattr(error.orig, "args", (None,))[0] != 1193:  # unknown system variable
                raise
            log.error("the primary has no MariaDB GTIDs (@@last_gtid): replicas are not used")
            self._gtid = False
            return
        self._advance(parse_gtids(position))

    def _caught_up(self, replica: Replica, conn: Connection) -> bool:
        target = self._target
        if not target or target == replica.reached:
            return True
        waited = conn.execute(
            _GTID_WAIT,
            {"target_pos": target, "wait_seconds": self.settings.replica_gtid_wait},
        ).scalar()
        if waited != 0:
            return False
        replica.reached = target
        return True

    # -- routing -------------------------------------------------------------------

    def choose(self) -> Replica | None:
        """A healthy replica, round-robin; None when every replica is skipped."""
        healthy = [r for r in self.replicas if r.healthy]
        if not healthy:
            return None
        return healthy[next(self._turn) % len(healthy)]

    def read(self, operation: Callable[[Connection], T]) -> tuple[T] | None:
        """Run a lock-free read on a replica: (result,), or None to read on the primary."""
        replica = self.choose() if self._gtid else None
        if replica is None:
            metrics.REPLICA_FALLBACKS.labels(reason="no_healthy_replica").inc()
            return None
        try:
            with replica.engine.connect() as conn:
                if not self._caught_up(replica, conn):
                    metrics.REPLICA_FALLBACKS.labels(reason="behind").inc()
                    return None
                result = operation(conn)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as error:
            log.warning("replica %s failed a read, using the primary: %s", replica.name, error)
            metrics.REPLICA_FALLBACKS.labels(reason="error").inc()
            self._mark_down(replica, f"read failed: {getattr(error, 'orig', error)}")
            return None
        metrics.DB_READS.labels(db=replica.name).inc()
        return (result,)

    def status(self) -> list[dict[str, Any]]:
        return [replica.status() for replica in self.replicas]


def _read_only_session(dbapi_conn: Any, _record: object) -> None:
    """A replica connection can never write, whatever a future bug routes to it."""
    cur = dbapi_conn.cursor()
    cur.execute("SET SESSION TRANSACTION READ ONLY")
    cur.close()


def _replication_status(conn: Connection) -> tuple[str, str, float | None] | None:
    """(IO running, SQL running, seconds behind) from SHOW REPLICA/SLAVE STATUS."""
    try:
        row = conn.exec_driver_sql("SHOW REPLICA STATUS").mappings().first()
    except sa_exc.ProgrammingError:  # MariaDB < 10.5, MySQL < 8.0.22
        row = conn.exec_driver_sql("SHOW SLAVE STATUS").mappings().first()
    if row is None:
        return None

    def pick(*names: str) -> Any:
        return next((row[n] for n in names if n in row), None)

    io = str(pick("Replica_IO_Running", "Slave_IO_Running"))
    sql = str(pick("Replica_SQL_Running", "Slave_SQL_Running"))
    lag = pick("Seconds_Behind_Source", "Seconds_Behind_Master")
    return io, sql, None if lag is None else float(lag)
