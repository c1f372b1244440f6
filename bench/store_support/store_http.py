"""Variant (a) of bench/store.py: the HTTP service, real uvicorn processes.

The client is a lean asyncio HTTP/1.1 client on keep-alive connections (httptools parses
the answers), so that the client is not what is measured (PHP's curl client is C, too).
bench/instructions.py drives the service with the same http_cycle.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httptools
import msgpack
from store_harness import TTL, Result, incremented, sessions_for

from stack.processes import Process, ProcessError

ROOT = Path(__file__).resolve().parents[2]  # the repository: the service runs from it


class _Response:
    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def http_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str, body: bytes = b""
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a keep-alive connection: (status, body)."""
    writer.write(head.encode() + body)
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    while not response.done:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("service closed the connection")
        parser.feed_data(chunk)
    return parser.get_status_code(), bytes(response.body)


async def http_cycle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auth: str, sid: str
) -> None:
    """Lock, read-modify-write, write and release, as a PHP request does (msgpack)."""
    status, body = await http_request(
        reader,
        writer,
        f"POST /v1/sessions/{sid}/lock?wait_ms=10000 HTTP/1.1\r\nHost: b\r\n{auth}"
        "Accept: application/msgpack\r\nContent-Length: 0\r\n\r\n",
    )
    assert status == 200, (status, body[:200])
    record = msgpack.unpackb(body)
    payload = msgpack.packb(
        {"data": incremented(record["data"]), "ttl": TTL, "lock": record["lock"]}
    )
    status, body = await http_request(
        reader,
        writer,
        f"PUT /v1/sessions/{sid} HTTP/1.1\r\nHost: b\r\n{auth}"
        "Content-Type: application/msgpack\r\nAccept: application/msgpack\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n",
        payload,
    )
    assert status == 200, (status, body[:200])


async def _http_worker(
    port: int,
    token: str,
    worker: int,
    start: asyncio.Barrier,
    go: asyncio.Event,
    stop_at: list[float],
    sink: list[float],
    counter: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sids = sessions_for(worker)
    auth = f"Authorization: Bearer {token}\r\n"

    async def cycle(sid: str) -> None:
        await http_cycle(reader, writer, auth, sid)

    for sid in sids:  # prime: every session exists before timing
        await cycle(sid)
    await start.wait()
    await go.wait()  # stop_at is set
    i = 0
    while time.perf_counter() < stop_at[0]:
        began = time.perf_counter()
        await cycle(sids[i % len(sids)])
        i += 1
        sink.append(time.perf_counter() - began)
        counter[0] += 1
    writer.close()


def run_http(port: int, token: str, concurrency: int, duration: float) -> Result:
    async def main() -> Result:
        sinks: list[list[float]] = [[] for _ in range(concurrency)]
        counter = [0]
        stop_at = [0.0]
        start = asyncio.Barrier(concurrency + 1)
        go = asyncio.Event()
        workers = asyncio.gather(
            *(
                _http_worker(port, token, i, start, go, stop_at, sinks[i], counter)
                for i in range(concurrency)
            )
        )
        await start.wait()
        began = time.perf_counter()
        stop_at[0] = began + duration
        go.set()
        await workers
        elapsed = time.perf_counter() - began
        return Result(
            "(a) HTTP service", concurrency, counter[0], elapsed, [x for s in sinks for x in s]
        )

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())


def start_service(url: str, port: int, token: str, workers: int, pre_ping: bool) -> Process:
    args = [
        sys.executable, "-m", "session_service", "serve", "--db", url, "--port", str(port),
        "--tokens", f"bench:{token}", "--workers", str(workers), "--log-level", "warning",
        "--gc-interval", "0",
        "--db-pre-ping" if pre_ping else "--no-db-pre-ping",
    ]  # fmt: skip
    proc = Process("session-service", args, cwd=ROOT).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=20)
    except ProcessError as exc:
        proc.kill()
        raise SystemExit(f"service did not start: {exc}") from None
    return proc
