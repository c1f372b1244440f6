"""Bodies stream in both directions: 100 MiB pass through with the balancer's memory bounded."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

from tests.balancer.conftest import BackendProcess, Balancer, StartBalancer

MIB = 1024 * 1024
SIZE = 100 * MIB
BLOCK = b"u" * (256 * 1024)


def peak_rss_mib(balancer: Balancer) -> float:
    """The process's high-water resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{balancer.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def upload(port: int, total: int, chunked: bool) -> bytes:
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % total
    with socket.create_connection(("127.0.0.1", port), 60) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\n%s\r\n\r\n" % framing)
        left = total
        while left:
            block = BLOCK[: min(left, len(BLOCK))]
            left -= len(block)
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        while not answer.endswith(str(total).encode()):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def download(port: int, total: int, chunked: bool) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"/download?n={total}&chunked={int(chunked)}")
    response = conn.getresponse()
    assert response.status == 200
    received = 0
    while True:
        data = response.read(1 << 20)
        if not data:
            break
        received += len(data)
    conn.close()
    return received


def test_100_mib_up_and_down_with_bounded_memory(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends[:1])
    download(balancer.port, MIB, chunked=False)  # warm up, then take the baseline
    baseline = peak_rss_mib(balancer)
    answer = upload(balancer.port, SIZE, chunked=True)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(str(SIZE).encode())
    assert download(balancer.port, SIZE, chunked=False) == SIZE
    growth = peak_rss_mib(balancer) - baseline
    assert growth < 20, f"balancer memory grew by {growth:.1f} MiB for 100 MiB transfers"


def test_other_framings_stream_too(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends[:1])
    size = 5 * MIB + 7
    assert upload(balancer.port, size, chunked=False).endswith(str(size).encode())
    assert download(balancer.port, size, chunked=True) == size
