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
    text,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import DBAPIError

from session_service.ids import is_valid_namespace

log = logging.getLogger(__name__)

#: 1: the first schema. 2: `namespace` compared byte for byte on MySQL/MariaDB
#: (utf8mb4_bin; it was the server's case- and accent-insensitive default).
SCHEMA_VERSION = 2
metadata = MetaData()

#: the namespace column's type there: a binary collation, so 'A' is not 'a' (issue 13.5)
NAMESPACE_COLLATION = "utf8mb4_bin"
Namespace = String(64).with_variant(
    mysql.VARCHAR(64, charset="utf8mb4", collation=NAMESPACE_COLLATION), "mysql", "mariadb"
)


#: MEDIUMBLOB on MySQL/MariaDB (up to 16 MiB), BLOB elsewhere.
Payload = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
Hash = LargeBinary(32).with_variant(mysql.BINARY(32), "mysql", "mariadb")
Token = LargeBinary(16).with_variant(mysql.BINARY(16), "mysql", "mariadb")

sessions = Table(
    "sessions",
    metadata,
    Column("namespace", Namespace, primary_key=True),
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
    if engine.dialect.name in ("mysql", "mariadb"):
        namespaces_binary(engine)
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


def namespaces_binary(engine: Engine) -> None:
    """Schema 2 on MySQL/MariaDB: make `namespace` compare byte for byte.

    Going from a case-insensitive collation to a binary one can never make two rows'
    keys equal, so the ALTER cannot fail on data. But namespaces that the old
    collation held equal (`A` and `a`, `shöp` and `shop`) were one tenant, each
    reading and writing the other's sessions: splitting them silently would hand
    each row to whichever tenant happened to create it. That is refused, naming
    them, until the operator deletes the rows of the one no longer configured.
    """
    with engine.connect() as conn:
        collation = conn.execute(
            text(
                "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE "
                "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'sessions' "
                "AND COLUMN_NAME = 'namespace'"
            )
        ).scalar()
        if collation == NAMESPACE_COLLATION:
            return
        merged = conn.execute(
            text(
                "SELECT GROUP_CONCAT(DISTINCT CAST(namespace AS BINARY) SEPARATOR 0x00) "
                "FROM sessions GROUP BY namespace "
                "HAVING COUNT(DISTINCT CAST(namespace AS BINARY)) > 1"
            )
        ).all()
        if merged:
            groups = [
                " and ".join(repr(name.decode("utf-8", "replace")) for name in row[0].split(b"\0"))
                for row in merged
            ]
            raise SchemaConflict(
                f"namespaces {'; '.join(groups)} were one tenant under the collation "
                f"{collation} and may hold each other's sessions; delete the sessions of "
                "those no longer configured (DELETE FROM sessions WHERE CAST(namespace AS "
                "BINARY) = '<namespace>'), then migrate again"
            )
        stored = [
            bytes(row[0]).decode("utf-8", "replace")
            for row in conn.execute(
                text("SELECT DISTINCT CAST(namespace AS BINARY) FROM sessions")
            ).all()
        ]
        outside = [name for name in stored if not is_valid_namespace(name)]
        if outside:
            log.warning(
                "sessions of namespaces %s remain but can no longer be configured (names are "
                "1-64 characters of [a-z0-9_.-]); they expire and gc deletes them",
                ", ".join(repr(name) for name in outside),
            )
        log.info("sessions.namespace: collation %s to %s", collation, NAMESPACE_COLLATION)
        conn.execute(
            text(
                "ALTER TABLE sessions MODIFY namespace VARCHAR(64) CHARACTER SET utf8mb4 "
                f"COLLATE {NAMESPACE_COLLATION} NOT NULL"
            )
        )
