"""Bearer tokens to namespaces, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from session_service.api.problems import ApiError

_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="session-service"'}


class TokenAuth:
    """Maps `Authorization: Bearer <secret>` to the secret's namespace.

    Secrets are kept as SHA-256 digests and every configured one is compared with
    hmac.compare_digest, so neither timing nor a memory dump reveals them.
    """

    def __init__(self, tokens: dict[str, str], *, disabled: bool = False) -> None:
        self._digests = [
            (hashlib.sha256(secret.encode()).digest(), namespace)
            for secret, namespace in tokens.items()
        ]
        self.disabled = disabled

    def namespace(self, header: str | None) -> str:
        if self.disabled:
            return "default"
        if not header:
            raise ApiError(
                401, "unauthorized", "missing Authorization: Bearer token", _UNAUTHORIZED
            )
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(
                401, "unauthorized", "Authorization must be 'Bearer <token>'", _UNAUTHORIZED
            )
        digest = hashlib.sha256(secret.strip().encode()).digest()
        found: str | None = None
        for known, namespace in self._digests:
            if hmac.compare_digest(known, digest):
                found = namespace
        if found is None:
            raise ApiError(401, "unauthorized", "unknown token", _UNAUTHORIZED)
        return found
