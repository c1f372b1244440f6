"""The load test: a short real run passes, and its checks catch sessions that do not follow
the user (nodes on PHP's own files handler, one directory each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stack.runner import BIN, REPO, Stack, StackConfig

LOCUSTFILE = REPO / "loadtests" / "locustfile.py"


def test_short_loadtest_is_consistent_and_writes_reports(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "stack.loadtest", "--plain", "--sqlite", "--time", "4",
        "--users", "6", "--spawn-rate", "6", "--node-workers", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for label in ("requests per second", "p50 / p95 / p99", "failures", "requests per node"):
        assert label in r.stdout
    assert "OK consistent" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["consistent"] and not summary["inconsistencies"]
    assert set(summary["nodes"]) == {"web1", "web2", "web3"}
    assert summary["checked"]["shop"] > 10 and summary["checked"]["burst"] > 0
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert (tmp_path / "locust_stats.csv").exists()


def test_locust_checks_fail_when_sessions_stay_on_one_node(tmp_path: Path) -> None:
    config = StackConfig(
        db_url=f"sqlite:///{tmp_path / 'unused.db'}", workdir=tmp_path / "stack", handler=False
    )
    summary_path = tmp_path / "summary.json"
    env = dict(os.environ, LOADTEST_NODES="web1,web2,web3", LOADTEST_SUMMARY=str(summary_path))
    with Stack(config) as stack:
        cmd = [
            str(BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "-u", "3", "-r", "3",
            "-t", "3s", "--host", stack.url, "--only-summary", "--loglevel", "ERROR",
        ]  # fmt: skip
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode == 1, r.stdout + r.stderr
    summary = json.loads(summary_path.read_text())
    assert not summary["consistent"]
    assert sum(summary["inconsistencies"].values()) > 0, summary
