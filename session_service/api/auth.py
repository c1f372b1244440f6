"""Bearer tokens to namespaces, compared in constant time; the tokens file re-read on change."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable

from session_service import metrics
from session_service.api.problems import ApiError
from session_service.tokens import Token, TokenSet

log = logging.getLogger(__name__)
_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="session-service"'}


class TokenAuth:
    """Maps `Authorization: Bearer <secret>` to the secret's namespace (and admin scope).

    Secrets are kept as SHA-256 digests and every configured one is compared with
    hmac.compare_digest, so neither timing nor a memory dump reveals them.

    A changed tokens file is applied as it reads (session_service/tokens.py): its good
    lines take effect, so a token removed from it stops working even when another line
    is broken; a broken line grants nothing. `problem` says what was refused, for
    /readyz and the log; the session_tokens_* metrics say it to Prometheus. A file
    that cannot be read, or is found empty, changes nothing (it tells nothing new):
    the tokens in use stay, the problem is reported, and the file is read again.
    """

    def __init__(
        self,
        tokens: dict[str, Token],
        *,
        disabled: bool = False,
        reload: Callable[[], TokenSet] | None = None,
        watch: str = "",
    ) -> None:
        self._digests = self._digest(tokens)
        self.disabled = disabled
        self._reload = reload
        self._watch = watch
        self._checked_at = time.monotonic()
        self._stamp = self._file_stamp()
        #: what the last reading of the tokens refused or could not do, else None
        self.problem: str | None = None
        self._report(None)

    @staticmethod
    def _digest(tokens: dict[str, Token]) -> list[tuple[bytes, Token]]:
        return [
            (hashlib.sha256(secret.encode()).digest(), token) for secret, token in tokens.items()
        ]

    @property
    def in_force(self) -> int:
        """How many tokens are accepted now."""
        return len(self._digests)

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self._watch) if self._watch else None
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size) if stat else None

    def _report(self, problem: str | None) -> None:
        self.problem = problem
        metrics.TOKENS_RELOAD_SUCCESSFUL.set(0 if problem else 1)
        if problem is None:
            metrics.TOKENS_RELOAD_SUCCESS_TIME.set(time.time())
        metrics.TOKENS_IN_FORCE.set(len(self._digests))

    def refresh(self) -> None:
        """Re-read the tokens file when it changed (checked at most once a second)."""
        now = time.monotonic()
        if self._reload is None or now - self._checked_at < 1.0:
            return
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        found = self._reload()
        if found.unreadable or found.file_empty:
            # Most likely read between an editor's truncate and its write (or a moment
            # without the file): an empty set would turn every client away. Keep the
            # tokens in use, say so, look again.
            problem = "; ".join(found.problems) or "tokens file has no tokens"
            log.error("tokens file not applied (%s); keeping the %d in use", problem, self.in_force)
            self._report(f"tokens file not applied, the previous tokens stay: {problem}")
            return
        self._stamp = stamp
        self._digests = self._digest(found.tokens)
        if found.problems:
            for line in found.problems:
                log.error("tokens reloaded, this item refused: %s", line)
            self._report(
                f"{len(found.problems)} token item(s) refused, the other {len(found.tokens)} "
                "in force: " + "; ".join(found.problems)
            )
        else:
            log.info("tokens reloaded: %d tokens", len(found.tokens))
            self._report(None)

    def namespace(self, header: str | None) -> str:
        """The caller's namespace; 401 for a missing, malformed or unknown token."""
        if self.disabled:
            return "default"
        return self._lookup(header).namespace

    def admin(self, header: str | None, action: str) -> None:
        """Let only a token with the admin scope (or anyone, without auth) do `action`:
        401 for a missing or unknown token, 403 for a token without the scope."""
        if self.disabled or self._lookup(header).admin:
            return
        raise ApiError(
            403,
            "forbidden",
            f"{action} needs a token with the admin scope ('namespace+admin:secret' in "
            "the tokens configuration); this token has not",
        )

    def _lookup(self, header: str | None) -> Token:
        self.refresh()
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
        found: Token | None = None
        for known, token in self._digests:
            if hmac.compare_digest(known, digest):
                found = token
        if found is None:
            raise ApiError(401, "unauthorized", "unknown token", _UNAUTHORIZED)
        return found
