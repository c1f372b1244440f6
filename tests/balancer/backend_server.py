"""A small real HTTP/1.1 backend for the balancer tests, run as a subprocess.

Usage: python backend_server.py PORT NAME. It answers every request with its name and
exposes a few test endpoints:

  /headers           the request headers as JSON
  /slow?s=SECONDS    waits, then answers
  /download?n=BYTES&chunked=1   streams BYTES bytes (Content-Length unless chunked=1)
  /upload            (any method with a body) answers with the body byte count
  /until-close       a body delimited by closing the connection (as php -S does)
  /coded?chunked=1   a gzip-compressed body sent with Transfer-Encoding: gzip (ended by the
                     close) or gzip, chunked
  /zero-padded       answers with a Content-Length of 00N
  /die?who=NAME      the backend called NAME exits without answering
  /_count            requests and bytes received so far (not counting this request)
  /health            503 while the file $SICK_DIR/NAME exists, else 200
  Expect: 100-continue is answered with a 100 Continue before the final response.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools

NAME = b"backend"
STATS = {"requests": 0, "bytes": 0}
BLOCK = b"x" * 65536


class Handler(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_size = 0
        self.conn_bytes = 0
        self.queue: asyncio.Queue[tuple[bytes, list[tuple[bytes, bytes]], int, bool]] = (
            asyncio.Queue()
        )
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self.serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()
        self.queue.put_nowait((b"", [], -1, False))

    def data_received(self, data: bytes) -> None:
        STATS["bytes"] += len(data)
        self.conn_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body_size = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if (b"expect", b"100-continue") in [(n.lower(), v.lower()) for n, v in self.headers]:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        STATS["requests"] += 1
        keep = self.parser.should_keep_alive()
        self.queue.put_nowait((self.url, self.headers, self.body_size, keep))

    async def serve(self) -> None:
        while True:
            url, headers, body_size, keep = await self.queue.get()
            if body_size < 0 or self.transport.is_closing():
                return
            await self.respond(url, headers, body_size)
            if not keep:
                self.transport.close()
                return

    def send(self, body: bytes, extra: bytes = b"") -> None:
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: %s\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (NAME, extra, len(body), body)
        )

    async def respond(self, url: bytes, headers: list[tuple[bytes, bytes]], size: int) -> None:
        parts = urlsplit(url.decode())
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path == "/health" and os.path.exists(
            f"{os.environ.get('SICK_DIR', '/nonexistent')}/{NAME.decode()}"
        ):
            self.transport.write(b"HTTP/1.1 503 Sick\r\nContent-Length: 0\r\n\r\n")
        elif path == "/_count":
            # Asked on a fresh direct connection: leave this request out of the counts.
            STATS["requests"] -= 1
            STATS["bytes"] -= self.conn_bytes
            self.conn_bytes = 0
            self.send(json.dumps(STATS).encode())
        elif path == "/headers":
            data = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]
            self.send(json.dumps({"name": NAME.decode(), "headers": data}).encode())
        elif path == "/slow":
            await asyncio.sleep(float(query.get("s", "1")))
            self.send(NAME)
        elif path == "/download":
            await self.download(int(query["n"]), query.get("chunked") == "1")
        elif path == "/upload":
            self.send(str(size).encode())
        elif path == "/die" and query.get("who") == NAME.decode():
            os._exit(1)  # the request reached this backend, which dies without answering
        elif path == "/until-close":  # like php -S: no Content-Length, the close ends it
            self.transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + NAME)
            self.transport.close()
        elif path == "/coded":  # a gzip transfer coding: ended by the close, or chunked
            body = gzip.compress(NAME + b" " + b"z" * 100_000)
            if query.get("chunked") == "1":
                head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                self.transport.write(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            else:
                self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + body)
                self.transport.close()
        elif path == "/zero-padded":  # a valid Content-Length with leading zeros
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 00%d\r\n\r\n%s" % (len(NAME), NAME)
            )
        elif path == "/nocontent":
            self.transport.write(b"HTTP/1.1 204 No Content\r\nX-Backend: %s\r\n\r\n" % NAME)
        else:
            self.send(NAME)

    async def download(self, total: int, chunked: bool) -> None:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % total
        self.transport.write(b"HTTP/1.1 200 OK\r\nX-Backend: %s\r\n%s\r\n\r\n" % (NAME, framing))
        left = total
        while left > 0:
            block = BLOCK[: min(left, len(BLOCK))]
            left -= len(block)
            await self.can_write.wait()
            if self.transport.is_closing():
                return
            if chunked:
                self.transport.write(b"%x\r\n%s\r\n" % (len(block), block))
            else:
                self.transport.write(block)
        if chunked:
            self.transport.write(b"0\r\n\r\n")


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        Handler, "127.0.0.1", port, reuse_address=True
    )
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    NAME = sys.argv[2].encode()
    asyncio.run(main(int(sys.argv[1])))
