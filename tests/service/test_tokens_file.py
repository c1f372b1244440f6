"""The tokens file: a bad line never keeps a revoked token alive (issue 13 item 6),
the problem is shown by /readyz and the metrics, `session-service check-tokens FILE`
names the bad lines; and the admin scope for /v1/gc (issue 13 item 9)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from session_service import tokens
from session_service.api.auth import TokenAuth
from session_service.api.problems import ApiError
from session_service.settings import Settings
from tests.support import ROOT, ServiceProcess, session_id, wait_until


def replace(path: Path, text: str) -> None:
    """Put a new tokens file in place atomically, as docs/security.md asks."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def watching(path: Path) -> TokenAuth:
    settings = Settings(tokens_file=str(path))
    return TokenAuth(
        tokens.read_strictly(settings), reload=lambda: tokens.load(settings), watch=str(path)
    )


def accepts(auth: TokenAuth, secret: str) -> bool:
    auth._checked_at -= 2  # the next request looks at the file again
    try:
        auth.namespace(f"Bearer {secret}")
    except ApiError as error:
        assert error.status == 401
        return False
    return True


# -- the format ------------------------------------------------------------------------


def test_the_format_with_and_without_the_admin_scope() -> None:
    found = tokens.collect("shop:s1, shop+admin:s2 ,bare,ops + admin :s4", "--tokens")
    assert found.problems == []
    assert found.tokens == {
        "s1": tokens.Token("shop"),
        "s2": tokens.Token("shop", admin=True),
        "bare": tokens.Token("default"),
        "s4": tokens.Token("ops", admin=True),
    }


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("shop:", "empty secret"),
        ("sh op:x", "namespace"),
        ("shop+root:x", "unknown scope 'root'"),
        ("a" * 65 + ":x", "namespace"),
    ],
)
def test_a_bad_item_is_named_without_its_secret(item: str, words: str) -> None:
    found = tokens.collect(f"good:ok\n{item}", "tokens file t")
    assert found.tokens == {"ok": tokens.Token("good")}
    assert len(found.problems) == 1 and "tokens file t line 2" in found.problems[0]
    assert words in found.problems[0]
    assert ":x" not in found.problems[0]


def test_one_secret_with_two_meanings_grants_neither() -> None:
    found = tokens.collect("a:same\nb:ok\nc+admin:same", "tokens file t")
    assert found.tokens == {"ok": tokens.Token("b")}
    assert "lines 1, 3" in found.problems[0] and "same" not in found.problems[0].split(":")[0]


# -- reloading under a running service ---------------------------------------------------


def test_a_token_removed_with_a_bad_line_added_is_revoked(tmp_path: Path) -> None:
    """The defect: an edit that revokes one token and breaks another line kept every
    old token valid. Now the good lines apply; the bad one grants nothing, and is named."""
    path = tmp_path / "tokens"
    path.write_text("app:revoked\napp:kept\n")
    auth = watching(path)
    assert accepts(auth, "revoked") and auth.problem is None

    replace(path, "app:kept\napp:\nnew:added\n")
    assert not accepts(auth, "revoked"), "a removed token stops working despite the bad line"
    assert accepts(auth, "kept") and accepts(auth, "added")
    assert auth.problem is not None and "line 2" in auth.problem

    replace(path, "app:kept\n")
    assert accepts(auth, "kept") and auth.problem is None


def test_an_unreadable_file_keeps_the_tokens_in_use_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("app:kept\n")
    auth = watching(path)
    path.unlink()
    assert accepts(auth, "kept")
    assert auth.problem is not None and "cannot read" in auth.problem
    replace(path, "app:next\n")
    assert accepts(auth, "next") and not accepts(auth, "kept") and auth.problem is None


