"""uvicorn's httptools protocol, with each response sent in one system call.

uvicorn writes a response's status line and headers, then its body, as two
transport writes: two send() calls and, with TCP_NODELAY, two packets, which
wake the client twice. The service's replies are small and whole, so the writes
made during one pass of the event loop are joined and sent at the end of it
(what TCP_CORK does in the kernel). And since the service accepts a connection for
every PHP request, the per-connection system calls uvicorn makes to learn the
addresses are spared too. Everything else is uvicorn's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

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
            # it, seven system calls per connection; without it, it reads the
            # "sockname" and "peername" that the event loop already knows.
            return default
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
