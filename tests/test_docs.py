"""The docs stay true to the code: the README's settings table is the generated one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from session_service.settings import markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_matches_the_settings_object() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "run scripts/update-readme.py"


def test_every_setting_has_a_flag_in_serve_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "session_service", "serve", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for line in markdown_table().splitlines()[2:]:
        flag = line.split("`")[1]
        assert flag in out, flag


def test_cli_rejects_bad_values_with_one_clear_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "session_service", "migrate", "--db", "postgresql://x/y"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "session-service: invalid setting" in result.stderr
    assert "Traceback" not in result.stderr
