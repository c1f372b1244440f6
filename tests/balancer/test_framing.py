"""Message framing through the balancer: transfer codings and lengths, read off the wire."""

from __future__ import annotations

import gzip
import json
import socket
from typing import BinaryIO

from tests.balancer.conftest import BackendProcess, StartBalancer, raw_exchange

CODED = b" " + b"z" * 100_000  # what /coded compresses, after the backend's name


def read_response(stream: BinaryIO) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Read one response (status line, headers, body by its framing) from ``stream``."""
    status = stream.readline()
    headers: dict[bytes, bytes] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    codings = [c.strip() for c in headers.get(b"transfer-encoding", b"").split(b",") if c]
    if codings and codings[-1] == b"chunked":
        body = b""
        while size := int(stream.readline().split(b";")[0], 16):
            body += stream.read(size)
            assert stream.read(2) == b"\r\n"
        assert stream.readline() == b"\r\n"  # no trailers
    elif b"content-length" in headers:
        body = stream.read(int(headers[b"content-length"]))
    else:
        body = stream.read()
    return status, headers, body


def test_a_gzip_transfer_coding_ended_by_the_close_reaches_the_client_whole(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    """Transfer-Encoding: gzip is not chunked (RFC 9112 6.3): the body ends with the close.
    An HTTP/1.1 client gets it chunked, with the gzip coding named, and stays connected."""
    balancer = start_balancer(backends[:1])
    with socket.create_connection(("127.0.0.1", balancer.port), 30) as sock:
        stream = sock.makefile("rb")
        for query in (b"", b"?chunked=1"):
            sock.sendall(b"GET /coded%s HTTP/1.1\r\nHost: t\r\n\r\n" % query)
            status, headers, body = read_response(stream)
            assert status.startswith(b"HTTP/1.1 200 "), (query, status)
            assert headers[b"transfer-encoding"] == b"gzip, chunked", query
            assert gzip.decompress(body) == b"b1" + CODED, query
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, headers, body = read_response(stream)
        assert status.startswith(b"HTTP/1.1 200 ") and body == b"b1"


def test_an_http10_client_gets_the_gzip_coded_body_delimited_by_the_close(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends[:1])
    for query in (b"", b"?chunked=1"):
        data = raw_exchange(balancer.port, b"GET /coded%s HTTP/1.0\r\n\r\n" % query)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close" in head
        assert b"\r\nTransfer-Encoding: gzip\r\n" in head + b"\r\n", head
        assert gzip.decompress(body) == b"b1" + CODED


def test_a_content_length_is_forwarded_as_the_number_it_parsed_to(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    """``003`` goes out as ``3`` both ways (HAProxy and nginx send the parsed value too)."""
    balancer = start_balancer(backends[:1])
    with socket.create_connection(("127.0.0.1", balancer.port), 30) as sock:
        stream = sock.makefile("rb")
        sock.sendall(b"POST /headers HTTP/1.1\r\nHost: t\r\nContent-Length: 003\r\n\r\nabc")
        status, _, body = read_response(stream)
        assert status.startswith(b"HTTP/1.1 200 ")
        seen = {n.lower(): v for n, v in json.loads(body)["headers"]}
        assert seen["content-length"] == "3"
        sock.sendall(b"GET /zero-padded HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, headers, body = read_response(stream)
        assert headers[b"content-length"] == b"2" and body == b"b1"