def metric(service: ServiceProcess, name: str) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_readyz_and_metrics_show_a_refused_line(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    path = tmp_path / "tokens"
    path.write_text("app:revoked\napp:kept\n")
    service = service_factory(
        f"sqlite:///{tmp_path / 's.db'}", tokens="", extra_args=["--tokens-file", str(path)]
    )
    url = f"{service.url}/v1/sessions/{session_id()}"

    def status(secret: str) -> int:
        return httpx.get(url, headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code

    assert status("revoked") == 404
    replace(path, "app:kept\nbroken+root:x\n")
    assert wait_until(lambda: status("revoked") == 401, 15), "the removed token still works"
    assert status("kept") == 404

    replace(path, "app:kept\n")
    assert wait_until(
        lambda: httpx.get(f"{service.url}/readyz", timeout=10).json()["status"] == "ready", 15
    )
    assert metric(service, "session_tokens_last_reload_successful") == 1
    good_since = metric(service, "session_tokens_last_reload_success_timestamp_seconds")
    replace(path, "app:kept\nbroken+root:x\n")
    assert wait_until(lambda: metric(service, "session_tokens_last_reload_successful") == 0, 15)
    ready = httpx.get(f"{service.url}/readyz", timeout=10)
    assert ready.status_code == 200, "one bad line does not take the instance out"
    assert ready.json()["status"] == "degraded"
    assert "line 2" in ready.json()["reason"] and "unknown scope 'root'" in ready.json()["reason"]
    assert metric(service, "session_tokens_last_reload_successful") == 0
    assert metric(service, "session_tokens_in_force") == 1
    assert metric(service, "session_tokens_last_reload_success_timestamp_seconds") == good_since

    replace(path, "app:kept\n")
    assert wait_until(
        lambda: httpx.get(f"{service.url}/readyz", timeout=10).json()["status"] == "ready", 15
    )
    assert metric(service, "session_tokens_last_reload_successful") == 1

    replace(path, "app:\n")  # nothing valid left: the instance can serve nobody
    assert wait_until(lambda: httpx.get(f"{service.url}/readyz", timeout=10).status_code == 503, 15)
    assert "no token accepted" in httpx.get(f"{service.url}/readyz", timeout=10).json()["reason"]


# -- session-service check-tokens FILE ----------------------------------------------------


def check_tokens(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "session_service", "check-tokens", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_check_tokens_names_each_bad_line_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("app:fine\nshop+admin:also-fine\n\nsh op:topsecret\napp:\n")
    result = check_tokens(path)
    assert result.returncode == 1
    assert "line 4" in result.stderr and "line 5" in result.stderr
    assert "topsecret" not in result.stderr + result.stdout


def test_check_tokens_passes_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("app:fine\nshop+admin:also-fine\n")
    result = check_tokens(path)
    assert result.returncode == 0, result.stderr
    assert "2 tokens" in result.stdout and "1 with the admin scope" in result.stdout


@pytest.mark.parametrize("content", [None, ""])
def test_check_tokens_fails_a_missing_or_empty_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    result = check_tokens(path)
    assert result.returncode == 1 and str(path) in result.stderr


def test_serve_refuses_to_start_with_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("app:fine\nshop+root:x\n")
    result = subprocess.run(
        [sys.executable, "-m", "session_service", "serve", "--tokens-file", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and "line 2" in result.stderr


# -- the admin scope ------------------------------------------------------------------------


def test_gc_needs_the_admin_scope(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = service_factory(
        f"sqlite:///{tmp_path / 's.db'}", tokens="app:tenant,ops+admin:operator"
    )
    gc = f"{service.url}/v1/gc"
    refused = httpx.post(gc, headers={"Authorization": "Bearer tenant"}, timeout=30)
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert "admin scope" in refused.json()["detail"]
    assert httpx.post(gc, timeout=30).status_code == 401
    assert httpx.post(gc, headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 401
    done = httpx.post(gc, headers={"Authorization": "Bearer operator"}, timeout=30)
    assert done.status_code == 200 and isinstance(done.json()["deleted"], int)
    # the admin token is also an ordinary token of its namespace
    sid = session_id()
    put = httpx.put(
        f"{service.url}/v1/sessions/{sid}",
        json={"data": "", "ttl": 60},
        headers={"Authorization": "Bearer operator"},
        timeout=30,
    )
    assert put.status_code == 200


def test_without_auth_gc_is_open(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = service_factory(
        f"sqlite:///{tmp_path / 's.db'}", tokens="", extra_args=["--insecure-no-auth"]
    )
    assert httpx.post(f"{service.url}/v1/gc", timeout=30).status_code == 200
