"""Namespaces (tenants) are lower case ASCII, checked where they enter (issue 13.5):
the tokens configuration, the tokens file, and the store's own methods."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from session_service.errors import InvalidNamespace
from session_service.settings import Settings, parse_tokens, read_tokens
from tests.support import ROOT


@pytest.mark.parametrize("name", ["Shop", "shöp", "a b", "x" * 65, "ns/1", ""])
def test_a_namespace_outside_the_alphabet_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"must be 1-64 characters of \[a-z0-9_.-\]"):
        parse_tokens(f"{name}:secret")


def test_namespaces_equal_ignoring_case_are_refused_by_name() -> None:
    with pytest.raises(InvalidNamespace, match="namespaces 'Shop' and 'shop' differ only in case"):
        parse_tokens("shop:one,Shop:two")


def test_the_check_covers_the_flag_and_the_file_together(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("Shop:two\n")
    settings = Settings(tokens="shop:one", tokens_file=str(tokens_file))
    with pytest.raises(InvalidNamespace, match="'Shop' and 'shop'"):
        read_tokens(settings)


def test_valid_namespaces_pass() -> None:
    assert parse_tokens("shop-1.eu_west:a,default:b,c") == {
        "a": "shop-1.eu_west",
        "b": "default",
        "c": "default",
    }


def test_the_service_refuses_to_start_with_namespaces_equal_ignoring_case() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "session_service", "serve", "--db", "sqlite://",
         "--tokens", "Shop:one,shop:two"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "namespaces 'Shop' and 'shop' differ only in case" in done.stderr
    assert "Traceback" not in done.stderr
