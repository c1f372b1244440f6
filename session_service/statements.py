"""Every SQL statement the store runs, built once per engine with bound parameters.

Bind names never equal column names: SQLAlchemy would otherwise add a parameter
that happens to be named like a column to an UPDATE's SET clause.

Building a statement object costs more Python time than sending it, so the store
builds each one here, once, and executes it with a parameter dict. Reading this
file is reading the store's whole SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from session_service.schema import sessions as t

NOW: Any = bindparam("now")
PK: ColumnElement[bool] = and_(t.c.namespace == bindparam("ns"), t.c.id_hash == bindparam("h"))
LIVE: ColumnElement[bool] = and_(t.c.expires_at > NOW, t.c.version > 0)
LEASE_FREE: ColumnElement[bool] = or_(t.c.lock_token.is_(None), t.c.lock_expires <= NOW)
#: the stored version is the one a compare-and-set expects, and live
SEEN_LIVE: ColumnElement[bool] = and_(
    t.c.version == bindparam("seen_version"), t.c.expires_at > NOW
)
#: the session does not exist for a compare-and-set expecting version 0
NOT_LIVE: ColumnElement[bool] = or_(t.c.version == 0, t.c.expires_at <= NOW)
DEAD: ColumnElement[bool] = and_(
    t.c.expires_at <= NOW, or_(t.c.lock_expires.is_(None), t.c.lock_expires <= NOW)
)

#: Values of a new row; the caller's parameter dict supplies each bind.
NEW_ROW = {
    "namespace": bindparam("ns"),
    "id_hash": bindparam("h"),
    "data": bindparam("payload"),
    "version": bindparam("new_version"),
    "expires_at": bindparam("expires"),
    "lock_token": bindparam("token"),
    "lock_expires": bindparam("lease_end"),
    "write_id": bindparam("wid"),
    "created_at": NOW,
    "updated_at": NOW,
}
_WRITE_VALUES = {
    "data": bindparam("payload"),
    "expires_at": bindparam("expires"),
    "updated_at": NOW,
    "write_id": bindparam("wid"),
}


@dataclass(frozen=True)
class Statements:
    """The statements for one dialect. `returning` is True where UPDATE ... RETURNING exists.

    `lock_upsert` takes a free lease (creating the row of a new session) and reads the
    session back in one statement. On MySQL/MariaDB it needs INSERT ... RETURNING,
    which MariaDB has from 10.5 and MySQL lacks: the store uses it when the connected
    server can run it (`dialect.insert_returning`) and falls back to `lock_read` +
    `lock_take` (two round trips) otherwise.
    """

    returning: bool
    read: Any
    exists: Any
    lock_read: Any
    lock_insert: Any
    lock_take: Any
    lock_upsert: Any
    write_fenced: Any
    write_fenced_cas: Any
    write_fenced_absent: Any
    write_cas: Any
    write_cas_absent: Any
    lease_of: Any
    insert_new: Any
    upsert: Any
    written_by: Any
    touch_locked: Any
    touch_read: Any
    touch_extend: Any
    release: Any
    destroy: Any
    gc_select: Any
    gc_delete: Any


def _bump_version(where: ColumnElement[bool], values: dict[str, Any], mysql: bool) -> Any:
    """UPDATE with version = version + 1 that reports the new version in one round trip:
    LAST_INSERT_ID(expr) on MySQL/MariaDB (read back as lastrowid), RETURNING elsewhere."""
    if mysql:
        return update(t).where(where).values(version=func.last_insert_id(t.c.version + 1), **values)
    return update(t).where(where).values(version=t.c.version + 1, **values).returning(t.c.version)


def _lock_returning(token: Any) -> tuple[Any, ...]:
    """What a lock upsert reports: the lease as it now stands, and the data if it is ours."""
    return (
        t.c.lock_token,
        t.c.lock_expires,
        t.c.version,
        t.c.expires_at,
        case((t.c.lock_token == token, t.c.data), else_=None),
    )


def build(dialect_name: str) -> Statements:
    mysql = dialect_name in ("mysql", "mariadb")
    token: Any = bindparam("token")

    if mysql:
        ins = mysql_insert(t).values(**NEW_ROW)
        upsert: Any = ins.on_duplicate_key_update(
            data=ins.inserted.data,
            version=func.last_insert_id(t.c.version + 1),
            expires_at=ins.inserted.expires_at,
            updated_at=ins.inserted.updated_at,
            write_id=ins.inserted.write_id,
        )
        # MySQL applies ON DUPLICATE KEY UPDATE assignments left to right (each sees
        # the ones before it), MariaDB with SIMULTANEOUS_ASSIGNMENT all at once. These
        # two give the same result either way: lock_expires follows a lock_token that
        # is (now, or already) ours, or a lease that was free before the statement.
        lock_upsert = ins.on_duplicate_key_update(
            [
                ("lock_token", case((LEASE_FREE, token), else_=t.c.lock_token)),
                (
                    "lock_expires",
                    case(
                        (or_(t.c.lock_token == token, LEASE_FREE), bindparam("lease_end")),
                        else_=t.c.lock_expires,
                    ),
                ),
            ]
        ).returning(*_lock_returning(token))
    else:
        sins = sqlite_insert(t).values(**NEW_ROW)
        upsert = sins.on_conflict_do_update(
            index_elements=[t.c.namespace, t.c.id_hash],
            set_={
                "data": sins.excluded.data,
                "version": t.c.version + 1,
                "expires_at": sins.excluded.expires_at,
                "updated_at": sins.excluded.updated_at,
                "write_id": sins.excluded.write_id,
            },
        ).returning(t.c.version)
        # SQLite serialises writers, so one upsert takes a free lease or reports the holder.
        lock_upsert = sins.on_conflict_do_update(
            index_elements=[t.c.namespace, t.c.id_hash],
            set_={
                "lock_token": case((LEASE_FREE, sins.excluded.lock_token), else_=t.c.lock_token),
                "lock_expires": case(
                    (LEASE_FREE, sins.excluded.lock_expires), else_=t.c.lock_expires
                ),
            },
        ).returning(*_lock_returning(token))

    unlock = {"lock_token": None, "lock_expires": None}
    return Statements(
        returning=not mysql,
        read=select(t.c.data, t.c.version, t.c.expires_at).where(PK, LIVE),
        exists=select(literal(1)).where(PK, or_(LIVE, t.c.lock_expires > NOW)),
        lock_read=select(
            t.c.lock_token, t.c.lock_expires, t.c.version, t.c.expires_at, t.c.write_id, t.c.data
        ).where(PK),
        lock_insert=t.insert().values(**NEW_ROW),
        lock_take=update(t)
        .where(
            PK,
            t.c.version == bindparam("seen_version"),
            t.c.write_id.is_not_distinct_from(bindparam("seen_wid")),
            LEASE_FREE,
        )
        .values(lock_token=token, lock_expires=bindparam("lease_end")),
        lock_upsert=lock_upsert,
        write_fenced=_bump_version(
            and_(PK, t.c.lock_token == bindparam("held")), {**_WRITE_VALUES, **unlock}, mysql
        ),
        # lock + if_version: both must hold; the lock is released by the write
        write_fenced_cas=update(t)
        .where(PK, t.c.lock_token == bindparam("held"), SEEN_LIVE)
        .values(version=bindparam("new_version"), **_WRITE_VALUES, **unlock),
        write_fenced_absent=_bump_version(
            and_(PK, t.c.lock_token == bindparam("held"), NOT_LIVE),
            {**_WRITE_VALUES, **unlock},
            mysql,
        ),
        # if_version alone: only while no one holds the lease (the holder's fenced write
        # would overwrite it), and clearing an expired holder's token for the same reason
        write_cas=update(t)
        .where(PK, SEEN_LIVE, LEASE_FREE)
        .values(version=bindparam("new_version"), **_WRITE_VALUES, **unlock),
        write_cas_absent=_bump_version(
            and_(PK, NOT_LIVE, LEASE_FREE), {**_WRITE_VALUES, **unlock}, mysql
        ),
        lease_of=select(t.c.lock_token, t.c.lock_expires).where(PK),
        insert_new=t.insert().values(**NEW_ROW),
        upsert=upsert,
        written_by=select(t.c.version, t.c.expires_at, t.c.write_id).where(PK),
        touch_locked=update(t)
        .where(PK, t.c.lock_token == bindparam("held"))
        .values(
            expires_at=case(
                (and_(LIVE, t.c.expires_at < bindparam("threshold")), bindparam("expires")),
                else_=t.c.expires_at,
            ),
            write_id=bindparam("wid"),
            **unlock,
        ),
        touch_read=select(t.c.version, t.c.expires_at).where(PK, LIVE),
        touch_extend=update(t)
        .where(PK, LIVE, t.c.expires_at < bindparam("expires"))
        .values(expires_at=bindparam("expires"), write_id=bindparam("wid")),
        release=update(t).where(PK, t.c.lock_token == bindparam("held")).values(**unlock),
        destroy=delete(t).where(PK),
        gc_select=select(t.c.namespace, t.c.id_hash)
        .where(DEAD)
        .order_by(t.c.expires_at)
        .limit(bindparam("batch")),
        gc_delete=delete(t).where(
            tuple_(t.c.namespace, t.c.id_hash).in_(bindparam("keys", expanding=True)), DEAD
        ),
    )
