"""Configuration through php.ini's session.save_path, as phpredis and memcached users
set it: "URL[,URL...][?key=value&...]", keys being the handler's option names.

Through real PHP processes: web nodes (php -S, handler from auto_prepend_file) with
no SESSION_SERVICE_* variable at all, and `php -d session.save_path=...` runs for the
errors. Environment variables still win over save_path, key by key.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import free_port

from . import conftest
from .conftest import PREPEND, REPO, TOKEN, Browser, PhpNode, ServiceProcess


def ini_string(value: str) -> str:
    """A php.ini value in double quotes, as `session.save_path = "..."` is written
    (unquoted, '=' and '&' are php.ini syntax errors)."""
    return f'"{value}"'


def node_with_save_path(workdir: Path, save_path: str, env: dict[str, str]) -> PhpNode:
    node = PhpNode(workdir, env, {"session.save_path": ini_string(save_path)})
    conftest._nodes.append(node)  # stopped, and its log judged, like the fixture's nodes
    return node


@pytest.fixture()
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_save_path_carries_urls_and_options(
    php_workdir: Path, service: ServiceProcess, token_file: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    node = node_with_save_path(
        php_workdir,
        f"{dead},{service.url}?token_file={token_file}&connect_timeout_ms=300&lock_wait_ms=3000",
        {},
    )
    b = Browser()
    assert b.get(node, "incr")["n"] == 1
    assert b.get(node, "incr")["n"] == 2
    hits = node.expect(
        rf"session-service: {dead} unreachable \(curl error 7.*\), trying {service.url}"
    )
    assert len(hits) == 2, "both URLs of save_path are used, in order"


def test_environment_wins_over_save_path(
    php_workdir: Path, service: ServiceProcess, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    dead = f"http://127.0.0.1:{free_port()}"
    node = node_with_save_path(
        php_workdir,
        f"{dead}?token_file={wrong}",
        {"SESSION_SERVICE_URL": service.url, "SESSION_SERVICE_TOKEN": TOKEN},
    )
    b = Browser()
    assert b.get(node, "incr")["n"] == 1
    assert b.get(node, "incr")["n"] == 2  # no "trying" line, no 401: both from the env


def test_a_directory_in_save_path_is_left_to_php(
    php_workdir: Path, service: ServiceProcess
) -> None:
    """Debian's default save_path (the files handler's directory) is not for the handler."""
    node = PhpNode(
        php_workdir,
        {"SESSION_SERVICE_URL": service.url, "SESSION_SERVICE_TOKEN": TOKEN},
        {"session.save_path": "/var/lib/php/sessions"},
    )
    conftest._nodes.append(node)
    assert Browser().get(node, "incr")["n"] == 1


RAN = conftest.APP_DIR / "ran.php"


def prepend_with(
    save_path: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A CLI request with the handler prepended and session.save_path set in php.ini
    (`php -r` code gets no auto_prepend_file: the script is a file)."""
    return subprocess.run(
        [
            "php", "-d", "error_reporting=-1", "-d", "display_errors=stderr", "-d", "log_errors=0",
            "-d", f"session.save_path={ini_string(save_path)}",
            "-d", f"auto_prepend_file={PREPEND}", str(RAN),
        ],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )  # fmt: skip


SP = "(session.save_path)"
BAD: dict[str, str] = {
    "http://a:1?colour=red": 'session.save_path: key "colour" is not an option (known: ',
    "http://a:1?lock_wait_ms=soon": f"\"lock_wait_ms\" must be an integer >= 0, got 'soon' {SP}",
    "http://a:1?lock=sometimes": f'"lock" must be one of exclusive, none, got "sometimes" {SP}',
    "http://a:1?token=secret": 'session.save_path: key "token" is refused: session.save_path is',
    "http://a:1?url=http://b:2": 'session.save_path: key "url" is not a key: the URLs come before',
    "http://a:1?lock=none&lock=none": 'session.save_path: key "lock" is given twice',
    "http://a:1?lock": 'session.save_path: key "lock" has no value (write key=value)',
    "http://a:1?lock=": 'session.save_path: key "lock" has an empty value',
    "http://a:1?token_file=/no/token": f'"token_file": "/no/token" is not a readable file {SP}',
    "http://a:1,ftp://b:2": f'url "ftp://b:2" must start with http:// or https:// {SP}',
}


@pytest.mark.parametrize(("save_path", "message"), BAD.items())
def test_bad_save_path_is_a_clear_configuration_error(save_path: str, message: str) -> None:
    out = prepend_with(save_path)
    assert "the script ran" not in out.stdout
    assert "Uncaught InvalidArgumentException: session-service: " in out.stderr, out.stderr
    assert message in out.stderr, out.stderr


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    out = prepend_with("http://a:1?lock_wait_ms=100", {"SESSION_SERVICE_LOCK_WAIT_MS": "soon"})
    assert "(environment variable SESSION_SERVICE_LOCK_WAIT_MS)" in out.stderr, out.stderr
    both = tmp_path / "token"
    both.write_text("t")
    out = prepend_with(f"http://a:1?token_file={both}", {"SESSION_SERVICE_LOCK_WAIT_MS": "100"})
    assert out.stdout == "the script ran" and out.stderr == "", out.stderr
