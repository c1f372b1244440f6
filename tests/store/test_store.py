"""SessionStore semantics, each test on SQLite and on the real MariaDB."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import select, text

from session_service.errors import (
    DataTooLarge,
    InvalidLockToken,
    InvalidNamespace,
    InvalidSessionId,
    LockLost,
    LockTimeout,
    SessionLocked,
    SessionNotFound,
    VersionConflict,
)
from session_service.hexliteral import HEX_LIMIT
from session_service.ids import hash_session_id
from session_service.schema import sessions
from session_service.store import SessionStore
from tests.support import FakeClock, session_id

NS = "default"


def test_absent_session_reads_as_none(store: SessionStore) -> None:
    sid = session_id()
    assert store.read(NS, sid) is None
    assert store.exists(NS, sid) is False


def test_lock_new_session_then_write_and_read(store: SessionStore) -> None:
    sid = session_id()
    record = store.lock(NS, sid, wait_ms=0, lease_ms=5000)
    assert (record.new, record.version, record.data) == (True, 0, b"")
    assert record.lock is not None and len(record.lock) == 32
    assert store.exists(NS, sid), "a session being created under a lock exists (strict mode)"
    assert store.read(NS, sid) is None, "but has no data to read yet"
    assert store.try_lock(NS, sid, 5000).record is None, "the lease is exclusive"

    result = store.write(NS, sid, b"a|i:1;", 1440, lock=record.lock)
    assert result.version == 1
    again = store.read(NS, sid)
    assert again is not None and (again.data, again.version) == (b"a|i:1;", 1)
    assert again.expires_at == result.expires_at

    relocked = store.lock(NS, sid, wait_ms=0, lease_ms=5000)
    assert (relocked.new, relocked.version, relocked.data) == (False, 1, b"a|i:1;")


def test_lock_times_out_while_held(store: SessionStore) -> None:
    sid = session_id()
    store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    with pytest.raises(LockTimeout) as caught:
        store.lock(NS, sid, wait_ms=30, lease_ms=1000)
    assert caught.value.retry_after_ms > 0


def test_expired_lease_lets_next_holder_in_and_fences_the_stale_one(
    store: SessionStore, clock: FakeClock
) -> None:
    sid = session_id()
    store.write(NS, sid, b"v1", 600)
    stale = store.lock(NS, sid, wait_ms=0, lease_ms=1000)
    clock.advance(1.5)
    fresh = store.lock(NS, sid, wait_ms=0, lease_ms=1000)
    assert fresh.lock != stale.lock and fresh.data == b"v1"

    with pytest.raises(LockLost):
        store.write(NS, sid, b"stale", 600, lock=stale.lock)
    with pytest.raises(LockLost):
        store.touch(NS, sid, 600, lock=stale.lock)
    with pytest.raises(LockLost):
        store.release(NS, sid, stale.lock or "")
    assert store.write(NS, sid, b"fresh", 600, lock=fresh.lock).version == 2
    record = store.read(NS, sid)
    assert record is not None and record.data == b"fresh"


def test_write_with_own_expired_but_untaken_lease_is_accepted(
    store: SessionStore, clock: FakeClock
) -> None:
    """Fencing is by token: nobody else locked, so the late write is still safe."""
    sid = session_id()
    held = store.lock(NS, sid, wait_ms=0, lease_ms=1000)
    clock.advance(5)
    assert store.write(NS, sid, b"late", 600, lock=held.lock).version == 1


def test_expired_session_is_absent_before_gc_and_not_revived(
    store: SessionStore, clock: FakeClock
) -> None:
    sid = session_id()
    store.write(NS, sid, b"old", 10)
    clock.advance(11)
    assert store.read(NS, sid) is None
    assert store.exists(NS, sid) is False
    with pytest.raises(SessionNotFound):
        store.touch(NS, sid, 100)
    record = store.lock(NS, sid, wait_ms=0, lease_ms=1000)
    assert (record.new, record.data, record.version) == (True, b"", 0)
    with pytest.raises(SessionNotFound):
        store.touch(NS, sid, 100, lock=record.lock)  # releases, but never revives
    assert store.read(NS, sid) is None
    assert store.try_lock(NS, sid, 1000).record is not None, "the touch released the lock"


def test_compare_and_set(store: SessionStore) -> None:
    sid = session_id()
    assert store.write(NS, sid, b"a", 100, if_version=0).version == 1
    with pytest.raises(VersionConflict):
        store.write(NS, sid, b"b", 100, if_version=0)
    assert store.write(NS, sid, b"b", 100, if_version=1).version == 2
    with pytest.raises(VersionConflict):
        store.write(NS, sid, b"c", 100, if_version=1)
    record = store.read(NS, sid)
    assert record is not None and (record.data, record.version) == (b"b", 2)


def test_compare_and_set_is_refused_while_another_request_holds_the_lease(
    store: SessionStore,
) -> None:
    """Issue 13.4: a CAS write that succeeded under someone's lease was then overwritten
    by the holder's fenced write: an acknowledged write lost. It is refused instead."""
    sid = session_id()
    store.write(NS, sid, b"v1", 600)
    held = store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    with pytest.raises(SessionLocked) as caught:
        store.write(NS, sid, b"cas", 600, if_version=1)
    assert caught.value.retry_after_ms > 0
    assert store.write(NS, sid, b"holder", 600, lock=held.lock).version == 2
    record = store.read(NS, sid)
    assert record is not None and (record.data, record.version) == (b"holder", 2)
    # the lease is free again: the compare-and-set applies (or reports the version)
    with pytest.raises(VersionConflict):
        store.write(NS, sid, b"cas", 600, if_version=1)
    assert store.write(NS, sid, b"cas", 600, if_version=2).version == 3


