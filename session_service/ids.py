"""Session ids: validated against PHP's alphabet and stored only as their SHA-256.

Storing the hash means a leaked database dump or log line cannot be replayed as a
cookie; the raw id only ever lives in the request that carries it.
"""

from __future__ import annotations

import hashlib
import re

from session_service.errors import InvalidSessionId

SESSION_ID_PATTERN = r"^[A-Za-z0-9,-]{22,256}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)


def is_valid_session_id(sid: str) -> bool:
    return _SESSION_ID.fullmatch(sid) is not None


def hash_session_id(sid: str) -> bytes:
    """Return SHA-256 of a valid id, or raise InvalidSessionId."""
    if not is_valid_session_id(sid):
        raise InvalidSessionId("session id must be 22 to 256 characters of [A-Za-z0-9,-]")
    return hashlib.sha256(sid.encode("ascii")).digest()


def log_id(id_hash: bytes) -> str:
    """A short, non-reversible label for logs (never the raw id)."""
    return id_hash[:6].hex()
