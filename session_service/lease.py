"""Taking a session's lease: the lock statement(s) and the record a holder gets.

One round trip where the server has INSERT ... RETURNING (SQLite, MariaDB 10.5+),
a read and a conditional update where it does not (MySQL); docs/design.md
explains both. SessionStore.try_lock_op wraps `take` into an operation.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc

from session_service.errors import InvalidLockToken
from session_service.records import LockAttempt, SessionRecord
from session_service.statements import Statements

Params = dict[str, Any]


def seconds(ms: int) -> int:
    """Unix milliseconds to the seconds the API reports, rounded up."""
    return (ms + 999) // 1000


def parse_lock_token(token: str) -> bytes:
    try:
        raw = bytes.fromhex(token)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise InvalidLockToken("lock must be the 32-hex-digit token returned by lock")
    return raw


def locked_record(
    token: bytes, lease_end: int, version: int, expires_at: int, data: bytes, now: int
) -> SessionRecord:
    is_new = version == 0 or expires_at <= now
    return SessionRecord(
        data=b"" if is_new else data,
        version=0 if is_new else version,
        expires_at=0 if is_new else seconds(expires_at),
        lock=token.hex(),
        lease_expires_at_ms=lease_end,
        new=is_new,
    )


def take(sql: Statements, upsert: bool | None, conn: Any, p: Params) -> LockAttempt:
    """One round trip where the server has INSERT ... RETURNING (SQLite, MariaDB 10.5+);
    a read and a conditional update where it does not (MySQL)."""
    if upsert is None:  # None: as the server allows; False: MySQL's path, for the tests
        upsert = sql.returning or conn.dialect.insert_returning
    if upsert:
        return _upsert(sql, conn, p)
    return _read_take(sql, conn, p)


def _read_take(sql: Statements, conn: Any, p: Params) -> LockAttempt:
    """Read, then take the lease only if nothing changed since (version and write id).

    For servers without INSERT ... RETURNING (MySQL): a waiter's poll costs one
    indexed read; taking a free lease, one read and one single-row update.
    """
    now = p["now"]
    row = conn.execute(sql.lock_read, p).first()
    if row is None:
        try:
            conn.execute(sql.lock_insert, p)
        except sa_exc.IntegrityError:
            return LockAttempt(None, now)  # created by a concurrent request: poll again
        return LockAttempt(locked_record(p["token"], p["lease_end"], 0, now, b"", now))
    mine = row.lock_token == p["token"]  # an ambiguous earlier attempt took it already
    if not mine and row.lock_token is not None and int(row.lock_expires) > now:
        return LockAttempt(None, int(row.lock_expires))
    p.update(seen_version=row.version, seen_wid=row.write_id)
    if not mine and not conn.execute(sql.lock_take, p).rowcount:
        return LockAttempt(None, now)  # changed under us: poll again
    return LockAttempt(
        locked_record(
            p["token"],
            p["lease_end"],
            int(row.version),
            int(row.expires_at),
            bytes(row.data),
            now,
        )
    )


def _upsert(sql: Statements, conn: Any, p: Params) -> LockAttempt:
    """Insert the placeholder row or take a free lease, and read it all back, at once."""
    row = conn.execute(sql.lock_upsert, p).one()
    if row[0] != p["token"]:
        return LockAttempt(None, int(row[1] or p["now"]))
    return LockAttempt(
        locked_record(p["token"], p["lease_end"], int(row[2]), int(row[3]), bytes(row[4]), p["now"])
    )
