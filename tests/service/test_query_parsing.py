"""The lean path's query parsing gives what parse_qsl gives (first value wins)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from session_service.api.sessions import _parse_query

QUERIES = [
    "wait_ms=5000&lease_ms=30000",
    "wait_ms=1&wait_ms=2",
    "lock",
    "lock=",
    "&&lease_ms=100&",
    "lock=ab%20cd",
    "lock=a+b",
    "=v",
    "a=b=c",
    "a;b=c",
    "wait_ms=%31%30",
    "caf\xe9=\xe9",
    "",
]


@pytest.mark.parametrize("query", QUERIES)
def test_same_as_parse_qsl(query: str) -> None:
    expected: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        expected.setdefault(key, value)
    assert _parse_query(query) == expected