def test_compare_and_set_on_a_new_session_being_locked_is_refused(store: SessionStore) -> None:
    sid = session_id()
    held = store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    with pytest.raises(SessionLocked):
        store.write(NS, sid, b"cas", 600, if_version=0)
    assert store.write(NS, sid, b"holder", 600, lock=held.lock).version == 1
    record = store.read(NS, sid)
    assert record is not None and record.data == b"holder"


def test_compare_and_set_after_an_expired_lease_fences_the_late_holder(
    store: SessionStore, clock: FakeClock
) -> None:
    """A lease that ran out no longer blocks a CAS write, and the CAS write takes the
    late holder's token away, so its fenced write cannot overwrite the CAS write."""
    sid = session_id()
    store.write(NS, sid, b"v1", 600)
    late = store.lock(NS, sid, wait_ms=0, lease_ms=1000)
    clock.advance(2)
    assert store.write(NS, sid, b"cas", 600, if_version=1).version == 2
    with pytest.raises(LockLost):
        store.write(NS, sid, b"late", 600, lock=late.lock)
    record = store.read(NS, sid)
    assert record is not None and record.data == b"cas"


def test_lock_and_if_version_both_apply(store: SessionStore) -> None:
    """Issue 13.4: `lock` with a wrong if_version was silently accepted. Both apply now:
    a wrong version is refused and leaves the session and the lock as they were."""
    sid = session_id()
    store.write(NS, sid, b"v1", 600)
    held = store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    with pytest.raises(VersionConflict):
        store.write(NS, sid, b"wrong", 600, lock=held.lock, if_version=7)
    with pytest.raises(VersionConflict):
        store.write(NS, sid, b"wrong", 600, lock=held.lock, if_version=0)
    record = store.read(NS, sid)
    assert record is not None and (record.data, record.version) == (b"v1", 1)
    assert store.try_lock(NS, sid, 1000).record is None, "the refused write kept the lock"
    assert store.write(NS, sid, b"v2", 600, lock=held.lock, if_version=1).version == 2
    assert store.try_lock(NS, sid, 1000).record is not None, "the write released the lock"


