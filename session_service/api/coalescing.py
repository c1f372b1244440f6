"""The transport the service's HTTP protocol writes through.

uvicorn writes a response's status line and headers, then its body: two send()
calls and, with TCP_NODELAY, two packets that wake the client twice. Here the
writes of one event-loop pass are joined (what TCP_CORK does in the kernel), and a
reply that is already whole goes out at once. It also hides the socket from uvicorn,
which would ask it for both addresses (seven system calls per connection, and PHP
opens one per request) where the event loop already knows them.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """A transport whose writes of one event-loop pass go out as one."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def write_whole(self, data: bytes) -> None:
        """A whole response in one piece: straight out, unless writes of this pass are
        still waiting (they go first)."""
        if self._pending:
            self._pending.append(data)
        elif not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            # uvicorn asks for the socket only to call getsockname()/getpeername() on
            # it; without it, it reads the "sockname" and "peername" the loop has.
            return default
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    @property
    def inner(self) -> asyncio.Transport:
        """The event loop's transport, under this one."""
        return self._transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
