"""The command line: bad input is one line and exit status 2; config files; workers; daemon."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stack.processes import wait_port
from tests.balancer.conftest import (
    ROOT,
    BackendProcess,
    Balancer,
    StartBalancer,
    get,
)
from tests.support import free_port

SCRIPT = Path(sys.executable).with_name("session-balancer")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=30, cwd=ROOT, check=False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate", "8080", "b:80"], "unrecognized arguments: --frobnicate"),
        (["-f", "99999", "b:80"], "port 99999 out of range"),
        (["-f", "80a", "b:80"], "missing port in '80a'"),
        (["-f", "8080", "b:http"], "invalid port 'http'"),
        (["-f", "8080", "b:80,weight=x"], "weight must be an integer"),
        (["-f", "8080"], "no backend given"),
        ([], "give LISTEN and at least one BACKEND, or --config FILE"),
        (["-f", "--config", "/nonexistent/b.toml"], "cannot read config file"),
        (["-f", "--workers", "0", "8080", "b"], "--workers must be between 1 and 64"),
        (["-f", "--connect-timeout", "-1", "8080", "b"], "must not be negative"),
        (["-f", "--check-path", "health", "8080", "b"], "--check-path must start with /"),
        (["-f", "--trusted-proxy", "10.0.0.0/33", "8080", "b"], "invalid trusted proxy address"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen = [", "invalid config file"),
        ('listen = "8080"\ncolour = "red"\n', "unknown config key(s): colour"),
        ('[timeouts]\nconect = 3\n[[backend]]\naddress = "b"\n', "unknown key(s) in [timeouts]"),
        ('listen = "8080"\n[[backend]]\nport = 80\n', "each [[backend]] needs an address"),
        ('mode = "udp"\n', "mode must be 'http' or 'tcp'"),
        ('trusted_proxies = ["proxy.lan"]\n', "invalid trusted proxy address 'proxy.lan'"),
        ("trusted_proxies = 10\n", "trusted_proxies must be a list"),
    ],
)
def test_bad_config_files_are_one_line_and_status_2(
    text: str, message: str, tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_cli("-f", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_help_explains_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "LISTEN", "BACKEND", "--config", "--foreground", "--debug", "--tcp", "--workers",
        "--stats", "--debug-header", "--connect-timeout", "--server-timeout", "--idle-timeout",
        "--header-timeout", "--drain-timeout", "--max-conn", "--max-header-size", "--retries",
        "--check-path", "--check-interval", "--rise", "--fall", "--slowstart", "weight=N",
        "--trusted-proxy",
    ):  # fmt: skip
        assert option in result.stdout


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("-f", f"127.0.0.1:{port}", "127.0.0.1:9")
    assert result.returncode == 1
    assert "Address already in use" in result.stderr and "Traceback" not in result.stderr


def test_a_full_config_file_runs(backends: list[BackendProcess], tmp_path: Path) -> None:
    port, stats_port = free_port(), free_port()
    b1, b2, b3 = backends
    config = tmp_path / "balancer.toml"
    config.write_text(
        f"""
listen = "127.0.0.1:{port}"
mode = "http"
workers = 1
stats = "127.0.0.1:{stats_port}"
debug_header = "X-Served-By"

[timeouts]
connect = 2
server = 20
idle = 15
header = 5
drain = 10
backend_idle = 5

[limits]
max_connections = 100
max_header_size = 8192
retries = 2
pool_size = 8

[health]
path = "/health"
interval = 0.5
timeout = 1
rise = 2
fall = 2
slowstart = 5

[[backend]]
address = "{b1.address}"
name = "b1"
weight = 2

[[backend]]
address = "{b2.address}"
name = "b2"

[[backend]]
address = "{b3.address}"
weight = 0
"""
    )
    balancer = Balancer(["-f", "--config", str(config)], port, stats_port)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        names = []
        for _ in range(9):
            conn.request("GET", "/")
            response = conn.getresponse()
            names.append(response.read().decode())
            assert response.getheader("X-Served-By") == names[-1]
        conn.close()
        assert sorted(names) == ["b1"] * 6 + ["b2"] * 3  # weight 0: never chosen
    finally:
        balancer.stop()


def test_several_workers_share_the_port_and_merge_their_stats(
    backends: list[BackendProcess], start_balancer: StartBalancer
) -> None:
    balancer = start_balancer(backends, "--workers", "2")
    names = [get(balancer.port) for _ in range(60)]
    assert set(names) == {"b1", "b2", "b3"}
    for _ in range(100):  # workers report once a second
        stats = balancer.stats()
        if stats.get("workers") == 2 and stats["requests"] >= 60:
            break
        time.sleep(0.1)
    assert stats["workers"] == 2
    assert sum(b["requests"] for b in stats["backends"]) >= 60
    balancer.signal(signal.SIGTERM)
    assert balancer.proc.wait(30) == 0


def test_without_f_it_detaches_and_writes_a_pidfile(
    backends: list[BackendProcess], tmp_path: Path
) -> None:
    port = free_port()
    pidfile = tmp_path / "balancer.pid"
    result = run_cli("--pidfile", str(pidfile), str(port), backends[0].address)
    assert result.returncode == 0
    wait_port(port)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    try:
        assert get(port) == "b1"
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not pidfile.exists():
            break
        time.sleep(0.05)
    assert not pidfile.exists()