def test_lock_and_if_version_on_a_new_session(store: SessionStore) -> None:
    sid = session_id()
    held = store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    with pytest.raises(VersionConflict):
        store.write(NS, sid, b"x", 600, lock=held.lock, if_version=1)
    assert store.write(NS, sid, b"first", 600, lock=held.lock, if_version=0).version == 1
    with pytest.raises(LockLost):  # written and released: the token is no longer the lock
        store.write(NS, sid, b"again", 600, lock=held.lock, if_version=1)
    other = store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    with pytest.raises(LockLost):
        store.write(NS, sid, b"stale", 600, lock=held.lock, if_version=1)
    assert store.write(NS, sid, b"second", 600, lock=other.lock, if_version=1).version == 2


def test_last_write_wins_bumps_version(store: SessionStore) -> None:
    sid = session_id()
    assert store.write(NS, sid, b"1", 100).version == 1
    assert store.write(NS, sid, b"2", 100).version == 2
    assert store.write(NS, sid, b"3", 100).version == 3


def test_touch_skips_small_moves_and_releases_the_lock(
    store: SessionStore, clock: FakeClock
) -> None:
    sid = session_id()
    first = store.write(NS, sid, b"x", 1000)
    clock.advance(10)  # moving expiry by 10 s of a 1000 s ttl: below the 10% threshold
    assert store.touch(NS, sid, 1000).expires_at == first.expires_at
    clock.advance(200)
    moved = store.touch(NS, sid, 1000)
    assert moved.expires_at == first.expires_at + 210
    held = store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    assert store.touch(NS, sid, 1000, lock=held.lock).version == moved.version
    assert store.try_lock(NS, sid, 1000).record is not None


def test_release_and_bad_tokens(store: SessionStore) -> None:
    sid = session_id()
    held = store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    assert held.lock
    store.release(NS, sid, held.lock)
    with pytest.raises(LockLost):
        store.release(NS, sid, held.lock)
    with pytest.raises(InvalidLockToken):
        store.release(NS, sid, "not-a-token")
    with pytest.raises(InvalidLockToken):
        store.write(NS, sid, b"x", 10, lock="zz" * 16)


def test_destroy_removes_and_fences_the_holder(store: SessionStore) -> None:
    sid = session_id()
    store.write(NS, sid, b"x", 100)
    held = store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    store.destroy(NS, sid)
    assert store.read(NS, sid) is None and not store.exists(NS, sid)
    with pytest.raises(LockLost):
        store.write(NS, sid, b"after destroy", 100, lock=held.lock)
    assert store.read(NS, sid) is None
    store.destroy(NS, sid)  # destroying an absent session is fine


def test_gc_deletes_expired_unlocked_rows_in_batches(
    make_store: Callable[..., SessionStore], clock: FakeClock
) -> None:
    store = make_store(clock, gc_batch=2)
    expired = [session_id() for _ in range(5)]
    for sid in expired:
        store.write(NS, sid, b"x", 10)
    live = session_id()
    store.write(NS, live, b"keep", 10_000)
    locked = session_id()
    store.write(NS, locked, b"locked", 10)
    store.lock(NS, locked, wait_ms=0, lease_ms=60_000)
    clock.advance(20)

    assert store.gc() >= 5
    with store.engine.connect() as conn:
        left = {
            row.id_hash
            for row in conn.execute(select(sessions.c.id_hash).where(sessions.c.namespace == NS))
        }
    assert not {hash_session_id(s) for s in expired} & left
    assert hash_session_id(live) in left
    assert hash_session_id(locked) in left, "a held lease protects an expired row from gc"
    clock.advance(61)
    store.gc()
    assert not store.exists(NS, locked)


def test_binary_data_round_trips(store: SessionStore) -> None:
    sid = session_id()
    payload = bytes(range(256)) * 4
    store.write(NS, sid, payload, 100)
    record = store.read(NS, sid)
    assert record is not None and record.data == payload


@pytest.mark.parametrize("size", [0, 256, HEX_LIMIT, HEX_LIMIT + 1])
def test_data_either_side_of_the_hex_literal_limit_round_trips(
    make_store: Callable[..., SessionStore], size: int
) -> None:
    """On MySQL bytes go as X'...' up to HEX_LIMIT and escaped beyond: both are exact."""
    store = make_store(max_data_bytes=8 * 1024 * 1024)
    sid = session_id()
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    record = store.lock(NS, sid, wait_ms=0, lease_ms=5000)
    store.write(NS, sid, payload, 100, lock=record.lock)
    again = store.lock(NS, sid, wait_ms=0, lease_ms=5000)
    assert again.data == payload
    store.write(NS, sid, payload[::-1], 100, lock=again.lock)
    read = store.read(NS, sid)
    assert read is not None and read.data == payload[::-1]


