"""Bearer tokens to namespaces, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable

from session_service.api.problems import ApiError

log = logging.getLogger(__name__)
_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="session-service"'}


class TokenAuth:
    """Maps `Authorization: Bearer <secret>` to the secret's namespace.

    Secrets are kept as SHA-256 digests and every configured one is compared with
    hmac.compare_digest, so neither timing nor a memory dump reveals them.
    """

    def __init__(
        self,
        tokens: dict[str, str],
        *,
        disabled: bool = False,
        reload: Callable[[], dict[str, str]] | None = None,
        watch: str = "",
    ) -> None:
        self._digests = self._digest(tokens)
        self.disabled = disabled
        self._reload = reload
        self._watch = watch
        self._checked_at = time.monotonic()
        self._stamp = self._file_stamp()

    @staticmethod
    def _digest(tokens: dict[str, str]) -> list[tuple[bytes, str]]:
        return [
            (hashlib.sha256(secret.encode()).digest(), namespace)
            for secret, namespace in tokens.items()
        ]

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self._watch) if self._watch else None
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size) if stat else None

    def _maybe_reload(self) -> None:
        """Re-read the tokens file when it changed (checked at most once a second)."""
        now = time.monotonic()
        if self._reload is None or now - self._checked_at < 1.0:
            return
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            tokens = self._reload()
        except ValueError as error:  # keep serving with the tokens we had
            log.error("tokens file not reloaded: %s", error)
            return
        if not tokens:
            # Most likely read between an editor's truncate and its write; an empty
            # set would turn every client away. Keep the tokens in use, look again.
            log.error("tokens file has no tokens; keeping the %d in use", len(self._digests))
            return
        self._stamp = stamp
        self._digests = self._digest(tokens)
        log.info("tokens reloaded: %d tokens", len(tokens))

    def namespace(self, header: str | None) -> str:
        if self.disabled:
            return "default"
        self._maybe_reload()
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
