"""A shortened ``make chaos``: a MariaDB restart and a frozen service instance under load,
on the real stack (private MariaDB, two service instances, three PHP nodes, balancer).
Nothing acknowledged may be lost, nothing applied twice, and the frozen instance's late
write must be refused (not reset: the freeze, 6 s, outlasts the service's keep-alive timer,
5 s, which used to close the probe's connection before its queued write was read)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stack.runner import REPO

pytestmark = [pytest.mark.php, pytest.mark.mariadb]


def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    rows_path = tmp_path / "rows.json"
    cmd = [
        sys.executable, "-m", "loadtests.chaos", "--plain", "--scenarios", "db,freeze",
        "--users", "4", "--warmup", "1", "--fault", "1", "--freeze", "6", "--lease-ms", "1000",
        "--observe", "2", "--node-workers", "2", "--out", str(tmp_path), "--json", str(rows_path),
    ]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| scenario |" in r.stdout and "OK no acknowledged increment lost" in r.stdout
    rows = {row["scenario"]: row for row in json.loads(rows_path.read_text())}
    assert set(rows) == {"db", "freeze"}
    for row in rows.values():
        assert row["lost"] == 0 and row["duplicates"] == 0, row
        assert row["acknowledged"] > 20, row
        assert row["acknowledged"] <= row["stored"] <= row["acknowledged"] + row["unknown"], row
        assert row["recovery_seconds"] is not None and row["recovery_seconds"] <= 5, row
        assert not row["violations"], row
    assert any("late write was refused: 409 lock_lost" in n for n in rows["freeze"]["notes"])
    assert any("stored: 'n|i:102;'" in n for n in rows["freeze"]["notes"])
