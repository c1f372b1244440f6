"""SessionStore: the session semantics over SQLAlchemy Core, usable without the HTTP layer.

Every operation is one or two single-row statements in autocommit, keyed by the
primary key (namespace, SHA-256 of the id), so different sessions never block each
other. Locking is a lease stored in the row with a random fencing token, not a held
database transaction (docs/design.md explains why). The SQL itself lives in
statements.py, built once per engine.

Each method `x_op` builds an operation (executors.Operation) and `x` runs it on
the store's synchronous executor; the service's event loop runs the same
operations with its own executor (async_store.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

from sqlalchemy import Connection, Engine, or_, text, update
from sqlalchemy import exc as sa_exc

from session_service import lease, metrics, statements
from session_service.database import create_store_engine
from session_service.errors import (
    DataTooLarge,
    InvalidNamespace,
    LockLost,
    LockTimeout,
    SessionLocked,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
)
from session_service.executors import EngineExecutor, Operation
from session_service.ids import hash_session_id, is_valid_namespace
from session_service.lease import parse_lock_token, seconds
from session_service.randomness import token_bytes
from session_service.records import LockAttempt, SessionRecord, WriteResult
from session_service.replicas import ReplicaSet
from session_service.retry import RetryPolicy
from session_service.schema import leases
from session_service.settings import Settings

log = logging.getLogger(__name__)
Params = dict[str, Any]
__all__ = ["LockAttempt", "SessionRecord", "SessionStore", "WriteResult"]

#: Transient errors of one row, not of the server: they never make the store fail fast.
_LOCK_LOST = "the lock is no longer held (lease expired and taken, or session destroyed)"


class SessionStore:
    """Shared session storage. One instance per process; it owns one pooled engine."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or Settings()
        self.engine = engine or create_store_engine(self.settings)
        self.sql = statements.build(self.engine.dialect.name)
        self._clock = clock
        self._namespaces: set[str] = set()
        self.retry = RetryPolicy(self.settings.db_retry_seconds, self.settings.db_fail_fast_seconds)
        #: lock with one INSERT ... RETURNING where the server has it (None: ask the
        #: server); False forces MySQL's two-statement path, which the tests also cover
        self.lock_upsert: bool | None = None
        self.replicas: ReplicaSet | None = None
        if self.settings.db_replica_urls:
            self.replicas = ReplicaSet(self.settings, self.engine)
            self.replicas.start()
        #: runs the operations that the methods ending in _op build (executors.py)
        self.executor = EngineExecutor(self.engine, self.retry, self.replicas)

    # -- plumbing ----------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def close(self) -> None:
        if self.replicas is not None:
            self.replicas.close()
        self.engine.dispose()

    def _key(self, namespace: str, sid: str) -> Params:
        if namespace not in self._namespaces:
            if not is_valid_namespace(namespace):
                raise InvalidNamespace("namespace must be 1-64 characters of [a-z0-9_.-]")
            if len(self._namespaces) < 1024:  # tenants are few; the check is then a lookup
                self._namespaces.add(namespace)
        return {"ns": namespace, "h": hash_session_id(sid), "now": self.now_ms()}

    def _bump(self, conn: Connection, stmt: Any, params: Params) -> int | None:
        """Execute a version-bumping UPDATE; the new version, or None if no row matched."""
        if self.sql.returning:
            value = conn.execute(stmt, params).scalar()
            return None if value is None else int(value)
        result = conn.execute(stmt, params)
        return int(result.lastrowid) if result.rowcount else None

    def _refused(self, conn: Connection, params: Params, mismatch: str) -> NoReturn:
        """Why a compare-and-set matched no row: with `lock`, the lock is gone (LockLost)
        or the version differs; without, another request holds the lease (SessionLocked,
        as the holder's fenced write would overwrite ours) or the version differs."""
        row = conn.execute(self.sql.lease_of, params).first()
        if "held" in params:
            if row is None or row.lock_token != params["held"]:
                raise LockLost(_LOCK_LOST)
        elif row is not None and row.lock_token is not None:
            held_until = int(row.lock_expires or 0)
            if held_until > params["now"]:
                raise SessionLocked(
                    "the session is locked by another request; a compare-and-set write "
                    "needs a free lease",
                    held_until - params["now"],
                )
        raise VersionConflict(mismatch)

    def _written_by(self, params: Params) -> Callable[[Connection], WriteResult | None]:
        """Did the write carrying params['wid'] land? (asked after an ambiguous failure)"""

        def check(conn: Connection) -> WriteResult | None:
            row = conn.execute(self.sql.written_by, params).first()
            if row is not None and row.write_id == params["wid"]:
                return WriteResult(int(row.version), seconds(int(row.expires_at)))
            return None

        return check

    # -- reads -------------------------------------------------------------------

    def read_op(self, namespace: str, sid: str) -> Operation[SessionRecord | None]:
        params = self._key(namespace, sid)
        query = self.sql.read

        def op(conn: Connection) -> SessionRecord | None:
            row = conn.execute(query, params).first()
            if row is None:
                return None
            return SessionRecord(bytes(row.data), int(row.version), seconds(int(row.expires_at)))

        return Operation(op, writes=False, replica_read=True)

    def read(self, namespace: str, sid: str) -> SessionRecord | None:
        """The live session, without locking; None when absent or expired."""
        return self.executor.run(self.read_op(namespace, sid))

    def exists_op(self, namespace: str, sid: str) -> Operation[bool]:
        params = self._key(namespace, sid)
        query = self.sql.exists
        return Operation(
            lambda conn: conn.execute(query, params).first() is not None,
            writes=False,
            replica_read=True,
        )

    def exists(self, namespace: str, sid: str) -> bool:
        """True for a live session, including one being created under a lock right now."""
        return self.executor.run(self.exists_op(namespace, sid))

    # -- locking -----------------------------------------------------------------

    def try_lock(self, namespace: str, sid: str, lease_ms: int) -> LockAttempt:
        """One attempt at the session's lease, without waiting (see try_lock_op)."""
        return self.executor.run(self.try_lock_op(namespace, sid, lease_ms))

    def try_lock_op(self, namespace: str, sid: str, lease_ms: int) -> Operation[LockAttempt]:
        """One attempt at the session's lease, without waiting.

        An absent session is locked too, through a placeholder row (version 0), so
        that the first two requests of a new session also queue behind each other.
        """
        params = self._key(namespace, sid)
        params.update(
            token=token_bytes(16),
            lease_end=params["now"] + lease_ms,
            payload=b"",
            new_version=0,
            wid=None,
        )
        params["expires"] = params["lease_end"]
        sql, upsert = self.sql, self.lock_upsert
        return Operation(lambda conn: lease.take(sql, upsert, conn, params))

    def lock(self, namespace: str, sid: str, wait_ms: int, lease_ms: int) -> SessionRecord:
        """Lock and read, waiting up to wait_ms for another holder (blocking library form)."""
        deadline = time.monotonic() + wait_ms / 1000
        attempt = 0
        while True:
            result = self.try_lock(namespace, sid, lease_ms)
            if result.record is not None:
                return result.record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                retry_after = max(0, result.held_until_ms - self.now_ms())
                raise LockTimeout("session is locked by another request", retry_after)
            time.sleep(min(remaining, 0.002 * (1.5 ** min(attempt, 10)), 0.05))
            attempt += 1

    def release(self, namespace: str, sid: str, lock: str) -> None:
        """Give the lease back without writing; LockLost if it is not held with this token."""
        self.executor.run(self.release_op(namespace, sid, lock))

    def release_op(self, namespace: str, sid: str, lock: str) -> Operation[None]:
        params = self._key(namespace, sid)
        params["held"] = parse_lock_token(lock)
        retried = False

        def op(conn: Connection) -> None:
            if not conn.execute(self.sql.release, params).rowcount and not retried:
                raise LockLost(_LOCK_LOST)

        def already(conn: Connection) -> None:
            nonlocal retried
            retried = True  # a lost connection may have released it already
            return None

        return Operation(op, already)

    # -- writes ------------------------------------------------------------------

    def write(
        self,
        namespace: str,
        sid: str,
        data: bytes,
        ttl: int,
        *,
        lock: str | None = None,
        if_version: int | None = None,
    ) -> WriteResult:
        """Store data for ttl seconds (see write_op)."""
        return self.executor.run(
            self.write_op(namespace, sid, data, ttl, lock=lock, if_version=if_version)
        )

    def write_op(
        self,
        namespace: str,
        sid: str,
        data: bytes,
        ttl: int,
        *,
        lock: str | None = None,
        if_version: int | None = None,
    ) -> Operation[WriteResult]:
        """Store data for ttl seconds: fenced by `lock`, compare-and-set by `if_version`
        (only while no other request holds the lease), both conditions with both, or
        last-write-wins with neither."""
        params = self._key(namespace, sid)
        if len(data) > self.settings.max_data_bytes:
            raise DataTooLarge(
                f"session data is {len(data)} bytes; the limit is {self.settings.max_data_bytes}"
            )
        expires = params["now"] + ttl * 1000
        params.update(
            payload=data,
            expires=expires,
            wid=token_bytes(16),
            new_version=1,
            token=None,
            lease_end=None,
        )
        done = WriteResult(0, seconds(expires))

        def fenced(conn: Connection) -> WriteResult:
            version = self._bump(conn, self.sql.write_fenced, params)
            if version is None:
                raise LockLost(_LOCK_LOST)
            return WriteResult(version, done.expires_at)

        def compare_and_set(conn: Connection) -> WriteResult:
            fenced = "held" in params
            if params["seen_version"] > 0:
                params["new_version"] = params["seen_version"] + 1
                stmt = self.sql.write_fenced_cas if fenced else self.sql.write_cas
                if not conn.execute(stmt, params).rowcount:
                    self._refused(conn, params, f"stored version is not {params['seen_version']}")
                return WriteResult(params["new_version"], done.expires_at)
            stmt = self.sql.write_fenced_absent if fenced else self.sql.write_cas_absent
            version = self._bump(conn, stmt, params)
            if version is None:
                if fenced:  # the lease's placeholder row exists: nothing to insert
                    self._refused(conn, params, "the session exists (if_version 0)")
                try:
                    conn.execute(self.sql.insert_new, params)
                except sa_exc.IntegrityError:
                    self._refused(conn, params, "the session exists (if_version 0)")
                version = 1
            return WriteResult(version, done.expires_at)

        def last_write_wins(conn: Connection) -> WriteResult:
            if self.sql.returning:
                version = int(conn.execute(self.sql.upsert, params).scalar_one())
            else:  # LAST_INSERT_ID is 0 when the row was inserted rather than updated
                version = int(conn.execute(self.sql.upsert, params).lastrowid) or 1
            return WriteResult(version, done.expires_at)

        applied = self._written_by(params)
        if lock is not None:
            params["held"] = parse_lock_token(lock)
        if if_version is not None:
            params["seen_version"] = if_version
            return Operation(compare_and_set, applied)
        if lock is not None:
            return Operation(fenced, applied)
        return Operation(last_write_wins, applied)

    def touch(self, namespace: str, sid: str, ttl: int, *, lock: str | None = None) -> WriteResult:
        """Extend the expiry (and release `lock`), never reviving an expired session."""
        return self.executor.run(self.touch_op(namespace, sid, ttl, lock=lock))

    def touch_op(
        self, namespace: str, sid: str, ttl: int, *, lock: str | None = None
    ) -> Operation[WriteResult]:
        """Extend the expiry (and release `lock`), never reviving an expired session.

        The write is skipped when the expiry would move by less than
        touch_skip_fraction of ttl, which spares the database one write per request
        for sessions that are read far more often than they change.
        """
        params = self._key(namespace, sid)
        expires = params["now"] + ttl * 1000
        threshold = expires - int(ttl * 1000 * self.settings.touch_skip_fraction)
        params.update(expires=expires, threshold=threshold, wid=token_bytes(16))

        def current(conn: Connection) -> WriteResult:
            row = conn.execute(self.sql.touch_read, params).first()
            if row is None:
                raise SessionNotFound("no live session with this id")
            return WriteResult(int(row.version), seconds(int(row.expires_at)))

        def with_lock(conn: Connection) -> WriteResult:
            if not conn.execute(self.sql.touch_locked, params).rowcount:
                raise LockLost(_LOCK_LOST)
            return current(conn)

        def without_lock(conn: Connection) -> WriteResult:
            now = current(conn)
            if now.expires_at * 1000 >= threshold:
                return now
            if conn.execute(self.sql.touch_extend, params).rowcount:
                return WriteResult(now.version, seconds(expires))
            return current(conn)

        def applied(conn: Connection) -> WriteResult | None:
            row = conn.execute(self.sql.written_by, params).first()
            return current(conn) if row is not None and row.write_id == params["wid"] else None

        if lock is not None:
            params["held"] = parse_lock_token(lock)
            return Operation(with_lock, applied)
        return Operation(without_lock, applied)

    def destroy(self, namespace: str, sid: str) -> None:
        """Delete the session, whoever holds its lock (as PHP's files handler unlinks)."""
        self.executor.run(self.destroy_op(namespace, sid))

    def destroy_op(self, namespace: str, sid: str) -> Operation[None]:
        params = self._key(namespace, sid)
        query = self.sql.destroy

        def op(conn: Connection) -> None:
            conn.execute(query, params)

        return Operation(op)

    # -- maintenance ---------------------------------------------------------------

    def gc(self, batch: int | None = None, max_batches: int = 10_000) -> int:
        """Delete expired, unlocked rows in small batches; return how many went.

        Each batch selects primary keys through the expiry index and deletes exactly
        those rows (re-checking expiry), so no statement locks more than `batch` rows.
        """
        size = batch or self.settings.gc_batch
        total = 0
        for _ in range(max_batches):
            params: Params = {"now": self.now_ms(), "batch": size}

            def one_batch(conn: Connection, params: Params = params) -> tuple[int, int]:
                keys = [tuple(k) for k in conn.execute(self.sql.gc_select, params).all()]
                if not keys:
                    return 0, 0
                deleted = conn.execute(self.sql.gc_delete, {**params, "keys": keys}).rowcount
                return len(keys), int(deleted)

            found, deleted = self.executor.run(Operation(one_batch))
            total += deleted
            if found < size:
                break
        metrics.GC_DELETED.inc(total)
        metrics.GC_RUNS.inc()
        return total

    def acquire_lease(self, name: str, holder: str, duration_ms: int) -> bool:
        """Take or renew a named lease between service instances (used for gc)."""
        now = self.now_ms()

        def op(conn: Connection) -> bool:
            taken = conn.execute(
                update(leases)
                .where(
                    leases.c.name == name,
                    or_(leases.c.holder == holder, leases.c.expires_at <= now),
                )
                .values(holder=holder, expires_at=now + duration_ms)
            ).rowcount
            if taken:
                return True
            try:
                conn.execute(
                    leases.insert().values(name=name, holder=holder, expires_at=now + duration_ms)
                )
            except sa_exc.IntegrityError:
                return False
            return True

        return self.executor.run(Operation(op))

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            self.retry.succeeded()  # it answers: stop failing fast (/readyz probes this)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as error:
            raise StoreUnavailable(
                f"database unreachable: {getattr(error, 'orig', error)}"
            ) from error
