"""Child processes for the stack, the tests, the benchmarks and the chaos runs, in one place.

What every one of them needs, and used to write again: start a process in its own process
group with its output in a log file, wait until it answers (a TCP port, an HTTP URL, any
check) while noticing that it died (the error then carries its log's tail), stop it, and
pick free loopback ports.

Why here: ``stack/`` is the installed package that ``make demo`` runs, and tests/,
loadtests/ and bench/ import it already. This module uses the standard library only, so
none of them pulls in a test-only dependency, and a benchmark script run by a plain
``python3`` (bench/balancer) can import it with the repository root on ``sys.path``.

Stopping follows systemd's ``KillMode=mixed`` (and ``docker stop``): SIGTERM (then SIGCONT,
so a frozen process can act on it) goes to the group's leader only, because a supervisor
(uvicorn with workers, the balancer's master, nginx) stops its own workers in order, and a
worker signalled behind its back could be taken for a crash; after the grace period, or
once the leader is gone, SIGKILL goes to the whole group, so forked workers that outlived
their parent (``php -S``) never stay behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from signal import SIGCONT, SIGKILL, SIGTERM
from types import TracebackType
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"


class ProcessError(RuntimeError):
    """A process exited while it was awaited, or did not answer in time (the message names
    it, its log file and the log's last lines)."""


# ---------------------------------------------------------------------- ports


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``port`` can be bound on ``host`` right now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int = 0, taken: Collection[int] = ()) -> int:
    """``preferred`` when it is free, else a loopback port the kernel picks (never one in
    ``taken``: the kernel may hand out a port again once it was released)."""
    if preferred and preferred not in taken and port_is_free(preferred):
        return preferred
    while True:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


def free_ports(count: int) -> list[int]:
    """``count`` ports free right now and distinct from each other (all sockets are held
    open together, so the kernel cannot hand out one twice)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# ---------------------------------------------------------------------- answers


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def port_answers(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted."""
    try:
        with socket.create_connection((host, port), timeout):
            return True
    except OSError:
        return False


def url_answers(url: str, timeout: float = 2.0, status: int = 200) -> bool:
    """Whether a GET of ``url`` answers ``status`` (https: the certificate is not checked,
    tests use self-signed ones). No proxy from the environment is used."""
    parts = urlsplit(url)
    host, port = parts.hostname or LOOPBACK, parts.port
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        response = conn.getresponse()
        response.read()
        return response.status == status
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_for(
    check: Callable[[], object],
    what: str,
    timeout: float = 30.0,
    process: Process | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it is true; raise :class:`ProcessError` when ``process`` exits
    first or ``timeout`` seconds pass (``what`` names the awaited thing in the message)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and not process.running:
            raise ProcessError(process.describe(f"exited with {process.returncode} before {what}"))
        if check():
            return
        if time.monotonic() >= deadline:
            problem = f"no {what} within {timeout:g} s"
            raise ProcessError(process.describe(problem) if process else problem)
        time.sleep(interval)


def wait_port(
    port: int, timeout: float = 30.0, host: str = LOOPBACK, process: Process | None = None
) -> None:
    """Wait until ``host:port`` accepts connections (see :func:`wait_for`)."""
    wait_for(lambda: port_answers(port, host), f"connection to {host}:{port}", timeout, process)


def wait_http(
    url: str, timeout: float = 30.0, process: Process | None = None, interval: float = 0.1
) -> None:
    """Wait until a GET of ``url`` answers 200 (see :func:`wait_for`)."""
    wait_for(lambda: url_answers(url), f"200 from {url}", timeout, process, interval)


# ---------------------------------------------------------------------- processes


def _parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    """SIGTERM to the child when the thread that started it dies (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, SIGTERM)


class Process:
    """One child process and its process group, with its output in a log file.

    ``log``: stdout and stderr are appended to it; ``None`` leaves them on this process's
    own (a terminal, pytest's capture); ``Path(os.devnull)`` drops them. ``env``: the whole
    environment (``None``: this process's). ``parent_death``: the child gets SIGTERM when
    the *thread* that started it ends (PR_SET_PDEATHSIG), so a killed runner leaves nothing;
    off by default, as a process started from a short-lived worker thread would go with it.

    ``start()`` may be called again once it stopped. As a context manager it is started (if
    it was not) on entry and stopped on exit.
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        parent_death: bool = False,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log = log
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.parent_death = parent_death
        self.popen: subprocess.Popen[bytes] | None = None
        # True from start() until the group is known empty: only then may the id be reused
        # by an unrelated group, and killpg must not be sent any more
        self._group = False

    def start(self) -> Process:
        if self.running:
            raise ProcessError(f"{self.name} is running already (pid {self.pid})")
        output: int | None = None
        with contextlib.ExitStack() as stack:
            if self.log is not None:
                output = stack.enter_context(self.log.open("ab")).fileno()
            self.popen = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_parent_death_signal if self.parent_death else None,
            )
        self._group = True
        return self

    # ------------------------------------------------------------------ state

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def poll(self) -> int | None:
        """The exit code, or None while it runs (``Popen.poll``)."""
        return self._started().poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the leader's exit; its code (``Popen.wait``: TimeoutExpired on timeout)."""
        return self._started().wait(timeout)

    def _started(self) -> subprocess.Popen[bytes]:
        if self.popen is None:
            raise ProcessError(f"{self.name} was never started")
        return self.popen

    # ------------------------------------------------------------------ signals

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole group (SIGSTOP, SIGCONT, ...)."""
        if self.popen is not None and self._group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the whole group at once, no grace (a crash), and reap the leader."""
        if self.popen is None or not self._group:
            return
        self._kill_group()
        self.popen.wait(10)
        self._group = False  # every member killed, the leader reaped: the id may be reused

    def stop(self, timeout: float = 10.0, sig: int = SIGTERM) -> int | None:
        """``sig`` to the leader (and SIGCONT to the group), SIGKILL to the group after
        ``timeout`` s or once the leader exited; waits for the leader. Returns its exit code
        (idempotent)."""
        popen = self.popen
        if popen is None or not self._group:
            return self.returncode
        if popen.poll() is None:
            popen.send_signal(sig)
            self.signal(SIGCONT)  # a frozen group could not act on it
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                popen.wait(10)
        self._kill_group()  # workers that outlived their leader
        self._group = False  # every member killed, the leader reaped: the id may be reused
        return popen.returncode

    def _kill_group(self) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, SIGKILL)

    # ------------------------------------------------------------------ waiting

    def wait_for(self, check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
        """Poll ``check`` until true; :class:`ProcessError` if this process exits first."""
        wait_for(check, what, timeout, self)

    def wait_port(self, port: int, timeout: float = 30.0, host: str = LOOPBACK) -> None:
        wait_port(port, timeout, host, self)

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        wait_http(url, timeout, self)

    # ------------------------------------------------------------------ log

    def tail(self, lines: int = 20) -> str:
        """The log's last ``lines`` lines ("" without a log file)."""
        if self.log is None or str(self.log) == os.devnull:
            return ""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def describe(self, problem: str) -> str:
        """``problem`` with this process's name, its log file and the log's tail."""
        text = f"{self.name}: {problem}"
        tail = self.tail()
        if self.log is not None and str(self.log) != os.devnull:
            text += f" (log {self.log})"
        return text + (f":\n{tail}" if tail else "")

    # ------------------------------------------------------------------ context

    def __enter__(self) -> Process:
        return self.start() if self.popen is None else self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
