"""Running the balancer: one event loop per worker, an optional master for several workers.

Listening sockets are bound before anything forks or detaches, so a port in use is a clear
error at start-up. With several workers each gets its own SO_REUSEPORT socket and the
kernel spreads new connections over them; each worker keeps its own exact rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from typing import Any

from balancer.client_connection import ClientConnection
from balancer.config import ConfigError, Settings, load_file, validate
from balancer.frontend import Frontend
from balancer.health import run_checks
from balancer.pool import BackendPool
from balancer.stats import Snapshot, merge, serve_stats
from balancer.tcp_proxy import TcpClient

log = logging.getLogger("balancer")

REPORT_EVERY = 1.0


def bind(host: str, port: int, reuse_port: bool, defer_accept: bool = False) -> socket.socket:
    """Bind a listening TCP socket, IPv4 or IPv6 depending on ``host``.

    With ``defer_accept`` (HTTP mode: the client speaks first) the kernel hands over a
    connection only once its first bytes are there, which saves a loop wake-up per
    connection.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if defer_accept and hasattr(socket, "TCP_DEFER_ACCEPT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed: the proxy spends its time in the loop's transports."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def reload_backends(settings: Settings) -> Settings | None:
    """Re-read the config file for SIGHUP; None (and a log line) when it is unusable."""
    if not settings.config_file:
        log.warning("SIGHUP: no --config file, nothing to reload")
        return None
    try:
        fresh = validate(load_file(settings.config_file, settings))
    except ConfigError as exc:
        log.error("SIGHUP: keeping the current backends: %s", exc)
        return None
    return fresh


class Worker:
    """One event loop: listener, health checks, timeouts, stats or a stats report pipe."""

    def __init__(
        self,
        settings: Settings,
        sock: socket.socket,
        index: int = 0,
        stats_sock: socket.socket | None = None,
        report_fd: int = -1,
    ) -> None:
        self.settings = settings
        self.sock = sock
        self.index = index
        self.stats_sock = stats_sock
        self.report_fd = report_fd
        self.stop = asyncio.Event()

    async def run(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        pool = BackendPool(settings.backends, settings.health.slowstart, offset=self.index)
        fe = Frontend(settings, pool)
        fe.start()
        protocol: type[TcpClient | ClientConnection] = (
            TcpClient if settings.tcp else ClientConnection
        )

        def factory() -> asyncio.Protocol:
            return protocol(fe)

        server = await loop.create_server(factory, sock=self.sock, backlog=1024)
        tasks = [loop.create_task(run_checks(pool, settings.health))]
        stats_server = None
        if self.stats_sock is not None:
            stats_server = await serve_stats(self.stats_sock, lambda: merge([fe.snapshot()]))
        if self.report_fd >= 0:
            tasks.append(loop.create_task(report(self.report_fd, fe, self.stop)))
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._reload(pool))
        log.info(
            "worker %d listening on %s:%d (%s mode), backends: %s",
            self.index,
            settings.listen_host,
            settings.listen_port,
            "tcp" if settings.tcp else "http",
            ", ".join(b.label for b in settings.backends),
        )
        await self.stop.wait()
        log.info("worker %d draining %d connection(s)", self.index, len(fe.connections))
        server.close()
        fe.begin_drain()
        deadline = loop.time() + settings.timeouts.drain
        while fe.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if fe.connections:
            log.warning("drain timeout: closing %d connection(s)", len(fe.connections))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # let health checks end cleanly
        fe.stop()
        if stats_server is not None:
            stats_server.close()
        for backend in pool.backends:
            backend.close_idle()
        log.info("worker %d stopped", self.index)

    def _reload(self, pool: BackendPool) -> None:
        fresh = reload_backends(self.settings)
        if fresh is not None:
            pool.replace_specs(fresh.backends)
            self.settings = fresh


async def report(fd: int, fe: Frontend, stop: asyncio.Event) -> None:
    """Send this worker's snapshot to the master once a second, dropping it if the pipe is full.

    A worker whose master has died stops too, rather than serving on unsupervised.
    """
    os.set_blocking(fd, False)
    master = os.getppid()
    while True:
        if os.getppid() != master:
            log.error("master process %d is gone: stopping", master)
            stop.set()
            return
        line = json.dumps(fe.snapshot()).encode() + b"\n"
        with contextlib.suppress(BlockingIOError):
            os.write(fd, line)
        await asyncio.sleep(REPORT_EVERY)


def run_single(settings: Settings, sock: socket.socket, stats_sock: socket.socket | None) -> int:
    """One worker in this process."""
    loop = new_event_loop()
    try:
        loop.run_until_complete(Worker(settings, sock, 0, stats_sock).run())
    finally:
        loop.close()
    return 0


def run_workers(settings: Settings, stats_sock: socket.socket | None) -> int:
    """Fork ``workers`` processes, each with its own SO_REUSEPORT socket; serve merged stats."""
    socks = [
        bind(settings.listen_host, settings.listen_port, True) for _ in range(settings.workers)
    ]
    children: dict[int, int] = {}  # pid -> read end of its report pipe
    for index, sock in enumerate(socks):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            if stats_sock is not None:
                stats_sock.close()
            for other in socks:  # a socket nobody polls would still get its share
                if other is not sock:
                    other.close()
            code = 1
            try:
                loop = new_event_loop()
                loop.run_until_complete(Worker(settings, sock, index, None, write_fd).run())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        sock.close()
        children[pid] = read_fd
    loop = asyncio.new_event_loop()  # the master does little: the plain loop is enough
    try:
        return loop.run_until_complete(Master(settings, children, stats_sock).run())
    finally:
        loop.close()


class Master:
    """Forwards signals to the workers, reaps them, and merges their stats reports."""

    def __init__(
        self, settings: Settings, children: dict[int, int], stats_sock: socket.socket | None
    ) -> None:
        self.settings = settings
        self.children = children
        self.stats_sock = stats_sock
        self.latest: dict[int, Snapshot] = {}
        self.buffers: dict[int, bytes] = {}
        self.stopping = False
        self.failed = False
        self.done = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for pid, fd in self.children.items():
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._read, pid, fd)
        stats_server = None
        if self.stats_sock is not None:
            stats_server = await serve_stats(self.stats_sock, self._snapshot)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        # uvloop keeps SIGCHLD for itself, so workers are reaped by polling.
        while not self.done.is_set():
            self._reap()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 0.2)
        if stats_server is not None:
            stats_server.close()
        return 1 if self.failed else 0

    def _snapshot(self) -> Snapshot:
        return merge([self.latest[pid] for pid in sorted(self.latest)])

    def _read(self, pid: int, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
            return
        lines = (self.buffers.get(pid, b"") + data).split(b"\n")
        self.buffers[pid] = lines.pop()
        for line in lines:
            with contextlib.suppress(ValueError):
                self.latest[pid] = json.loads(line)

    def _forward(self, sig: int) -> None:
        if sig == signal.SIGHUP and reload_backends(self.settings) is None:
            return
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _stop(self) -> None:
        self.stopping = True
        self._forward(signal.SIGTERM)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.children.pop(pid, None)
            self.latest.pop(pid, None)
            if not self.stopping:
                log.error("worker %d exited (status %d): stopping the others", pid, status)
                self.failed = True
                self._stop()
        if not self.children:
            self.done.set()


def detach() -> None:
    """Become a daemon (pen's default without -f): fork twice, new session, stdio to null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def write_pidfile(path: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")


def run(settings: Settings) -> int:
    """Bind, detach unless in the foreground, then run one or several workers."""
    stats_sock = None
    sock = None
    if settings.workers == 1:
        sock = bind(settings.listen_host, settings.listen_port, False, not settings.tcp)
    else:
        # Fail early when the port is taken: a probe with SO_REUSEPORT, closed again.
        bind(settings.listen_host, settings.listen_port, True).close()
    if settings.stats_port:
        stats_sock = bind(settings.stats_host, settings.stats_port, False)
    if not settings.foreground:
        detach()
    if settings.pidfile:
        write_pidfile(settings.pidfile)
    try:
        if sock is not None:
            return run_single(settings, sock, stats_sock)
        return run_workers(settings, stats_sock)
    finally:
        if settings.pidfile:
            with contextlib.suppress(OSError):
                os.unlink(settings.pidfile)


def describe(settings: Settings) -> dict[str, Any]:
    """Settings as plain data, for debug logging."""
    from dataclasses import asdict

    return asdict(settings)
