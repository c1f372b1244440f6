"""php_handler/ as a Composer package: composer.json is valid and its PSR-4
autoloading finds the handler (installing through Composer is one of the two ways
docs/php_handler.md gives)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _composer(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    composer = shutil.which("composer")
    assert composer, "composer is not installed (make test installs Debian's composer)"
    return subprocess.run(
        [composer, "--no-interaction", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_composer_json_is_valid_and_autoloads_the_handler(tmp_path: Path) -> None:
    package = tmp_path / "php_handler"
    shutil.copytree(REPO / "php_handler", package)
    checked = _composer("validate", "--strict", "--no-check-publish", cwd=package)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dumped = _composer("dump-autoload", cwd=package)
    assert dumped.returncode == 0, dumped.stdout + dumped.stderr
    probe = subprocess.run(
        [
            "php", "-d", "error_reporting=E_ALL", "-d", "display_errors=stderr", "-r",
            'require "vendor/autoload.php";'
            ' $h = new SessionService\\Handler(["url" => "http://127.0.0.1:9"]);'
            ' echo get_class($h), PHP_EOL;',
        ],
        cwd=package, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0 and probe.stderr == "", probe.stderr
    assert probe.stdout.strip() == "SessionService\\Handler"
