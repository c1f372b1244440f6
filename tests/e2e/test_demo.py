"""``make demo`` as a user runs it: the walk's checks, and Ctrl-C leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stack.runner import REPO


def demo_cmd(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "stack.demo", "--plain", "--port", "0", "--stats-port", "0",
        "--workdir", str(workdir), "--db", f"sqlite:///{workdir / 'sessions.db'}", *extra,
    ]  # fmt: skip


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_demo_once_walks_every_node_and_checks_everything(tmp_path: Path) -> None:
    r = subprocess.run(
        demo_cmd(tmp_path, "--once"), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line[:1].isdigit()]
    assert len(rows) == 14, r.stdout
    nodes = [next(c for c in row if c.startswith("web")) for row in rows]
    assert set(nodes[:7]) == {"web1", "web2", "web3"}
    assert "web2" not in nodes[7:11]  # stopped
    assert "web2" in nodes[11:]  # restarted
    assert all(row[-1] == "ok" for row in rows)
    assert "-- web2 stopped --" in r.stdout and "-- web2 restarted --" in r.stdout
    assert "\x1b[" not in r.stdout  # plain output when not a terminal
    assert "OK 14 requests, 3 nodes" in r.stdout
    assert not processes_mentioning(str(tmp_path))


def test_demo_keeps_running_until_ctrl_c_and_leaves_no_orphans(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        demo_cmd(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line or time.monotonic() > deadline:
                break
        out = "".join(lines)
        assert "Ctrl-C stops" in out, out
        assert "balancer stats" in out and "/shop/index.php" in out
        started = processes_mentioning(str(tmp_path))
        assert len(started) >= 5, started  # service, 3 nodes (and their workers), balancer
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + rest
    assert "stopping" in rest
    assert not processes_mentioning(str(tmp_path))
