"""SessionStore: the session semantics over SQLAlchemy Core, usable without the HTTP layer.

Every operation is one or two single-row statements in autocommit, keyed by the
primary key (namespace, SHA-256 of the id), so different sessions never block each
other. Locking is a lease stored in the row with a random fencing token, not a held
database transaction (docs/design.md explains why).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from session_service import metrics
from session_service.database import create_store_engine, is_mysql
from session_service.errors import (
    DataTooLarge,
    InvalidLockToken,
    LockLost,
    LockTimeout,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
)
from session_service.ids import hash_session_id
from session_service.retry import backoff_seconds, classify
from session_service.schema import leases, sessions
from session_service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
t = sessions


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as read or locked. `version` 0 and empty data mean it does not exist yet."""

    data: bytes
    version: int
    expires_at: int
    lock: str | None = None
    lease_expires_at_ms: int | None = None
    new: bool = False


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class LockAttempt:
    """One try at the lease: `record` when acquired, else when the holder's lease ends."""

    record: SessionRecord | None
    held_until_ms: int = 0


def _seconds(ms: int) -> int:
    return (ms + 999) // 1000


def parse_lock_token(token: str) -> bytes:
    try:
        raw = bytes.fromhex(token)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise InvalidLockToken("lock must be the 32-hex-digit token returned by lock")
    return raw


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
        self._mysql = is_mysql(self.engine)
        self._clock = clock

    # -- helpers -----------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def close(self) -> None:
        self.engine.dispose()

    def _pk(self, namespace: str, id_hash: bytes) -> ColumnElement[bool]:
        return and_(t.c.namespace == namespace, t.c.id_hash == id_hash)

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.settings.max_data_bytes:
            raise DataTooLarge(
                f"session data is {len(data)} bytes; the limit is {self.settings.max_data_bytes}"
            )

    def _run(
        self,
        operation: Callable[[Connection], T],
        applied: Callable[[Connection], T | None] | None = None,
    ) -> T:
        """Run `operation`, retrying transient errors within db_retry_seconds.

        After an ambiguous failure (the connection died mid-statement), `applied`
        is asked first whether the earlier attempt already took effect.
        """
        deadline = time.monotonic() + self.settings.db_retry_seconds
        attempt = 0
        ambiguous = False
        while True:
            try:
                with self.engine.connect() as conn:
                    if ambiguous and applied is not None:
                        done = applied(conn)
                        if done is not None:
                            return done
                    return operation(conn)
            except sa_exc.DBAPIError as error:
                transient = classify(error)
                kind = transient.kind if transient else type(error.orig).__name__
                metrics.DB_ERRORS.labels(kind=kind).inc()
                if transient is None:
                    if isinstance(error, sa_exc.OperationalError):
                        raise StoreUnavailable(f"database error: {error.orig}") from error
                    raise
                ambiguous = ambiguous or transient.ambiguous
                pause = backoff_seconds(attempt)
                if time.monotonic() + pause > deadline:
                    raise StoreUnavailable(
                        f"database unavailable after {attempt + 1} attempts: {error.orig}"
                    ) from error
                metrics.DB_RETRIES.inc()
                log.warning("transient database error (%s), retrying", kind)
                attempt += 1
                time.sleep(pause)
            except sa_exc.TimeoutError as error:
                metrics.DB_ERRORS.labels(kind="pool_timeout").inc()
                raise StoreUnavailable("no database connection free in time") from error

    def _update_bumping_version(
        self, conn: Connection, where: ColumnElement[bool], values: dict[str, Any]
    ) -> int | None:
        """UPDATE one row with version = version + 1; return the new version or None.

        One round trip on both dialects: RETURNING on SQLite, LAST_INSERT_ID(expr)
        on MySQL/MariaDB (which has no UPDATE ... RETURNING).
        """
        if self._mysql:
            result = conn.execute(
                update(t)
                .where(where)
                .values(version=func.last_insert_id(t.c.version + 1), **values)
            )
            return int(result.lastrowid) if result.rowcount else None
        row = conn.execute(
            update(t).where(where).values(version=t.c.version + 1, **values).returning(t.c.version)
        ).first()
        return int(row[0]) if row else None

    def _written_by(
        self, namespace: str, id_hash: bytes, write_id: bytes
    ) -> Callable[[Connection], WriteResult | None]:
        def check(conn: Connection) -> WriteResult | None:
            row = conn.execute(
                select(t.c.version, t.c.expires_at, t.c.write_id).where(
                    self._pk(namespace, id_hash)
                )
            ).first()
            if row is not None and row.write_id == write_id:
                return WriteResult(int(row.version), _seconds(int(row.expires_at)))
            return None

        return check

    # -- reads -------------------------------------------------------------------

    def read(self, namespace: str, sid: str) -> SessionRecord | None:
        """The live session, without locking; None when absent or expired."""
        id_hash = hash_session_id(sid)
        now = self.now_ms()

        def op(conn: Connection) -> SessionRecord | None:
            row = conn.execute(
                select(t.c.data, t.c.version, t.c.expires_at).where(
                    self._pk(namespace, id_hash), t.c.expires_at > now, t.c.version > 0
                )
            ).first()
            if row is None:
                return None
            return SessionRecord(bytes(row.data), int(row.version), _seconds(int(row.expires_at)))

        return self._run(op)

    def exists(self, namespace: str, sid: str) -> bool:
        """True for a live session, including one being created under a lock right now."""
        id_hash = hash_session_id(sid)
        now = self.now_ms()

        def op(conn: Connection) -> bool:
            row = conn.execute(
                select(literal(1)).where(
                    self._pk(namespace, id_hash),
                    or_(
                        and_(t.c.version > 0, t.c.expires_at > now),
                        t.c.lock_expires > now,
                    ),
                )
            ).first()
            return row is not None

        return self._run(op)

    # -- locking -----------------------------------------------------------------

    def try_lock(self, namespace: str, sid: str, lease_ms: int) -> LockAttempt:
        """One attempt at the session's lease, without waiting.

        An absent session is locked too, through a placeholder row (version 0), so
        that the first two requests of a new session also queue behind each other.
        """
        id_hash = hash_session_id(sid)
        token = secrets.token_bytes(16)
        now = self.now_ms()
        lease_end = now + lease_ms
        free = or_(t.c.lock_token.is_(None), t.c.lock_expires <= now)
        row_values = {
            "namespace": namespace,
            "id_hash": id_hash,
            "data": b"",
            "version": 0,
            "expires_at": lease_end,
            "lock_token": token,
            "lock_expires": lease_end,
            "write_id": None,
            "created_at": now,
            "updated_at": now,
        }

        def op(conn: Connection) -> LockAttempt:
            data_if_ours = case((t.c.lock_token == token, t.c.data), else_=None)
            columns = (t.c.lock_token, t.c.lock_expires, t.c.version, t.c.expires_at, data_if_ours)
            if self._mysql:
                # MySQL applies ON DUPLICATE KEY assignments left to right, so the second
                # one sees the new lock_token: it is ours exactly when the lease was free.
                ins = mysql_insert(t).values(**row_values)
                ours = t.c.lock_token == ins.inserted.lock_token
                conn.execute(
                    ins.on_duplicate_key_update(
                        [
                            (
                                "lock_token",
                                case((free, ins.inserted.lock_token), else_=t.c.lock_token),
                            ),
                            (
                                "lock_expires",
                                case((ours, ins.inserted.lock_expires), else_=t.c.lock_expires),
                            ),
                        ]
                    )
                )
                row = conn.execute(select(*columns).where(self._pk(namespace, id_hash))).first()
            else:
                sins = sqlite_insert(t).values(**row_values)
                row = conn.execute(
                    sins.on_conflict_do_update(
                        index_elements=[t.c.namespace, t.c.id_hash],
                        set_={
                            "lock_token": case(
                                (free, sins.excluded.lock_token), else_=t.c.lock_token
                            ),
                            "lock_expires": case(
                                (free, sins.excluded.lock_expires), else_=t.c.lock_expires
                            ),
                        },
                    ).returning(*columns)
                ).first()
            if row is None:  # destroyed between the two statements: try again
                return LockAttempt(None, now)
            if row[0] != token:
                return LockAttempt(None, int(row[1] or now))
            version, expires_at = int(row[2]), int(row[3])
            is_new = version == 0 or expires_at <= now
            return LockAttempt(
                SessionRecord(
                    data=b"" if is_new else bytes(row[4]),
                    version=0 if is_new else version,
                    expires_at=0 if is_new else _seconds(expires_at),
                    lock=token.hex(),
                    lease_expires_at_ms=int(row[1]),
                    new=is_new,
                )
            )

        return self._run(op)

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
        id_hash = hash_session_id(sid)
        token = parse_lock_token(lock)
        retried = [False]

        def op(conn: Connection) -> None:
            result = conn.execute(
                update(t)
                .where(self._pk(namespace, id_hash), t.c.lock_token == token)
                .values(lock_token=None, lock_expires=None)
            )
            if not result.rowcount and not retried[0]:
                raise LockLost("the lock is no longer held (lease expired and taken, or destroyed)")

        def already(conn: Connection) -> None:
            retried[0] = True  # a lost connection may have released it already
            return None

        self._run(op, already)

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
        """Store data for ttl seconds: fenced by `lock`, compare-and-set by `if_version`,
        or last-write-wins with neither."""
        id_hash = hash_session_id(sid)
        self._check_size(data)
        token = parse_lock_token(lock) if lock is not None else None
        now = self.now_ms()
        expires = now + ttl * 1000
        write_id = os.urandom(16)
        common = {"data": data, "expires_at": expires, "updated_at": now, "write_id": write_id}
        applied = self._written_by(namespace, id_hash, write_id)

        def fenced(conn: Connection) -> WriteResult:
            values = dict(common, lock_token=None, lock_expires=None)
            where = and_(self._pk(namespace, id_hash), t.c.lock_token == token)
            version = self._update_bumping_version(conn, where, values)
            if version is None:
                raise LockLost("the lock is no longer held (lease expired and taken, or destroyed)")
            return WriteResult(version, _seconds(expires))

        def compare_and_set(conn: Connection) -> WriteResult:
            assert if_version is not None
            pk = self._pk(namespace, id_hash)
            if if_version > 0:
                changed = conn.execute(
                    update(t)
                    .where(pk, t.c.version == if_version, t.c.expires_at > now)
                    .values(version=if_version + 1, **common)
                ).rowcount
                if not changed:
                    raise VersionConflict(f"stored version is not {if_version}")
                return WriteResult(if_version + 1, _seconds(expires))
            absent = or_(t.c.version == 0, t.c.expires_at <= now)
            version = self._update_bumping_version(conn, and_(pk, absent), dict(common))
            if version is None:
                try:
                    conn.execute(t.insert().values(self._new_row(namespace, id_hash, now, common)))
                except sa_exc.IntegrityError as error:
                    raise VersionConflict("the session exists (if_version 0)") from error
                version = 1
            return WriteResult(version, _seconds(expires))

        def last_write_wins(conn: Connection) -> WriteResult:
            row = self._new_row(namespace, id_hash, now, common)
            if self._mysql:
                ins = mysql_insert(t).values(row)
                result = conn.execute(
                    ins.on_duplicate_key_update(
                        data=ins.inserted.data,
                        version=func.last_insert_id(t.c.version + 1),
                        expires_at=ins.inserted.expires_at,
                        updated_at=ins.inserted.updated_at,
                        write_id=ins.inserted.write_id,
                    )
                )
                version = int(result.lastrowid) or 1
            else:
                sins = sqlite_insert(t).values(row)
                version = int(
                    conn.execute(
                        sins.on_conflict_do_update(
                            index_elements=[t.c.namespace, t.c.id_hash],
                            set_={
                                "data": sins.excluded.data,
                                "version": t.c.version + 1,
                                "expires_at": sins.excluded.expires_at,
                                "updated_at": sins.excluded.updated_at,
                                "write_id": sins.excluded.write_id,
                            },
                        ).returning(t.c.version)
                    ).scalar_one()
                )
            return WriteResult(version, _seconds(expires))

        if token is not None:
            return self._run(fenced, applied)
        if if_version is not None:
            return self._run(compare_and_set, applied)
        return self._run(last_write_wins, applied)

    @staticmethod
    def _new_row(
        namespace: str, id_hash: bytes, now: int, common: dict[str, Any]
    ) -> dict[str, Any]:
        return dict(
            common,
            namespace=namespace,
            id_hash=id_hash,
            version=1,
            lock_token=None,
            lock_expires=None,
            created_at=now,
        )

    def touch(self, namespace: str, sid: str, ttl: int, *, lock: str | None = None) -> WriteResult:
        """Extend the expiry (and release `lock`), never reviving an expired session.

        The write is skipped when the expiry would move by less than
        touch_skip_fraction of ttl, which spares the database one write per request
        for sessions that are read far more often than they change.
        """
        id_hash = hash_session_id(sid)
        token = parse_lock_token(lock) if lock is not None else None
        now = self.now_ms()
        expires = now + ttl * 1000
        threshold = expires - int(ttl * 1000 * self.settings.touch_skip_fraction)
        pk = self._pk(namespace, id_hash)
        write_id = os.urandom(16)

        def with_lock(conn: Connection) -> WriteResult:
            live = and_(t.c.expires_at > now, t.c.version > 0)
            new_expiry = case(
                (and_(live, t.c.expires_at < threshold), expires), else_=t.c.expires_at
            )
            changed = conn.execute(
                update(t)
                .where(pk, t.c.lock_token == token)
                .values(
                    expires_at=new_expiry, lock_token=None, lock_expires=None, write_id=write_id
                )
            ).rowcount
            if not changed:
                raise LockLost("the lock is no longer held (lease expired and taken, or destroyed)")
            return after_touch(conn)

        def after_touch(conn: Connection) -> WriteResult:
            row = conn.execute(
                select(t.c.version, t.c.expires_at).where(pk, t.c.expires_at > now, t.c.version > 0)
            ).first()
            if row is None:
                raise SessionNotFound("no live session with this id")
            return WriteResult(int(row.version), _seconds(int(row.expires_at)))

        def without_lock(conn: Connection) -> WriteResult:
            row = conn.execute(
                select(t.c.version, t.c.expires_at).where(pk, t.c.expires_at > now, t.c.version > 0)
            ).first()
            if row is None:
                raise SessionNotFound("no live session with this id")
            if int(row.expires_at) >= threshold:
                return WriteResult(int(row.version), _seconds(int(row.expires_at)))
            changed = conn.execute(
                update(t)
                .where(pk, t.c.expires_at > now, t.c.version > 0, t.c.expires_at < expires)
                .values(expires_at=expires, write_id=write_id)
            ).rowcount
            if not changed:
                return after_touch(conn)
            return WriteResult(int(row.version), _seconds(expires))

        def applied(conn: Connection) -> WriteResult | None:
            row = conn.execute(select(t.c.write_id).where(pk)).first()
            if row is not None and row.write_id == write_id:
                return after_touch(conn)
            return None

        if token is not None:
            return self._run(with_lock, applied)
        return self._run(without_lock, applied)

    def destroy(self, namespace: str, sid: str) -> None:
        """Delete the session, whoever holds its lock (as PHP's files handler unlinks)."""
        id_hash = hash_session_id(sid)

        def op(conn: Connection) -> None:
            conn.execute(delete(t).where(self._pk(namespace, id_hash)))

        self._run(op)

    # -- maintenance ---------------------------------------------------------------

    def gc(self, batch: int | None = None, max_batches: int = 10_000) -> int:
        """Delete expired, unlocked rows in small batches; return how many went.

        Each batch selects primary keys through the expiry index and deletes exactly
        those rows (re-checking expiry), so no statement locks more than `batch` rows.
        """
        size = batch or self.settings.gc_batch
        total = 0
        for _ in range(max_batches):
            now = self.now_ms()
            dead = and_(
                t.c.expires_at <= now, or_(t.c.lock_expires.is_(None), t.c.lock_expires <= now)
            )

            def one_batch(conn: Connection, dead: ColumnElement[bool] = dead) -> tuple[int, int]:
                keys = conn.execute(
                    select(t.c.namespace, t.c.id_hash)
                    .where(dead)
                    .order_by(t.c.expires_at)
                    .limit(size)
                ).all()
                if not keys:
                    return 0, 0
                deleted = conn.execute(
                    delete(t).where(
                        tuple_(t.c.namespace, t.c.id_hash).in_([tuple(k) for k in keys]), dead
                    )
                ).rowcount
                return len(keys), int(deleted)

            found, deleted = self._run(one_batch)
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

        return self._run(op)

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as error:
            raise StoreUnavailable(
                f"database unreachable: {getattr(error, 'orig', error)}"
            ) from error
