"""A fake session service that answers garbage, for the PHP handler's failure tests.

It listens on a loopback port (a thread of the test process) and, per operation of
the wire contract (docs/api.md), either forwards the request to a real service
(``proxy``, the default) or misbehaves:

- ``respond``: a fixed status, Content-Type (or none) and body, optionally after
  forwarding the request to the real service first (``forward=True``: the real
  lock is taken, the real write applied, then the answer is garbage);
- ``corrupt``: forward, then rewrite the real msgpack answer with ``fn(dict)``
  (``as_json=True``: and answer it as JSON, data in base64);
- ``truncate``: a Content-Length larger than the body sent, then close;
- ``slow``: wait ``seconds`` (bounded), then answer the fixed status/body (or, with
  ``forward=True``, forward and answer as the proxy would);
- ``reset``: read the request, then close the connection with a TCP RST;
- ``die``: forward the request (the real service applies it), then stop listening
  (later connections are refused) and close the connection without an answer, as an
  instance that dies between applying a request and answering it.

Every connection is closed after one answer (``Connection: close``), so curl never
retries a request on a reused connection behind the test's back, unless the fake is
made with ``keep_alive=True``: then connections stay open between answers, as the
real service's do (what ``die`` needs to show curl's retry). ``seen`` records
(op, method, path) of every request received, ``wire`` the same with its headers
and body, ``forwarded`` the ops sent upstream.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack

OPS = (
    ("lock", "POST", re.compile(r"^/v1/sessions/[^/?]+/lock(\?.*)?$")),
    ("touch", "POST", re.compile(r"^/v1/sessions/[^/?]+/touch$")),
    ("release", "DELETE", re.compile(r"^/v1/sessions/[^/?]+/lock(\?.*)?$")),
    ("read", "GET", re.compile(r"^/v1/sessions/[^/?]+$")),
    ("write", "PUT", re.compile(r"^/v1/sessions/[^/?]+$")),
    ("destroy", "DELETE", re.compile(r"^/v1/sessions/[^/?]+$")),
)
MAX_SLOW = 10.0  # seconds: every wait of the fake is bounded


def op_of(method: str, path: str) -> str:
    for name, m, rx in OPS:
        if m == method and rx.match(path):
            return name
    return "other"


@dataclass
class Action:
    kind: str = "proxy"  # proxy | respond | corrupt | truncate | slow | reset | die
    status: int = 200
    content_type: str | None = "application/msgpack"
    body: bytes = b""
    forward: bool = False  # respond/truncate/reset: forward to the real service first
    fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    claimed: int = 0  # truncate: the Content-Length announced
    seconds: float = 0.0
    as_json: bool = False  # corrupt: answer JSON (data base64) instead of msgpack


@dataclass
class Received:
    """One request as it came in: header names lowercased, body as sent."""

    op: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeService:
    upstream: str
    actions: dict[str, Action] = field(default_factory=dict)
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    wire: list[Received] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    keep_alive: bool = False

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.upstream, timeout=15.0)
        self.lock = threading.Lock()
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                fake._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ control

    def set(self, op: str, action: Action) -> None:
        with self.lock:
            self.actions[op] = action

    def reset_all(self) -> None:
        with self.lock:
            self.actions.clear()
            self.seen.clear()
            self.wire.clear()
            self.forwarded.clear()

    def ops(self) -> list[str]:
        with self.lock:
            return [op for op, _, _ in self.seen]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()

    def stop_listening(self) -> None:
        """From now on connections are refused (those already open stay)."""
        self.server.shutdown()
        self.server.socket.close()

    # ------------------------------------------------------------------ serving

    def _handle(self, sock: socket.socket) -> None:
        sock.settimeout(MAX_SLOW)
        pending = b""
        while True:
            try:
                request, pending = _read_request(sock, pending)
            except (OSError, ValueError):
                return
            if request is None:
                return
            method, path, headers, body = request
            op = op_of(method, path)
            with self.lock:
                self.seen.append((op, method, path))
                self.wire.append(Received(op, method, path, headers, body))
                action = self.actions.get(op, Action())
            try:
                if not self._answer(sock, op, action, method, path, headers, body):
                    return
            except OSError:
                return

    def _forward(
        self, op: str, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        wanted = ("authorization", "accept", "content-type")
        keep = {k: v for k, v in headers.items() if k in wanted}
        with self.lock:
            self.forwarded.append(op)
        return self.client.request(method, path, headers=keep, content=body)

    def _answer(
        self, sock: socket.socket, op: str, action: Action, method: str, path: str,
        headers: dict[str, str], body: bytes,
    ) -> bool:  # fmt: skip
        """Answer one request; True when the connection stays open for the next one."""
        if action.kind == "die":
            self._forward(op, method, path, headers, body)
            self.stop_listening()
            sock.close()  # a FIN, no answer: curl retries on a new connection, refused
            return False
        if action.kind == "reset":
            if action.forward:
                self._forward(op, method, path, headers, body)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return False
        if action.kind == "slow":
            time.sleep(min(action.seconds, MAX_SLOW))
        if action.kind in ("proxy", "corrupt") or action.forward:
            real = self._forward(op, method, path, headers, body)
            status, ctype = real.status_code, real.headers.get("content-type")
            payload = real.content
            if action.kind == "corrupt":
                assert action.fn is not None and ctype, ctype
                upstream_json = "json" in ctype
                rec = action.fn(json.loads(payload) if upstream_json else msgpack.unpackb(payload))
                if action.as_json or upstream_json:
                    if isinstance(rec.get("data"), bytes):
                        rec["data"] = base64.b64encode(rec["data"]).decode()
                    ctype, payload = "application/json", json.dumps(rec).encode()
                else:
                    payload = msgpack.packb(rec, use_bin_type=True)
        if action.kind in ("respond", "truncate") or (action.kind == "slow" and not action.forward):
            status, ctype, payload = action.status, action.content_type, action.body
        length = action.claimed if action.kind == "truncate" else len(payload)
        keep = self.keep_alive and action.kind in ("proxy", "corrupt", "respond", "slow")
        head = [
            f"HTTP/1.1 {status} Whatever",
            f"Content-Length: {length}",
            "Connection: keep-alive" if keep else "Connection: close",
        ]
        if ctype is not None:
            head.append(f"Content-Type: {ctype}")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        if keep:
            return True
        sock.shutdown(socket.SHUT_WR)
        sock.close()
        return False


Request = tuple[str, str, dict[str, str], bytes]


def _read_request(sock: socket.socket, data: bytes = b"") -> tuple[Request | None, bytes]:
    """The next request on the connection and the bytes read past it (None at EOF)."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
        if len(data) > 1 << 20:
            raise ValueError("head too large")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("body cut short")
        body += chunk
    return (method, path, headers, body[:length]), body[length:]
