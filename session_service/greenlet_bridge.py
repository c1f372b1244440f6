"""Running synchronous code that awaits, through a greenlet.

The store's operations are plain functions that call `conn.execute(...)`. On the
event loop, each execute must await the driver: run_in_greenlet runs the whole
function in a greenlet, and await_in_greenlet, called inside it, hands the
awaitable to the task that awaits run_in_greenlet and resumes with its result.
(SQLAlchemy's asyncio extension does the same; bench/store.py compares the two.)
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import greenlet

T = TypeVar("T")


def await_in_greenlet(awaitable: Awaitable[T]) -> T:
    """From synchronous code running under run_in_greenlet: wait for `awaitable`."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Worker):
        raise RuntimeError("await_in_greenlet called outside run_in_greenlet")
    return cast(T, current.parent.switch(awaitable))


class _Done:
    """What a worker greenlet hands back when its call has finished."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any, error: BaseException | None) -> None:
        self.value = value
        self.error = error


class _Worker(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet that runs one call after another. Reused, because each new greenlet
    costs Python a fresh frame stack: an mmap and an munmap per call (seen with strace)."""

    def __init__(self) -> None:
        super().__init__(self._serve)

    def _serve(self, job: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
        while True:
            function, args = job
            try:
                done = _Done(function(*args), None)
            except BaseException as error:  # handed to the awaiting task
                done = _Done(None, error)
            del function, args
            job = self.parent.switch(done)


class _IdleWorkers(threading.local):
    """Idle workers of this thread (a greenlet can only run in the thread that made it)."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []


_idle = _IdleWorkers()


async def run_in_greenlet(function: Callable[..., T], *args: Any) -> T:
    """Call a synchronous `function`; each await_in_greenlet inside it is awaited here."""
    idle = _idle.workers
    worker = idle.pop() if idle else _Worker()
    request = worker.switch((function, args))
    while not isinstance(request, _Done):
        try:
            value = await request
        except BaseException as error:  # hand it to the code that awaited
            request = worker.throw(error)
        else:
            request = worker.switch(value)
    if not worker.dead:
        idle.append(worker)
    if request.error is not None:
        raise request.error
    return cast(T, request.value)
