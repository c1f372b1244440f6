"""Session ids: validated against PHP's alphabet and stored only as their SHA-256.

Storing the hash means a leaked database dump or log line cannot be replayed as a
cookie; the raw id only ever lives in the request that carries it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from session_service.errors import InvalidNamespace, InvalidSessionId

SESSION_ID_PATTERN = r"^[A-Za-z0-9,-]{22,256}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)

#: Tenants: lower case ASCII only, so that no collation (MariaDB's case- and
#: accent-insensitive ones included) can make two of them one.
NAMESPACE_PATTERN = r"^[a-z0-9_.-]{1,64}$"
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


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


def is_valid_namespace(namespace: str) -> bool:
    return _NAMESPACE.fullmatch(namespace) is not None


def check_namespaces(namespaces: Iterable[str]) -> None:
    """Raise InvalidNamespace for configured namespaces that differ only in case (named
    first: they were one tenant on MariaDB before schema 2), or outside [a-z0-9_.-]."""
    by_folded: dict[str, set[str]] = {}
    for namespace in namespaces:
        by_folded.setdefault(namespace.casefold(), set()).add(namespace)
    for same in by_folded.values():
        if len(same) > 1:
            names = " and ".join(repr(name) for name in sorted(same))
            raise InvalidNamespace(
                f"namespaces {names} differ only in case; tenants are compared byte for "
                "byte and must be lower case: give them distinct names"
            )
    for namespace in sorted(set(namespaces)):
        if not is_valid_namespace(namespace):
            raise InvalidNamespace(
                f"namespace {namespace!r} must be 1-64 characters of [a-z0-9_.-] "
                "(lower case ASCII letters, digits, '_', '.', '-')"
            )