def test_too_large_is_refused_and_leaves_the_session_intact(
    make_store: Callable[..., SessionStore], clock: FakeClock
) -> None:
    store = make_store(clock, max_data_bytes=1000)
    sid = session_id()
    store.write(NS, sid, b"ok", 100)
    held = store.lock(NS, sid, wait_ms=0, lease_ms=60_000)
    with pytest.raises(DataTooLarge):
        store.write(NS, sid, b"x" * 1001, 100, lock=held.lock)
    assert store.write(NS, sid, b"y" * 1000, 100, lock=held.lock).version == 2


@pytest.mark.parametrize(
    "bad", ["short", "a" * 21, "a" * 257, "a" * 30 + "/", "é" * 30, "a b" * 10]
)
def test_invalid_ids_are_refused(store: SessionStore, bad: str) -> None:
    with pytest.raises(InvalidSessionId):
        store.read(NS, bad)
    with pytest.raises(InvalidSessionId):
        store.write(NS, bad, b"x", 10)


def test_ids_are_stored_hashed_never_raw(store: SessionStore) -> None:
    sid = session_id()
    store.write(NS, sid, b"x", 100)
    with store.engine.connect() as conn:
        hashes = conn.execute(select(sessions.c.id_hash)).scalars().all()
        assert hash_session_id(sid) in hashes
        dump = repr(conn.execute(text("SELECT * FROM sessions")).all())
    assert sid not in dump


def test_namespaces_are_isolated(store: SessionStore) -> None:
    sid = session_id()
    store.write("app1", sid, b"one", 100)
    store.write("app2", sid, b"two", 100)
    one, two = store.read("app1", sid), store.read("app2", sid)
    assert one is not None and two is not None and (one.data, two.data) == (b"one", b"two")
    store.destroy("app1", sid)
    assert store.read("app1", sid) is None and store.read("app2", sid) is not None


@pytest.mark.parametrize("bad", ["Shop", "shöp", "", "x" * 65, "a b"])
def test_invalid_namespaces_are_refused(store: SessionStore, bad: str) -> None:
    sid = session_id()
    with pytest.raises(InvalidNamespace):
        store.write(bad, sid, b"x", 100)
    with pytest.raises(InvalidNamespace):
        store.read(bad, sid)


def test_concurrent_locked_increments_are_exact(make_store: Callable[..., SessionStore]) -> None:
    store = make_store()  # real clock
    sid = session_id()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                record = store.lock(NS, sid, wait_ms=20_000, lease_ms=10_000)
                count = int(record.data or b"0")
                store.write(NS, sid, str(count + 1).encode(), 100, lock=record.lock)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    record = store.read(NS, sid)
    assert record is not None and record.data == b"40" and record.version == 40


def test_round_trips_per_lock_and_write(
    store: SessionStore, request: pytest.FixtureRequest
) -> None:
    """The hot path's statement count: one statement to lock (two on a server without
    INSERT ... RETURNING, the MySQL path) and one to write, for new and existing sessions."""
    from sqlalchemy import event

    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]).split(None, 1)[0])

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        sid = session_id()
        for _ in range(2):  # a new session, then an existing one
            statements.clear()
            record = store.lock(NS, sid, wait_ms=0, lease_ms=5000)
            locked = list(statements)
            statements.clear()
            store.write(NS, sid, b"x", 1440, lock=record.lock)
            assert statements == ["UPDATE"]
            if request.node.callspec.params["db_url"] == "mariadb-two-step-lock":
                assert locked in (["SELECT", "INSERT"], ["SELECT", "UPDATE"])
            else:
                assert locked == ["INSERT"], "one INSERT ... RETURNING takes the lease"
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
