"""What the store's operations see as `conn` on the event loop: an asyncmy connection
with SQLAlchemy Connection's execute(), awaited through the greenlet bridge.

Each statement's SQL is compiled once by SQLAlchemy for the connected server
(StatementCache); results come back as the few parts of a CursorResult the
operations use (Outcome). The wrapper also keeps what the pool needs to know of
its connection (when it was made, since when it is idle, whether it broke), so
nothing is stamped on the driver's own object.
"""

from __future__ import annotations

import copy
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

from asyncmy import errors as my_errors
from sqlalchemy import exc as sa_exc

from session_service.greenlet_bridge import await_in_greenlet
from session_service.hexliteral import with_hex_literals
from session_service.mysql_conventions import CONNECTION_LOST, mysql_code


def positional_dialect(dialect: Any) -> Any:
    """The engine's dialect, as it knows the server, but compiling `%s` placeholders:
    asyncmy prepares a statement only when its parameters are positional."""
    positional = copy.copy(dialect)
    positional.paramstyle = "format"
    positional.positional = True
    return positional


class Compiled:
    """One statement's SQL for the driver, compiled once, and its column names."""

    def __init__(self, statement: Any, dialect: Any) -> None:
        self.compiled = statement.compile(dialect=dialect)
        self.sql = str(self.compiled)
        self.positional: Sequence[str] | None = self.compiled.positiontup
        #: values of literals SQLAlchemy made into binds (e.g. the 0 in version > 0)
        self.defaults: dict[str, Any] = dict(self.compiled.params)
        #: the parameters the SQL uses: the store's dicts carry more, and the driver
        #: escapes every value it is given
        self.names = tuple(dict.fromkeys(self.compiled.bind_names.values()))
        #: the namedtuple of its result rows, made from the first result's columns
        self.row_type: Any = None

    def arguments(self, params: dict[str, Any]) -> Any:
        defaults = self.defaults
        if self.positional is None:
            return {name: params[name] if name in params else defaults[name] for name in self.names}
        return tuple(
            [params[name] if name in params else defaults[name] for name in self.positional]
        )


class StatementCache:
    """Compiled statements and result row types, shared by every connection of a pool.
    Compiled lazily: the SQL depends on what the dialect learnt of the server."""

    def __init__(self, dialect: Any, prepared: bool) -> None:
        self.dialect = dialect
        #: server-side prepared statements (binary protocol), else the text protocol
        self.prepared = prepared
        self._compiled: dict[int, Compiled] = {}
        self._compile_with: Any = None
        self._row_types: dict[tuple[str, ...], Any] = {}

    def compiled(self, statement: Any) -> Compiled:
        found = self._compiled.get(id(statement))
        if found is None:
            if self._compile_with is None:
                self._compile_with = (
                    positional_dialect(self.dialect) if self.prepared else self.dialect
                )
            found = self._compiled[id(statement)] = Compiled(statement, self._compile_with)
        return found

    def row_type(self, names: tuple[str, ...]) -> Any:
        found = self._row_types.get(names)
        if found is None:
            found = self._row_types[names] = namedtuple("Row", names, rename=True)
        return found


class Outcome:
    """The parts of a SQLAlchemy CursorResult that the store's operations use."""

    __slots__ = ("_rows", "lastrowid", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise sa_exc.NoResultFound("expected exactly one row")
        return self._rows[0]

    def all(self) -> list[Any]:
        return self._rows

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


class GreenConnection:
    """One pooled asyncmy connection, and execute() for the store's operations."""

    __slots__ = ("_cursor", "born", "broken", "dialect", "idle_since", "raw", "statements")

    def __init__(self, raw: Any, statements: StatementCache, born: float) -> None:
        self.raw = raw
        self.statements = statements
        #: what the store asks about the server (insert_returning picks the lock statement)
        self.dialect = statements.dialect
        self.born = born
        self.idle_since: float | None = None
        self.broken = False
        #: one cursor, reused: a buffered cursor keeps nothing between statements that
        #: the next execute() does not reset
        self._cursor: Any = None

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> Outcome:
        compiled = self.statements.compiled(statement)
        args = compiled.arguments(params or {})
        try:
            return await_in_greenlet(
                self._execute(
                    compiled, args if self.statements.prepared else with_hex_literals(args)
                )
            )
        except my_errors.Error as error:
            code = mysql_code(error)
            if code is None or code in CONNECTION_LOST:
                self.broken = True
            raise sa_exc.DBAPIError.instance(compiled.sql, args, error, my_errors.Error) from error
        except OSError as error:  # a socket error asyncmy did not wrap
            self.broken = True
            lost = my_errors.OperationalError(2013, str(error))
            raise sa_exc.OperationalError(compiled.sql, args, lost) from error

    async def _execute(self, compiled: Compiled, args: Any) -> Outcome:
        cursor = self._cursor
        if cursor is None:
            cursor = self._cursor = self.raw.cursor()
        await cursor.execute(compiled.sql, args)
        rows: list[Any] = []
        if cursor.description:
            row_type = compiled.row_type
            if row_type is None:
                row_type = compiled.row_type = self.statements.row_type(
                    tuple(d[0] for d in cursor.description)
                )
            rows = [row_type(*row) for row in await cursor.fetchall()]
        return Outcome(rows, cursor.rowcount, cursor.lastrowid)
