"""Exceptions of the store. The HTTP layer maps each to one status code (docs/api.md)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class InvalidSessionId(StoreError):
    """The id is not 22-256 characters of PHP's alphabet [A-Za-z0-9,-]."""


class InvalidNamespace(StoreError, ValueError):
    """The namespace is not 1-64 characters of [a-z0-9_.-] (tenants compare byte for byte:
    no case or accent folding may make two tenants one)."""


class DataTooLarge(StoreError):
    """The payload is larger than the configured limit."""


class LockTimeout(StoreError):
    """Another holder kept the session's lease for the whole wait."""

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class SessionLocked(LockTimeout):
    """A compare-and-set write (if_version without lock) found the session's lease held by
    another request: writing then would let the holder's fenced write overwrite it."""


class LockLost(StoreError):
    """The fencing token is no longer the session's lock (lease taken over or destroyed)."""


class VersionConflict(StoreError):
    """A compare-and-set write found another version than the one it expected."""


class StoreUnavailable(StoreError):
    """The database could not be reached even after bounded retries."""


class SessionNotFound(StoreError):
    """The session does not exist or has expired."""


class InvalidLockToken(StoreError):
    """The lock token is not one this store could have issued (32 hex characters)."""
