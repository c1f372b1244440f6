"""Waiting for a session's lease without tying up a thread per waiter.

Waiters for one session in this process queue on a FIFO asyncio lock, so they are
served in arrival order and only the head of the queue polls the database. A lock
request that finds no queue for its session tries once before making one. A
release done by this process wakes the head at once; a release by another
instance is seen at the next poll (backoff from 2 ms to 25 ms, never past the
holder's lease end).

A waiter whose client goes away is not given the lease: the lock endpoint passes
a `departed` coroutine (it returns when the client's connection is gone, read as
ASGI's `http.disconnect`), watched only once the request starts to wait, so the
usual uncontended lock costs nothing more. The head of the queue looks at it
before each attempt; a waiter further back looks when its turn comes; and a lease
that an attempt took while the client was leaving is released at once, so the
session is not blocked for a whole lease by nobody (issue 13 item 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NoReturn

from session_service import metrics
from session_service.api.problems import ApiError
from session_service.async_store import AsyncSessionStore
from session_service.errors import LockTimeout, StoreError
from session_service.store import SessionRecord

log = logging.getLogger(__name__)

_FIRST_POLL = 0.002
_MAX_POLL = 0.025


class ClientGone(ApiError):
    """The client closed its connection while waiting: nobody to answer (nginx logs 499)."""

    def __init__(self) -> None:
        super().__init__(499, "client_gone", "the client went away while waiting for the lock")


async def _never() -> None:
    await asyncio.Event().wait()


@dataclass
class _Gate:
    queue: asyncio.Lock = field(default_factory=asyncio.Lock)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    users: int = 0


class LockWaiter:
    def __init__(
        self,
        store: AsyncSessionStore,
        record_wait: Callable[[float], None] = metrics.LOCK_WAIT.observe,
    ) -> None:
        self._store = store
        self._gates: dict[tuple[str, str], _Gate] = {}
        #: where each lock request's wait goes (the service counts it in a RequestTally)
        self._record_wait = record_wait

    def notify(self, namespace: str, sid: str) -> None:
        """Tell a local waiter that this process just released the session."""
        gate = self._gates.get((namespace, sid))
        if gate is not None:
            gate.released.set()

    async def acquire(
        self,
        namespace: str,
        sid: str,
        wait_ms: int,
        lease_ms: int,
        departed: Callable[[], Awaitable[object]] = _never,
    ) -> SessionRecord:
        """The session's lease, waiting up to wait_ms for its holder; LockTimeout when
        the wait ends, ClientGone when `departed` returned first (no lease is kept)."""
        started = time.monotonic()
        deadline = started + wait_ms / 1000
        key = (namespace, sid)
        if key not in self._gates:
            # Nobody in this process waits for this session (the usual case): one attempt
            # before building a queue. Requests that queue are never overtaken this way,
            # because their gate exists; only arrivals at the same instant race.
            attempt = await self._store.try_lock(namespace, sid, lease_ms)
            if attempt.record is not None:
                self._record_wait(time.monotonic() - started)
                return attempt.record
            if time.monotonic() >= deadline:  # wait_ms=0: no second attempt
                self._timed_out(started)
                held_ms = max(0, attempt.held_until_ms - self._store.now_ms())
                raise LockTimeout("session is locked by another request", held_ms)
        gate = self._gates.setdefault(key, _Gate())
        gate.users += 1
        watch = asyncio.ensure_future(departed())
        try:
            if gate.queue.locked():
                try:
                    await asyncio.wait_for(gate.queue.acquire(), deadline - time.monotonic())
                except TimeoutError:
                    self._timed_out(started)
                    raise LockTimeout("session is locked by another request", 1000) from None
            else:
                await gate.queue.acquire()
            try:
                return await self._poll(gate, namespace, sid, lease_ms, started, deadline, watch)
            finally:
                gate.queue.release()
        finally:
            watch.cancel()
            gate.users -= 1
            if gate.users == 0:
                self._gates.pop(key, None)

    async def _poll(
        self,
        gate: _Gate,
        namespace: str,
        sid: str,
        lease_ms: int,
        started: float,
        deadline: float,
        watch: asyncio.Future[object],
    ) -> SessionRecord:
        pause = _FIRST_POLL
        while True:
            if watch.done():
                self._departed(started)
            gate.released.clear()
            attempt = await self._store.try_lock(namespace, sid, lease_ms)
            if attempt.record is not None:
                if watch.done():  # taken while the client was leaving: give it back
                    await self._give_back(namespace, sid, attempt.record)
                    self._departed(started)
                self._record_wait(time.monotonic() - started)
                return attempt.record
            remaining = deadline - time.monotonic()
            held_for = max(0.0, attempt.held_until_ms / 1000 - self._store.now_ms() / 1000)
            if remaining <= 0:
                self._timed_out(started)
                raise LockTimeout("session is locked by another request", int(held_for * 1000))
            sleep = min(remaining, pause, max(held_for, 0.001))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gate.released.wait(), sleep)
            pause = min(_MAX_POLL, pause * 1.5)

    async def _give_back(self, namespace: str, sid: str, record: SessionRecord) -> None:
        assert record.lock is not None
        try:
            await self._store.release(namespace, sid, record.lock)
        except StoreError as error:  # the lease then ends by itself
            log.warning("could not release a lease taken for a departed client: %s", error)
        self.notify(namespace, sid)

    def _departed(self, started: float) -> NoReturn:
        self._record_wait(time.monotonic() - started)
        log.info("a lock waiter's client went away; no lease kept for it")
        raise ClientGone

    def _timed_out(self, started: float) -> None:
        self._record_wait(time.monotonic() - started)
        metrics.LOCK_TIMEOUTS.inc()
