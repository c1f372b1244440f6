"""stack.processes, the one process harness: real child processes, real ports."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from stack.processes import (
    Process,
    ProcessError,
    free_port,
    free_ports,
    port_answers,
    url_answers,
    wait_port,
    wait_until,
)

#: A tiny HTTP server on the port given as argv[1] that forks a child which outlives it
#: unless killed (like php -S's workers) and writes the child's pid to argv[2].
SERVER = """
import http.server, os, sys, time
port, pidfile = int(sys.argv[1]), sys.argv[2]
child = os.fork()
if child == 0:
    while True:
        time.sleep(1)
open(pidfile, "w").write(str(child))
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def server(tmp_path: Path) -> tuple[Process, int]:
    port = free_port()
    cmd = [sys.executable, "-c", SERVER, str(port), str(tmp_path / "child.pid")]
    return Process("server", cmd, tmp_path / "server.log", cwd=tmp_path), port


def test_start_wait_and_stop_take_the_forked_child_along(tmp_path: Path) -> None:
    process, port = server(tmp_path)
    with process:
        process.wait_http(f"http://127.0.0.1:{port}/", timeout=30)
        assert port_answers(port) and url_answers(f"http://127.0.0.1:{port}/")
        assert os.getpgid(process.pid) == process.pid  # its own group
        child = int((tmp_path / "child.pid").read_text())
        assert alive(child)
    assert not process.running
    assert wait_until(lambda: not alive(child), 10), "the forked child outlived the stop"
    assert "serving" in (tmp_path / "server.log").read_text()
    process.stop()  # idempotent


def test_a_process_that_dies_while_awaited_is_named_with_its_log_tail(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('bad config: no such file'); sys.exit(3)"]
    process = Process("broken", cmd, tmp_path / "broken.log").start()
    with pytest.raises(ProcessError) as caught:
        process.wait_port(free_port(), timeout=60)
    message = str(caught.value)
    assert "broken: exited with 3" in message and "bad config: no such file" in message
    assert str(tmp_path / "broken.log") in message


def test_a_port_that_never_opens_times_out_with_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(ProcessError, match=f"no connection to 127.0.0.1:{port} within 0.3 s"):
        wait_port(port, timeout=0.3)
    sleeper = Process("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    with sleeper, pytest.raises(ProcessError, match="sleeper: no connection"):
        sleeper.wait_port(port, timeout=0.3)


def test_a_frozen_process_is_stopped_by_sigterm_not_left_to_the_grace_period(
    tmp_path: Path,
) -> None:
    process = Process("frozen", [sys.executable, "-c", "import time; time.sleep(60)"]).start()
    process.signal(signal.SIGSTOP)
    started = time.monotonic()
    code = process.stop(timeout=60)
    assert code == -signal.SIGTERM  # SIGCONT let it act on the SIGTERM
    assert time.monotonic() - started < 50


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    process = Process("stubborn", [sys.executable, "-c", code], tmp_path / "s.log").start()
    process.wait_for(lambda: "up" in process.tail(), "its first line")
    assert process.stop(timeout=0.5) == -signal.SIGKILL
    process.start()  # may be started again
    assert process.running
    process.kill()
    assert process.returncode == -signal.SIGKILL


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        taken.listen()
        assert free_port(busy) != busy
        assert free_port(0, {busy}) != busy
    assert free_port(ports[0]) == ports[0]


#: A leader that forks a worker which notes a SIGTERM it receives; the leader does not
#: pass SIGTERM on (a supervisor that would, stops its workers in its own order).
SUPERVISOR = """
import os, signal, sys, time
mark = sys.argv[1]
if os.fork() == 0:
    signal.signal(signal.SIGTERM, lambda *_: open(mark, "w").write("worker got SIGTERM"))
    print("worker ready", flush=True)
    while True:
        time.sleep(1)
time.sleep(60)
"""


def test_sigterm_goes_to_the_leader_alone_and_sigkill_to_the_group(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    cmd = [sys.executable, "-c", SUPERVISOR, str(mark)]
    process = Process("supervisor", cmd, tmp_path / "supervisor.log").start()
    process.wait_for(lambda: "worker ready" in process.tail(), "the worker's first line")
    worker = next(
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and int(pid) != process.pid and _pgid(int(pid)) == process.pid
    )
    assert process.stop(timeout=30) == -signal.SIGTERM
    assert wait_until(lambda: not alive(worker), 10), "the worker outlived the stop"
    assert not mark.exists(), "the worker was sent SIGTERM behind its supervisor's back"


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1
