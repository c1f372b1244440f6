"""Start and stop the whole stack on one machine: service, PHP web nodes, balancer.

Used by ``make demo`` (stack.demo), ``make loadtest`` (stack.loadtest) and tests/e2e.

- the session service: ``session-service serve`` on SQLite (the default) or MySQL/MariaDB;
  one instance by default, or several on one database (``StackConfig.services``), each web
  node then being given every instance's URL (in a rotated order, so the load spreads);
- N PHP web nodes: ``php -S`` serving examples/ with ``PHP_CLI_SERVER_WORKERS``, the handler
  registered by ``-d auto_prepend_file=php_handler/prepend.php`` and configured by
  environment variables only (no change in the application);
- the balancer: ``session-balancer`` round robin over the nodes, with a stats page.

Every process is a :class:`stack.processes.Process`: its own process group (session), so
stopping it also stops the workers it forked; each child gets SIGTERM if this process dies
(PR_SET_PDEATHSIG), and :meth:`Stack.stop` runs on any exit path, so Ctrl-C leaves no
orphans.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stack.processes import Process, ProcessError, free_port

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PREPEND = REPO / "php_handler" / "prepend.php"
BIN = Path(sys.executable).parent
DEFAULT_SQLITE = REPO / "var" / "sessions.db"

#: A line of a PHP error log that a healthy node never writes.
PHP_PROBLEM = re.compile(
    r"(PHP )?(Warning|Notice|Deprecated|Fatal error|Parse error|Strict Standards):|session-service:"
)

#: A line of the service's or balancer's log that a healthy run never writes.
PY_PROBLEM = re.compile(r"Traceback \(most recent call last\)|\b(ERROR|CRITICAL)\b")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _proc(name: str, cmd: list[str], log: Path, env: dict[str, str], cwd: Path = REPO) -> Process:
    """A stack process: output appended to its log, SIGTERM when the runner dies."""
    return Process(name, cmd, log, env, cwd, parent_death=True)


def _log(proc: Process) -> Path:
    assert proc.log is not None  # every stack process has one (_proc)
    return proc.log


class StackError(ProcessError):
    """The stack could not be started (the message names the process and its log)."""


@dataclass
class Node:
    """One PHP web node."""

    name: str
    port: int
    proc: Process
    error_log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class StackConfig:
    db_url: str = ""  # "" means SESSION_DB_URL, else SQLite at var/sessions.db
    nodes: int = 3
    node_workers: int = 2
    balancer_port: int = 0  # 0: a free port
    stats_port: int = 0
    service_port: int = 0
    workdir: Path = REPO / "var" / "stack"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    service_args: list[str] = field(default_factory=list)
    #: session service instances, all on ``db_url``; each node's handler gets every URL
    services: int = 1
    #: extra environment of the PHP nodes (handler options such as
    #: SESSION_SERVICE_LOCK_LEASE_MS, see docs/php_handler.md)
    node_env: dict[str, str] = field(default_factory=dict)
    #: False: nodes keep sessions in PHP's files handler, one directory per node (what the
    #: project replaces; the load test's checks must fail on it)
    handler: bool = True


class Stack:
    """The running stack. Use as a context manager, or call start() and stop()."""

    def __init__(self, config: StackConfig, progress: Progress = _quiet) -> None:
        self.config = config
        self.progress = progress
        self.workdir = config.workdir.resolve()
        self.db_url = config.db_url or os.environ.get("SESSION_DB_URL", "")
        if not self.db_url:
            self.db_url = f"sqlite:///{DEFAULT_SQLITE}"
        if config.services < 1:
            raise ValueError("StackConfig.services must be at least 1")
        taken: set[int] = set()
        self.service_ports: list[int] = []
        for i in range(config.services):
            port = free_port(config.service_port if i == 0 else 0, taken)
            taken.add(port)
            self.service_ports.append(port)
        self.service_port = self.service_ports[0]
        self.balancer_port = free_port(config.balancer_port, taken)
        taken.add(self.balancer_port)
        self.stats_port = free_port(config.stats_port, taken)
        taken.add(self.stats_port)
        self.nodes: list[Node] = []
        self._seen: dict[Path, int] = {}  # bytes of each log already judged
        for i in range(1, config.nodes + 1):
            port = free_port(0, taken)
            taken.add(port)
            name = f"web{i}"
            error_log = self.workdir / f"{name}-php-errors.log"
            proc = self._node_proc(name, port, error_log, i - 1)
            self.nodes.append(Node(name, port, proc, error_log))
        self.services = [self._service_proc(i) for i in range(config.services)]
        self.service = self.services[0]
        self.balancer = self._balancer_proc()

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.balancer_port}"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/"

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.service_port}"

    @property
    def service_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.service_ports]

    @property
    def db_label(self) -> str:
        if self.db_url.startswith("sqlite"):
            return "SQLite " + self.db_url.split(":///", 1)[1]
        return "MySQL " + re.sub(r"//[^@/]*@", "//", self.db_url).split("//", 1)[1]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    # ------------------------------------------------------------------ processes

    def _base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SESSION_SERVICE_", "SESSION_DB_", "PHP_CLI_SERVER"))
        }
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _service_proc(self, index: int = 0) -> Process:
        name = "service" if index == 0 else f"service{index + 1}"
        cmd = [
            str(BIN / "session-service"), "serve",
            "--db", self.db_url,
            "--host", "127.0.0.1",
            "--port", str(self.service_ports[index]),
            "--tokens", f"default:{self.config.token}",
            "--log-level", "warning",
            *self.config.service_args,
        ]  # fmt: skip
        return _proc(name, cmd, self.workdir / f"{name}.log", self._base_env())

    def _node_proc(self, name: str, port: int, error_log: Path, index: int = 0) -> Process:
        ini = {
            "error_reporting": "-1",
            "display_errors": "0",
            "display_startup_errors": "1",
            "log_errors": "1",
            "html_errors": "0",
            "error_log": str(error_log),
            "session.use_strict_mode": "1",
            "session.use_only_cookies": "1",
            "session.cookie_httponly": "1",
            "session.cookie_samesite": "Lax",
            "session.lazy_write": "1",
            "session.gc_probability": "0",
            "session.sid_length": "32",
        }
        if self.config.handler:
            ini["auto_prepend_file"] = str(PREPEND)
        else:
            ini["session.save_path"] = str(self.workdir / f"{name}-sessions")
            (self.workdir / f"{name}-sessions").mkdir(parents=True, exist_ok=True)
        cmd = [shutil.which("php") or "php"]
        for key, value in ini.items():
            cmd += ["-d", f"{key}={value}"]
        cmd += ["-S", f"127.0.0.1:{port}", "-t", str(EXAMPLES)]
        urls = self.service_urls
        shift = index % len(urls)  # node i tries instance i first, then the others in turn
        env = self._base_env()
        env.update(
            {
                "NODE_NAME": name,
                "SESSION_SERVICE_URL": ",".join(urls[shift:] + urls[:shift]),
                "SESSION_SERVICE_TOKEN": self.config.token,
            }
        )
        env.update(self.config.node_env)
        if self.config.node_workers > 1:
            env["PHP_CLI_SERVER_WORKERS"] = str(self.config.node_workers)
        return _proc(name, cmd, self.workdir / f"{name}.log", env, cwd=EXAMPLES)

    def _balancer_proc(self) -> Process:
        cmd = [
            str(BIN / "session-balancer"), "-f",
            "--stats", f"127.0.0.1:{self.stats_port}",
            "--check-path", "/health.php",
            "--check-interval", "0.5",
            "--check-timeout", "1",
            "--fall", "2",
            "--rise", "1",
            "--slowstart", "0",
            "--pidfile", str(self.workdir / "balancer.pid"),
            f"127.0.0.1:{self.balancer_port}",
            *(f"127.0.0.1:{n.port},name={n.name}" for n in self.nodes),
        ]  # fmt: skip
        return _proc("balancer", cmd, self.workdir / "balancer.log", self._base_env())

    def start(self) -> Stack:
        if shutil.which("php") is None:
            raise StackError(
                "the php CLI is missing: run `make system-php` "
                "(sudo apt-get install -y php-cli php-curl php-msgpack)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        for proc in self.processes():  # logs are appended to: judge this run's lines only
            log = _log(proc)
            self._seen[log] = log.stat().st_size if log.exists() else 0
        if self.db_url.startswith("sqlite:///"):
            Path(self.db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            # everything starts at once (the nodes need the service only when a request
            # comes, the balancer's health checks wait for the nodes), then each is awaited
            for service, url in zip(self.services, self.service_urls, strict=True):
                self.progress(f"session {service.name} on {url} ({self.db_label})")
                service.start()
            for node in self.nodes:
                node.error_log.write_bytes(b"")
                self.progress(f"PHP web node {node.name} on {node.url}")
                node.proc.start()
            self.progress(f"balancer on {self.url} (stats {self.stats_url})")
            self.balancer.start()
            for node in self.nodes:
                self._wait_http(node.proc, node.url + "/health.php")
            self._wait_http(self.balancer, self.stats_url + "stats")
            for service, url in zip(self.services, self.service_urls, strict=True):
                self._wait_http(service, url + "/readyz")
            self.wait_backends({n.name: "UP" for n in self.nodes})
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything this stack started, balancer first (idempotent)."""
        self.balancer.stop(timeout=5)
        for node in self.nodes:
            node.proc.stop(timeout=5)
        for service in self.services:
            service.stop(timeout=10)  # SIGCONT follows SIGTERM: a frozen one acts on it

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def processes(self) -> list[Process]:
        return [*self.services, *(n.proc for n in self.nodes), self.balancer]

    def stop_node(self, name: str) -> None:
        self.node(name).proc.stop(timeout=5)

    def start_node(self, name: str) -> None:
        node = self.node(name)
        node.proc.start()
        self._wait_http(node.proc, node.url + "/health.php")

    def start_service(self, index: int) -> None:
        """(Re)start service instance ``index`` (0-based) and wait until it is ready."""
        service = self.services[index]
        service.start()
        self._wait_http(service, self.service_urls[index] + "/readyz")

    @staticmethod
    def _wait_http(proc: Process, url: str, timeout: float = 30.0) -> None:
        try:
            proc.wait_http(url, timeout)
        except ProcessError as exc:
            raise StackError(str(exc)) from None

    # ------------------------------------------------------------------ balancer stats

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.stats_url + "stats", timeout=5.0).json()
        return data

    def backend_states(self) -> dict[str, str]:
        return {b["name"] or b["address"]: b["state"] for b in self.stats()["backends"]}

    def wait_backends(self, wanted: dict[str, str], timeout: float = 15.0) -> None:
        """Wait until the balancer's health checks see each named node in the wanted state."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, json.JSONDecodeError):
                states = self.backend_states()
                if all(states.get(name) == state for name, state in wanted.items()):
                    return
            time.sleep(0.1)
        raise StackError(f"balancer backends {states}, wanted {wanted}")

    # ------------------------------------------------------------------ node logs

    def php_problems(self) -> dict[str, list[str]]:
        """New lines since the last call that a healthy stack never writes: PHP warnings,
        notices, errors or handler lines in a node's error log or output (startup errors go
        there), and Python tracebacks or errors in the service's and balancer's logs."""
        found: dict[str, list[str]] = {}
        sources: list[tuple[str, Path, re.Pattern[str]]] = []
        for node in self.nodes:
            sources += [
                (node.name, node.error_log, PHP_PROBLEM),
                (node.name, _log(node.proc), PHP_PROBLEM),
            ]
        sources += [(service.name, _log(service), PY_PROBLEM) for service in self.services]
        sources += [("balancer", _log(self.balancer), PY_PROBLEM)]
        for name, path, pattern in sources:
            try:
                with path.open("rb") as f:
                    f.seek(self._seen.get(path, 0))
                    raw = f.read()
            except FileNotFoundError:
                continue
            self._seen[path] = self._seen.get(path, 0) + len(raw)
            text = raw.decode("utf-8", "replace")
            lines = [line for line in text.splitlines() if pattern.search(line)]
            if lines:
                found.setdefault(name, []).extend(lines)
        return found
