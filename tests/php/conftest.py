"""Harness for the PHP handler tests: real PHP nodes, real service processes, real MariaDB.

- ``php_db_url``: a MariaDB database for these tests (the shared ``mariadb_url``
  fixture when tests/conftest.py provides one, else a fresh ``php_test_*`` database
  dropped afterwards).
- ``start_service``: starts a real ``session-service serve`` process on that
  database and returns a :class:`ServiceProcess` (stopped at teardown).
- ``start_node``: starts a PHP web node (``php -S`` with ``PHP_CLI_SERVER_WORKERS``)
  serving tests/php/app with the handler from ``auto_prepend_file``, configured
  by environment variables only, and returns a :class:`PhpNode`.

Every PHP node logs to its own error log with ``error_reporting=E_ALL``; after
each test, any line left in a node's log (a PHP warning, notice, deprecation or
a ``session-service:`` line) that the test did not claim with
:meth:`PhpNode.expect` fails the test.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.processes import Process
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
APP_DIR = Path(__file__).resolve().parent / "app"
PREPEND = REPO / "php_handler" / "prepend.php"
SERVICE_BIN = REPO / ".venv" / "bin" / "session-service"
TOKEN = "secret"
PHP = shutil.which("php")

pytestmark = [pytest.mark.php, pytest.mark.mariadb]


class ServiceProcess:
    """One ``session-service serve`` process."""

    def __init__(self, db_url: str, workdir: Path, port: int | None = None) -> None:
        self.db_url = db_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"service-{self.port}.log"
        self.proc: Process | None = None

    def start(self) -> ServiceProcess:
        cmd = [
            str(SERVICE_BIN), "serve", "--db", self.db_url, "--host", "127.0.0.1",
            "--port", str(self.port), "--tokens", f"default:{TOKEN}",
        ]  # fmt: skip
        self.proc = Process("session-service", cmd, self.log, cwd=REPO).start()
        self.proc.wait_http(self.url + "/readyz")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def exists(self, sid: str) -> bool:
        """HEAD /v1/sessions/{sid} straight to the service."""
        r = httpx.head(
            f"{self.url}/v1/sessions/{sid}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code in (200, 404), r
        return r.status_code == 200


LOG_LINE = re.compile(r"^\[[^\]]+\] ")
PHP_MESSAGE = re.compile(
    r"(PHP )?(Warning|Notice|Deprecated|Fatal error|Parse error|Strict Standards):"
)


class PhpNode:
    """A PHP web node: ``php -S`` with N workers and the handler registered by env vars."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        ini: dict[str, str] | None = None,
        workers: int = 4,
        prepend: bool = True,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.error_log = workdir / f"php-{self.port}-error.log"
        self.stderr_log = workdir / f"php-{self.port}-stderr.log"
        self.error_log.touch()
        settings = {
            "error_reporting": "-1",
            "display_errors": "0",
            "display_startup_errors": "1",
            "log_errors": "1",
            "html_errors": "0",
            "error_log": str(self.error_log),
            "session.use_strict_mode": "1",
            "session.use_cookies": "1",
            "session.use_only_cookies": "1",
            "session.lazy_write": "1",
            "session.gc_probability": "0",
            "session.sid_length": "32",
        }
        if prepend:
            settings["auto_prepend_file"] = str(PREPEND)
        settings.update(ini or {})
        cmd = [PHP or "php"]
        for key, value in settings.items():
            cmd += ["-d", f"{key}={value}"]
        cmd += ["-S", f"127.0.0.1:{self.port}", "-t", str(APP_DIR)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_SERVICE_")}
        full_env.update(env)
        if workers > 1:
            full_env["PHP_CLI_SERVER_WORKERS"] = str(workers)
        self.stderr_log.write_bytes(b"")
        self.proc = Process("php -S", cmd, self.stderr_log, full_env, APP_DIR).start()
        self.proc.wait_port(self.port, 15)
        self._offset = 0
        self._err_offset = 0
        self.pending: list[str] = []

    def collect(self) -> list[str]:
        """New lines of the node's error log (a PHP message may span lines), plus any
        PHP message the server printed on stderr (startup warnings, for instance)."""
        raw = self.error_log.read_bytes()
        text = raw[self._offset :].decode("utf-8", "replace")
        self._offset = len(raw)
        err = self.stderr_log.read_bytes()
        self.pending.extend(
            line
            for line in err[self._err_offset :].decode("utf-8", "replace").splitlines()
            if PHP_MESSAGE.search(line)
        )
        self._err_offset = len(err)
        entries: list[str] = []
        for line in text.splitlines():
            if LOG_LINE.match(line) or not entries:
                entries.append(line)
            else:
                entries[-1] += "\n" + line
        self.pending.extend(entries)
        return self.pending

    def expect(self, pattern: str, min_count: int = 1) -> list[str]:
        """Claim (remove) the log lines matching pattern; assert there are at least min_count."""
        time.sleep(0.05)  # the node writes its log as the request ends
        self.collect()
        rx = re.compile(pattern, re.S)
        hits = [e for e in self.pending if rx.search(e)]
        self.pending = [e for e in self.pending if not rx.search(e)]
        assert len(hits) >= min_count, f"expected {pattern!r} in {self.url} log, got {self.pending}"
        return hits

    def unexpected(self) -> list[str]:
        self.collect()
        left, self.pending = self.pending, []
        return left

    def stop(self) -> None:
        self.proc.stop()


class Browser:
    """One user agent: keeps the PHPSESSID cookie, may hit a different node per request."""

    def __init__(self, cookie: str | None = None, name: str = "PHPSESSID") -> None:
        self.name = name
        self.sid = cookie
        self.client = httpx.Client(timeout=60.0)

    def request(
        self, node: PhpNode, op: str, *, page: str = "index.php", body: bytes | None = None,
        **params: Any,
    ) -> httpx.Response:  # fmt: skip
        headers = {"Cookie": f"{self.name}={self.sid}"} if self.sid else {}
        r = self.client.request(
            "POST" if body is not None else "GET",
            f"{node.url}/{page}",
            params={"op": op, **params},
            content=body,
            headers=headers,
        )
        for value in r.headers.get_list("set-cookie"):
            name, _, rest = value.partition("=")
            if name.strip() == self.name:
                sid = rest.split(";", 1)[0]
                self.sid = None if sid in ("", "deleted") else sid
        return r

    def get(self, node: PhpNode, op: str, **kw: Any) -> dict[str, Any]:
        r = self.request(node, op, **kw)
        assert r.status_code == 200, (r.status_code, r.text)
        data: dict[str, Any] = r.json()
        return data


def while_holding(
    holder: Callable[[str], Any], other: Callable[[], Any], workdir: Path, delay: float = 0.0
) -> tuple[Any, Any]:
    """Run holder(mark_file) in a thread; once the PHP page created mark_file (it holds
    the session), wait `delay` seconds and run other(). Returns both results."""
    mark = workdir / f"mark-{uuid.uuid4().hex}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(holder, str(mark))
        deadline = time.monotonic() + 20
        while not mark.exists():
            if first.done():
                first.result()
                raise AssertionError("the holding request ended before it held the session")
            assert time.monotonic() < deadline, "the holding request never started its session"
            time.sleep(0.01)
        time.sleep(delay)
        second = other()
        return first.result(), second


def run_concurrently(fn: Callable[[int], Any], count: int, threads: int | None = None) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(threads or count) as pool:
        return list(pool.map(fn, range(count)))


# --------------------------------------------------------------------------- fixtures


def missing(reason: str) -> None:
    """Skip locally; in CI (CI=true) a missing PHP or MariaDB fails the test instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def php_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if PHP is None:
        missing("php CLI not installed (apt-get install php-cli php-curl php-msgpack)")
    return tmp_path_factory.mktemp("php")


@pytest.fixture(scope="session")
def php_db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    try:
        url = request.getfixturevalue("mariadb_url")
    except pytest.FixtureLookupError:
        url = None
    if url:
        yield str(url)
        return
    import pymysql

    name = f"php_test_{uuid.uuid4().hex[:10]}"
    try:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    except pymysql.MySQLError as exc:
        missing(f"MariaDB not reachable: {exc}")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


_services: list[ServiceProcess] = []
_nodes: list[PhpNode] = []


@pytest.fixture(scope="session")
def start_service(php_db_url: str, php_workdir: Path) -> Iterator[Callable[..., ServiceProcess]]:
    if not SERVICE_BIN.exists():
        missing(f"{SERVICE_BIN} missing (pip install -e .)")

    def start(port: int | None = None) -> ServiceProcess:
        svc = ServiceProcess(php_db_url, php_workdir, port).start()
        _services.append(svc)
        return svc

    yield start
    for svc in _services:
        svc.stop()


@pytest.fixture(scope="session")
def service(start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    """The shared service instance."""
    return start_service()


@pytest.fixture(scope="session")
def service2(start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    """A second instance on the same database (two services behind the nodes)."""
    return start_service()


@pytest.fixture(scope="session")
def start_node(php_workdir: Path) -> Iterator[Callable[..., PhpNode]]:
    cache: dict[Any, PhpNode] = {}

    def start(
        urls: str | list[str], *, ini: dict[str, str] | None = None, workers: int = 4,
        prepend: bool = True, fresh: bool = False, **env: str,
    ) -> PhpNode:  # fmt: skip
        url = urls if isinstance(urls, str) else ",".join(urls)
        full_env = {"SESSION_SERVICE_URL": url, "SESSION_SERVICE_TOKEN": TOKEN}
        full_env.update({f"SESSION_SERVICE_{k.upper()}": v for k, v in env.items()})
        key = (
            tuple(sorted(full_env.items())),
            tuple(sorted((ini or {}).items())),
            workers,
            prepend,
        )
        if not fresh and key in cache:
            return cache[key]
        node = PhpNode(php_workdir, full_env, ini, workers, prepend)
        _nodes.append(node)
        if not fresh:
            cache[key] = node
        return node

    yield start
    for node in _nodes:
        node.stop()


@pytest.fixture(autouse=True)
def no_php_errors() -> Iterator[None]:
    """Fail the test on any PHP warning/notice/deprecation or handler log line it did not expect."""
    for node in _nodes:
        node.unexpected()  # lines of earlier tests were already judged
    yield
    time.sleep(0.05)
    problems = {node.url: lines for node in _nodes if (lines := node.unexpected())}
    assert not problems, f"unexpected PHP log lines: {problems}"
