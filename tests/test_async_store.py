"""The service's event-loop path on the real MariaDB: AsyncSessionStore over asyncmy,
with bytes sent as hexadecimal literals up to HEX_LIMIT and escaped beyond it."""

from __future__ import annotations

import asyncio
import os

import pytest

from session_service.async_store import AsyncSessionStore
from session_service.hexliteral import HEX_LIMIT
from session_service.settings import Settings
from session_service.store import SessionStore
from tests.support import session_id

SIZES = [0, 1, 256, 64 * 1024, HEX_LIMIT, HEX_LIMIT + 1]


def _payload(size: int) -> bytes:
    every_byte = bytes(range(256))  # quotes, backslashes, NUL, 0x1a, high bytes
    return (every_byte * (size // 256 + 1))[: size // 2] + os.urandom(size - size // 2)


@pytest.mark.parametrize("size", SIZES)
def test_data_round_trips_exactly_through_lock_write_and_read(mariadb_url: str, size: int) -> None:
    store = SessionStore(Settings(db_url=mariadb_url, max_data_bytes=8 * 1024 * 1024))
    sessions = AsyncSessionStore(store)
    assert sessions.in_event_loop, "a single MariaDB primary runs on the event loop"
    sid, data = session_id(), _payload(size)

    async def main() -> None:
        try:
            first = await sessions.try_lock("default", sid, 5000)
            assert first.record is not None and first.record.new
            await sessions.write("default", sid, data, 600, lock=first.record.lock)
            read = await sessions.read("default", sid)
            assert read is not None and read.data == data
            again = await sessions.try_lock("default", sid, 5000)
            assert again.record is not None and again.record.data == data
            written = await sessions.write("default", sid, data[::-1], 600, lock=again.record.lock)
            assert written.version == 2
            assert (await sessions.read("default", sid)).data == data[::-1]  # type: ignore[union-attr]
        finally:
            await sessions.close()
            store.close()

    asyncio.run(main())
