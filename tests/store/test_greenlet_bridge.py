"""run_in_greenlet/await_in_greenlet: the bridge that runs the store's synchronous
operations in the event loop, with its worker greenlets reused between calls."""

from __future__ import annotations

import asyncio

import pytest

from session_service.greenlet_bridge import await_in_greenlet, run_in_greenlet


def _sums(label: str, steps: int) -> str:
    total = 0
    for step in range(steps):
        total += await_in_greenlet(_later(step))
    return f"{label}:{total}"


async def _later(value: int) -> int:
    await asyncio.sleep(0.001)
    return value


def _fails_after_await() -> None:
    await_in_greenlet(asyncio.sleep(0))
    raise ValueError("from the synchronous side")


def _awaits_a_failure() -> str:
    try:
        await_in_greenlet(_raises())
    except KeyError as error:
        return f"caught {error}"
    return "not raised"


async def _raises() -> None:
    raise KeyError("from the awaited side")


def test_interleaved_calls_keep_their_own_state() -> None:
    async def main() -> list[str]:
        return await asyncio.gather(*(run_in_greenlet(_sums, f"t{i}", 5 + i) for i in range(20)))

    results = asyncio.run(main())
    assert results == [f"t{i}:{sum(range(5 + i))}" for i in range(20)]


def test_errors_cross_the_bridge_both_ways_and_workers_stay_usable() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="synchronous side"):
            await run_in_greenlet(_fails_after_await)
        assert await run_in_greenlet(_awaits_a_failure) == "caught 'from the awaited side'"
        assert await run_in_greenlet(_sums, "after", 3) == "after:3"

    asyncio.run(main())


def test_a_cancelled_call_unwinds_and_the_next_one_runs() -> None:
    unwound: list[bool] = []

    def slow() -> None:
        try:
            await_in_greenlet(asyncio.sleep(10))
        finally:
            unwound.append(True)

    async def main() -> str:
        task = asyncio.create_task(run_in_greenlet(slow))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await run_in_greenlet(_sums, "next", 2)

    assert asyncio.run(main()) == "next:1"
    assert unwound == [True]


def test_await_outside_the_bridge_is_refused() -> None:
    pending = _later(1)
    with pytest.raises(RuntimeError, match="outside run_in_greenlet"):
        await_in_greenlet(pending)
    pending.close()
