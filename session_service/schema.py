"""Table definitions and the idempotent migration behind `session-service migrate`.

Times are integers in Unix milliseconds, so SQLite and MySQL compare them the same
way and no time zone ever enters the picture.
"""

from __future__ import annotations

import logging

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
metadata = MetaData()


#: MEDIUMBLOB on MySQL/MariaDB (up to 16 MiB), BLOB elsewhere.
Payload = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
Hash = LargeBinary(32).with_variant(mysql.BINARY(32), "mysql", "mariadb")
Token = LargeBinary(16).with_variant(mysql.BINARY(16), "mysql", "mariadb")

sessions = Table(
    "sessions",
    metadata,
    Column("namespace", String(64), primary_key=True),
    Column("id_hash", Hash, primary_key=True),
    Column("data", Payload, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("lock_token", Token, nullable=True),
    Column("lock_expires", BigInteger, nullable=True),
    Column("write_id", Token, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_sessions_expires_at", "expires_at"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

#: Named leases between service instances (background gc runs on one at a time).
leases = Table(
    "service_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

schema_info = Table(
    "session_service_schema",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)


def current_version(engine: Engine) -> int:
    """The schema version in the database, 0 when it has never been migrated."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(schema_info.name):
            return 0
        row = conn.execute(select(schema_info.c.version).where(schema_info.c.id == 1)).first()
        return int(row[0]) if row else 0


class SchemaConflict(RuntimeError):
    """A table the service needs exists with another shape (another application's)."""


def check_tables(engine: Engine) -> None:
    """Raise SchemaConflict when a table of ours exists without the columns we use.

    create_all(checkfirst=True) leaves an existing table alone, so a database that
    already has another application's `sessions` table would migrate "successfully"
    and then fail every request with "Unknown column".
    """
    found = inspect(engine)
    for table in metadata.sorted_tables:
        if not found.has_table(table.name):
            continue
        present = {column["name"].lower() for column in found.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name.lower() not in present]
        if missing:
            raise SchemaConflict(
                f'table "{table.name}" exists but is not session-service\'s (it has no '
                f"{', '.join(missing)} column{'s' if len(missing) > 1 else ''}); give "
                "session-service a database of its own, or rename that table"
            )


def migrate(engine: Engine) -> int:
    """Create or upgrade the schema; safe to run again and from several instances at once."""
    before = current_version(engine)
    if before > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {before} is newer than this release knows "
            f"({SCHEMA_VERSION}); upgrade session-service"
        )
    if before == SCHEMA_VERSION:
        return before
    check_tables(engine)
    try:
        metadata.create_all(engine, checkfirst=True)
    except DBAPIError as exc:  # another instance created a table between check and create
        log.info("schema created concurrently (%s); checking again", exc.orig)
        metadata.create_all(engine, checkfirst=True)
    check_tables(engine)
    with engine.begin() as conn:
        changed = conn.execute(
            update(schema_info).where(schema_info.c.id == 1).values(version=SCHEMA_VERSION)
        ).rowcount
        if not changed:
            try:
                conn.execute(schema_info.insert().values(id=1, version=SCHEMA_VERSION))
            except DBAPIError:
                log.info("schema version recorded concurrently")
    log.info("schema migrated from version %d to %d", before, SCHEMA_VERSION)
    return SCHEMA_VERSION
