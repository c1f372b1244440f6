"""The ledger of ``make chaos`` (loadtests/chaos_ledger.py): answers and stored values are judged
as lost, duplicated or consistent, with unknown outcomes accounted for."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from loadtests.chaos_ledger import User


@pytest.fixture
def user() -> Iterator[User]:
    with httpx.Client() as http:
        u = User("u1", http, sid="s" * 32, first=1, last=1)
        yield u


def ok(user: User, n: int, sid: str | None = None) -> str:
    return user._acknowledged(0.0, 0.1, {"n": n, "sid": sid or user.sid}, "").kind


def test_consecutive_answers_and_matching_store_are_consistent(user: User) -> None:
    for n in (2, 3, 4):
        assert ok(user, n) == "ok"
    assert user.settle(4) == 3
    assert (user.lost, user.duplicates) == (0, 0)


def test_a_stale_answer_is_a_lost_update(user: User) -> None:
    ok(user, 2)
    ok(user, 3)
    ok(user, 3)  # computed on the value before the last acknowledged increment
    assert user.lost == 1


def test_a_store_behind_the_last_acknowledged_value_is_lost(user: User) -> None:
    ok(user, 2)
    ok(user, 3)
    user.settle(2)
    assert (user.lost, user.duplicates) == (1, 0)


def test_unknown_outcomes_may_or_may_not_have_landed(user: User) -> None:
    ok(user, 2)
    user.unknown_since += 2  # two failed writes
    assert ok(user, 4) == "ok"  # one of them landed
    user.unknown_since += 1
    user.settle(5)  # and the last one too
    assert (user.lost, user.duplicates) == (0, 0)


def test_more_increments_than_were_sent_is_a_duplicate(user: User) -> None:
    ok(user, 2)
    ok(user, 4)  # nothing unknown since 2: one increment applied twice
    assert user.duplicates == 1
    user.settle(6)
    assert user.duplicates == 3


def test_an_answer_from_another_session_is_wrong(user: User) -> None:
    assert ok(user, 2, sid="x" * 32) == "wrong"
    assert user.last == 1 and user.unknown_since == 1


def test_a_missing_session_loses_every_acknowledged_increment(user: User) -> None:
    ok(user, 2)
    ok(user, 3)
    assert user.settle(None) == 0
    assert user.lost == 2
