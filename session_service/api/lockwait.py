"""Waiting for a session's lease without tying up a thread per waiter.

Waiters for one session in this process queue on a FIFO asyncio lock, so they are
served in arrival order and only the head of the queue polls the database. A lock
request that finds no queue for its session tries once before making one. A
release done by this process wakes the head at once; a release by another
instance is seen at the next poll (backoff from 2 ms to 25 ms, never past the
holder's lease end).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from session_service import metrics
from session_service.async_store import AsyncSessionStore
from session_service.errors import LockTimeout
from session_service.store import SessionRecord

_FIRST_POLL = 0.002
_MAX_POLL = 0.025


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

    async def acquire(self, namespace: str, sid: str, wait_ms: int, lease_ms: int) -> SessionRecord:
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
                return await self._poll(gate, namespace, sid, lease_ms, started, deadline)
            finally:
                gate.queue.release()
        finally:
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
    ) -> SessionRecord:
        pause = _FIRST_POLL
        while True:
            gate.released.clear()
            attempt = await self._store.try_lock(namespace, sid, lease_ms)
            if attempt.record is not None:
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

    def _timed_out(self, started: float) -> None:
        self._record_wait(time.monotonic() - started)
        metrics.LOCK_TIMEOUTS.inc()
