"""Operations and the executors that run them.

SessionStore builds each operation (its statements, parameters and the functions
that run them on a connection) and hands it to an executor: the synchronous
EngineExecutor here (SQLAlchemy's pooled engine, for the library, the CLI, SQLite,
replicas and Galera), or the event loop's GreenletExecutor (async_store.py), which
runs the very same functions in a greenlet on asyncmy connections. Both retry
through retry.run_with_retry: one loop, one policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from session_service import metrics
from session_service.errors import StoreUnavailable
from session_service.replicas import ReplicaSet
from session_service.retry import RetryPolicy, run_with_retry

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


def _not_known(conn: Any) -> None:
    return None


class Operation(Generic[T]):
    """One store operation: `work` run on a connection, retried by the executor.

    `applied` answers, after an ambiguous failure, whether an earlier try took effect
    (its result, else None). `writes` marks operations after which replica reads wait
    for the primary's position; `replica_read` a lock-free read a replica may serve.
    """

    __slots__ = ("applied", "replica_read", "work", "writes")

    def __init__(
        self,
        work: Callable[[Any], T],
        applied: Callable[[Any], T | None] = _not_known,
        *,
        writes: bool = True,
        replica_read: bool = False,
    ) -> None:
        self.work = work
        self.applied = applied
        self.writes = writes
        self.replica_read = replica_read


class Executor(Protocol):
    """Runs operations synchronously, returning their result."""

    def run(self, operation: Operation[T]) -> T: ...


class AsyncExecutor(Protocol):
    """Runs operations for the event loop, returning their result when awaited."""

    async def run(self, operation: Operation[T]) -> T: ...


class EngineExecutor:
    """Runs operations on SQLAlchemy's engine (PyMySQL or SQLite), in the caller's thread;
    lock-free reads on a healthy, caught-up replica when there is one."""

    def __init__(self, engine: Engine, retry: RetryPolicy, replicas: ReplicaSet | None) -> None:
        self.engine = engine
        self.retry = retry
        self.replicas = replicas

    def run(self, operation: Operation[T]) -> T:
        replicas = self.replicas
        if replicas is not None:
            if operation.replica_read:
                served = replicas.read(operation.work)
                if served is not None:
                    return served[0]
            elif operation.writes:
                operation = _noting_writes(operation, replicas)
        if operation.replica_read:
            metrics.DB_READS.labels(db="primary").inc()
        return run_with_retry(self.retry, operation, self)

    # -- the ConnectionSource of run_with_retry --------------------------------------------

    def acquire(self) -> Connection:
        try:
            return self.engine.connect()
        except sa_exc.TimeoutError as error:
            metrics.DB_ERRORS.labels(kind="pool_timeout").inc()
            raise StoreUnavailable("no database connection free in time") from error

    def release(self, conn: Connection, error: BaseException | None) -> None:
        conn.close()  # the pool invalidates a connection that failed as disconnected

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)


def _noting_writes(operation: Operation[T], replicas: ReplicaSet) -> Operation[T]:
    """The operation, noting the primary's GTID after it so that later replica reads
    wait for this write."""
    work = operation.work

    def noted(conn: Connection) -> T:
        result = work(conn)
        replicas.note_write(conn)
        return result

    return Operation(noted, operation.applied, writes=True)
