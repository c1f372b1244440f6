"""What the store returns: plain dataclasses, shared by the store, the HTTP layer and
the Python client (which must not need SQLAlchemy to hold them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as read or locked. `version` 0 and empty data mean it does not exist yet."""

    data: bytes
    version: int
    expires_at: int
    lock: str | None = None
    lease_expires_at_ms: int | None = None
    new: bool = False


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class LockAttempt:
    """One try at the lease: `record` when acquired, else when the holder's lease ends."""

    record: SessionRecord | None
    held_until_ms: int = 0
