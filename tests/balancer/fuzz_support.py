"""Helpers for the HTTP fuzzer (test_fuzz.py): a recording backend, a raw client, parsers.

The recording backend runs in a thread of the test process, so that the test can look at
everything the balancer forwarded. It parses what it receives with a deliberately strict
parser of its own (not llhttp, which the balancer uses): every forwarded request must be
well-formed HTTP/1.1 with CRLF line ends, no obs-fold, token header names, no control
characters, at most one Host, at most one framing header (a plain Content-Length or
``Transfer-Encoding: chunked``, never both), no hop-by-hop headers, and a body that
matches its framing exactly. Anything else is recorded as a violation and the backend
connection is closed. Each request is attributed to the client connection it came from
by the last element of X-Forwarded-For, which the balancer appends: every fuzz case
connects from its own loopback address (127.x.y.z).

Why one module of this length: the strict parser is written out in full on purpose (it
must not share code or shortcuts with llhttp, which the balancer uses), and the
recording backend and raw client exist only to feed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack.processes import Process, free_port
from tests.balancer.conftest import ROOT

RECORDER_RESPONSE = b"HTTP/1.1 200 OK\r\nX-Recorder: yes\r\nContent-Length: 0\r\n\r\n"

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/1\.1")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")
_NEVER_FORWARDED = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
MAX_HEAD = 256 * 1024
HEAD, DATA, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, LAST_CRLF = range(6)


@dataclass
class Recorded:
    """One request as the backend received it."""

    ip: str
    head: bytes
    complete: bool = False
    closed_mid_request: bool = False  # the balancer closed the connection inside it


@dataclass
class Record:
    """Everything the recording backend saw, shared with the test thread (under lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_ip: dict[str, list[Recorded]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    open_mid_request: int = 0  # connections currently inside a request
    connections: int = 0
    requests: int = 0

    def requests_from(self, ip: str) -> list[Recorded]:
        with self.lock:
            return list(self.by_ip.get(ip, ()))


def check_head(head: bytes) -> tuple[str | None, str, int | None, bool]:
    """Validate a forwarded request head (with its final CRLF CRLF).

    Returns (violation or None, client ip, content length, chunked).
    """
    lines = head[:-4].split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            return "bare CR or LF in the head", "", None, False
    if _REQUEST_LINE.fullmatch(lines[0]) is None:
        return f"bad request line {lines[0][:200]!r}", "", None, False
    seen: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return f"obs-fold {line[:100]!r}", "", None, False
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            return f"bad header line {line[:100]!r}", "", None, False
        name, value = match.group(1).lower(), match.group(2)
        if _BAD_VALUE.search(value):
            return f"control character in header value {line[:100]!r}", "", None, False
        seen.setdefault(name, []).append(value)
    for name in _NEVER_FORWARDED:
        if name in seen:
            return f"hop-by-hop header {name!r} forwarded", "", None, False
    if len(seen.get(b"host", ())) != 1:  # HTTP/1.0 without Host gets the listen address
        return f"{len(seen.get(b'host', ()))} Host headers", "", None, False
    forwarded = seen.get(b"x-forwarded-for", [])
    if len(forwarded) != 1:
        return f"{len(forwarded)} X-Forwarded-For headers", "", None, False
    ip = forwarded[0].rsplit(b",", 1)[-1].strip().decode("latin-1")
    lengths = seen.get(b"content-length", [])
    codings = seen.get(b"transfer-encoding", [])
    if lengths and codings:
        return "both Content-Length and Transfer-Encoding", ip, None, False
    if len(lengths) > 1 or len(codings) > 1:
        return "repeated framing header", ip, None, False
    if codings:
        if codings[0] != b"chunked":
            return f"Transfer-Encoding {codings[0]!r}", ip, None, False
        return None, ip, None, True
    if lengths:
        if re.fullmatch(rb"[0-9]{1,18}", lengths[0]) is None:
            return f"Content-Length {lengths[0]!r}", ip, None, False
        return None, ip, int(lengths[0]), False
    return None, ip, 0, False


class RecorderConnection(asyncio.Protocol):
    """One backend connection from the balancer, parsed strictly, answered 200 per request."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.current: Recorded | None = None
        self.state = HEAD
        self.left = 0  # bytes left in the current DATA, CHUNK_DATA or CRLF state
        self.failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        with self.record.lock:
            self.record.connections += 1

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        self.buf += data
        with self.record.lock:
            problem = self._consume()
            if problem is not None:
                self.failed = True
                ip = self.current.ip if self.current else "?"
                head = self.current.head[:300] if self.current else bytes(self.buf[:300])
                self.record.violations.append(f"{problem} (from {ip}): {head!r}")
        if problem is not None and self.transport is not None:
            self.transport.close()

    def _consume(self) -> str | None:
        """Parse as much of the buffer as possible; return a violation, if any."""
        buf = self.buf
        while buf:
            if self.state == HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if re.search(rb"[^\r]\n|^\n|\r[^\n]", bytes(buf)):
                        return "bare CR or LF in a partial head"
                    if len(buf) > MAX_HEAD:
                        return "head too large"
                    return None
                head = bytes(buf[: end + 4])
                del buf[: end + 4]
                problem, ip, length, chunked = check_head(head)
                self.current = Recorded(ip or "?", head)
                self.record.by_ip.setdefault(self.current.ip, []).append(self.current)
                self.record.open_mid_request += 1
                if problem is not None:
                    return problem
                if chunked:
                    self.state = CHUNK_SIZE
                elif length:
                    self.state, self.left = DATA, length
                else:
                    self._complete()
            elif self.state == DATA:
                take = min(self.left, len(buf))
                del buf[:take]
                self.left -= take
                if self.left == 0:
                    self._complete()
            elif self.state == CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 17 or re.search(rb"[^0-9a-fA-F\r]|\r.", bytes(buf)):
                        return f"bad chunk size line {bytes(buf[:40])!r}"
                    return None
                if _CHUNK_SIZE.fullmatch(buf[:end]) is None:
                    return f"bad chunk size line {bytes(buf[: end + 2])!r}"
                size = int(buf[:end], 16)
                del buf[: end + 2]
                self.state, self.left = (CHUNK_DATA, size) if size else (LAST_CRLF, 2)
            elif self.state == CHUNK_DATA:
                take = min(self.left, len(buf))
                del buf[:take]
                self.left -= take
                if self.left == 0:
                    self.state, self.left = CHUNK_CRLF, 2
            else:  # CHUNK_CRLF or LAST_CRLF: the next bytes must be (the rest of) CRLF
                expected = b"\r\n"[2 - self.left :]
                got = bytes(buf[: len(expected)])
                if got != expected[: len(got)]:
                    what = "chunk data" if self.state == CHUNK_CRLF else "the last chunk"
                    return f"{what} not followed by CRLF: {bytes(buf[:40])!r}"
                del buf[: len(got)]
                self.left -= len(got)
                if self.left == 0:
                    if self.state == CHUNK_CRLF:
                        self.state = CHUNK_SIZE
                    else:
                        self._complete()
        return None

    def _complete(self) -> None:
        assert self.current is not None
        self.current.complete = True
        self.current = None
        self.state = HEAD
        self.record.open_mid_request -= 1
        self.record.requests += 1
        if self.transport is not None:
            self.transport.write(RECORDER_RESPONSE)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        with self.record.lock:
            self.record.connections -= 1
            if self.current is not None:
                self.current.closed_mid_request = True
                self.record.open_mid_request -= 1
                self.current = None
            elif self.buf and not self.failed:
                self.record.violations.append(f"partial head at close: {bytes(self.buf[:300])!r}")


class RecordingBackend:
    """The recording backend on a free loopback port, served by an event loop in a thread."""

    def __init__(self) -> None:
        self.record = Record()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None

    def start(self) -> None:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self.loop)
        self.server = future.result(10)

    async def _serve(self) -> asyncio.Server:
        return await self.loop.create_server(
            lambda: RecorderConnection(self.record), "127.0.0.1", self.port, reuse_address=True
        )

    def stop(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class BalancerProcess:
    """A balancer subprocess whose stderr goes to a file (a pipe could fill up and block it)."""

    def __init__(self, backends: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.stats_port = free_port()
        self.log_path = log_path
        log_path.write_bytes(b"")
        self.proc = Process(
            "balancer",
            [
                sys.executable,
                "-m",
                "balancer",
                "-f",
                "--stats",
                str(self.stats_port),
                str(self.port),
                *backends,
            ],
            log_path,
            None,
            ROOT,
        ).start()
        self.proc.wait_port(self.port)
        self.proc.wait_port(self.stats_port)

    def alive(self) -> bool:
        return self.proc.running

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stats(self) -> dict[str, Any]:
        import http.client
        import json

        conn = http.client.HTTPConnection("127.0.0.1", self.stats_port, timeout=10)
        try:
            conn.request("GET", "/stats")
            data: dict[str, Any] = json.loads(conn.getresponse().read())
            return data
        finally:
            conn.close()

    def stop(self) -> str:
        self.proc.stop(15)
        return self.log_path.read_text(errors="replace")[-4000:]


def case_ip(index: int) -> str:
    """A distinct loopback source address per case (127.64.0.1 onwards, never .0/.255)."""
    high, low = divmod(index, 254)
    return f"127.{64 + (high >> 8) % 128}.{high & 255}.{low + 1}"


def _source_ports() -> range:
    """Client ports above the ephemeral range (``ip_local_port_range``).

    Every case connects from its own address and half-closes first, so it leaves a
    TIME-WAIT socket behind. On an ephemeral port, that would make a later listener on the
    same port number (a test's free_port(), bound to 0.0.0.0) fail with "Address already
    in use" for a minute. Ports above the range are never handed out by the kernel, and
    the distinct source addresses keep the connections apart.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            high = int(ports.read().split()[1])
    except (OSError, ValueError, IndexError):
        high = 60999
    return range(high + 1, 65536) if high < 65000 else range(0)


SOURCE_PORTS = _source_ports()


def source_port(index: int) -> int:
    """The client port for case ``index``; 0 (any) when no port is above the range."""
    return SOURCE_PORTS[index % len(SOURCE_PORTS)] if SOURCE_PORTS else 0


@dataclass
class Exchange:
    """What one client connection got back."""

    raw: bytes
    reset: bool
    send_failed: bool
    elapsed: float


def exchange(
    port: int,
    source: tuple[str, int],
    pieces: list[bytes],
    pause: float = 0.0,
    timeout: float = 8.0,
) -> Exchange:
    """Connect from ``source``, send ``pieces`` (pausing between them), half-close, read
    to EOF."""
    started = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reset = send_failed = False
    chunks: list[bytes] = []
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(source)
        sock.connect(("127.0.0.1", port))
        try:
            for i, piece in enumerate(pieces):
                if i and pause:
                    time.sleep(pause)
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                raise
            send_failed = True  # the balancer answered and closed before reading it all
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    return Exchange(b"".join(chunks), reset, send_failed, time.monotonic() - started)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def from_recorder(self) -> bool:
        return self.header(b"x-recorder") == b"yes"


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*")


def parse_responses(raw: bytes) -> tuple[list[Response], str | None]:
    """Split the bytes a client got into responses; the second item names a problem."""
    responses: list[Response] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            return responses, f"incomplete response head {raw[pos : pos + 200]!r}"
        lines = raw[pos:end].split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            return responses, f"bad status line {lines[0][:200]!r}"
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or b"\n" in line or b"\r" in line:
                return responses, f"bad response header {line[:200]!r}"
            headers.append((name, value.strip(b" \t")))
        response = Response(int(match.group(1)), headers, b"")
        length = response.header(b"content-length")
        if length is None or not length.isdigit():
            return responses, f"response without a Content-Length {raw[pos : end + 4]!r}"
        body_end = end + 4 + int(length)
        if body_end > len(raw):
            return responses, f"truncated response body {raw[pos : pos + 300]!r}"
        response.body = raw[end + 4 : body_end]
        responses.append(response)
        pos = body_end
    return responses, None


def settle(record: Record, rounds: int = 100) -> None:
    """Wait (bounded) until the backend is inside no request: the balancer has caught up."""
    for _ in range(rounds):
        with record.lock:
            if record.open_mid_request == 0:
                return
        time.sleep(0.02)
