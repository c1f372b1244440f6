"""A fast fixed-response HTTP backend for the benchmark when nginx is not installed.

Usage: python fast_backend.py PORT NAME. Answers every request with NAME, keep-alive.
"""

from __future__ import annotations

import asyncio
import sys


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2].encode() + b"\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        len(name),
        name,
    )
    close_response = response.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)

    class Handler(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                if b"connection: close" in head.lower():
                    self.transport.write(close_response)  # type: ignore[attr-defined]
                    self.transport.close()
                    return
                self.transport.write(response)  # type: ignore[attr-defined]

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(Handler, "127.0.0.1", port))
    loop.run_until_complete(server.serve_forever())


if __name__ == "__main__":
    main()
