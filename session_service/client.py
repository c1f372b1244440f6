"""SessionClient: the Python client of the HTTP service (httpx, one pooled connection set).

It speaks msgpack and raises the same exceptions as the store, so code written
against SessionStore works against the service with a different constructor.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Any

import httpx
import msgpack

from session_service import errors
from session_service.records import SessionRecord, WriteResult

_MSGPACK = "application/msgpack"

#: the largest answer read: the largest session (16 MiB) with room to spare; anything
#: bigger is not the service's answer, and is refused before it fills the memory
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class ServiceError(errors.StoreError):
    """The service answered with an error this client has no specific exception for."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class Unauthorized(ServiceError):
    """The token is missing or unknown."""


class BadAnswer(ServiceError):
    """The answer is not a session-service answer (a proxy's page, another server on
    the port, a truncated or oversized body): nothing in it is trusted."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, "bad_answer", detail)


def _read_capped(response: httpx.Response) -> bytes:
    """The body of a streamed response, refused once it would exceed MAX_ANSWER_BYTES."""
    try:
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_ANSWER_BYTES:
            raise BadAnswer(
                response.status_code, f"answer announces {length} bytes, over {MAX_ANSWER_BYTES}"
            )
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise BadAnswer(response.status_code, f"answer over {MAX_ANSWER_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        response.close()


def _retry_after_ms(value: str | None) -> int:
    """Retry-After in milliseconds: whole seconds as the service sends them; 1 s for an
    absent value or one in another form (a date from a proxy in between)."""
    seconds = int(value) if value is not None and value.strip().isdigit() else 1
    return seconds * 1000


def _raise_for(response: httpx.Response, content: bytes) -> None:
    if response.status_code < 400:
        return
    code, detail = "http_error", response.reason_phrase
    if content:
        try:
            body = msgpack.unpackb(content, raw=False)
            code, detail = body.get("error", code), body.get("detail", detail)
        except Exception:  # not our error body (a proxy in between, for example)
            detail = content[:200].decode("utf-8", "replace")
    status = response.status_code
    if status == 401:
        raise Unauthorized(status, code, detail)
    if status == 400 and code == "invalid_session_id":
        raise errors.InvalidSessionId(detail)
    if status == 404:
        raise errors.SessionNotFound(detail)
    if status == 409:
        raise errors.LockLost(detail)
    if status == 412:
        raise errors.VersionConflict(detail)
    if status == 413:
        raise errors.DataTooLarge(detail)
    if status == 423:
        retry_after_ms = _retry_after_ms(response.headers.get("retry-after"))
        if code == "locked":
            raise errors.SessionLocked(detail, retry_after_ms)
        raise errors.LockTimeout(detail, retry_after_ms)
    if status == 503:
        raise errors.StoreUnavailable(detail)
    raise ServiceError(status, code, detail)


def _record(body: dict[str, Any]) -> SessionRecord:
    data, version, expires_at = body.get("data"), body.get("version"), body.get("expires_at")
    lock = body.get("lock")
    if not (
        isinstance(data, bytes)
        and isinstance(version, int)
        and isinstance(expires_at, int)
        and (lock is None or isinstance(lock, str))
    ):
        raise BadAnswer(200, "answer has no bytes data, integer version and expires_at")
    return SessionRecord(
        data=data,
        version=version,
        expires_at=expires_at,
        lock=lock,
        lease_expires_at_ms=body.get("lease_expires_at_ms"),
        new=bool(body.get("new", False)),
    )


def _written(body: dict[str, Any]) -> WriteResult:
    version, expires_at = body.get("version"), body.get("expires_at")
    if not (isinstance(version, int) and isinstance(expires_at, int)):
        raise BadAnswer(200, "answer has no integer version and expires_at")
    return WriteResult(version, expires_at)


class SessionClient:
    """Client of one service base URL, e.g. SessionClient("http://127.0.0.1:7070", "secret")."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`verify`: True (system CAs), False, or the path of a CA bundle for HTTPS."""
        headers = {"Accept": _MSGPACK}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify,
        )

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """The response (closed) and its body, after raising for an error status."""
        content = None
        headers = {}
        if body is not None:
            content = msgpack.packb(
                {k: v for k, v in body.items() if v is not None}, use_bin_type=True
            )
            headers["Content-Type"] = _MSGPACK
        request = self._http.build_request(
            method, path, content=content, params=params, headers=headers
        )
        response = self._http.send(request, stream=True)
        answer = _read_capped(response)
        _raise_for(response, answer)
        return response, answer

    @staticmethod
    def _body(sent: tuple[httpx.Response, bytes]) -> dict[str, Any]:
        """A success answer's msgpack map; anything else is a BadAnswer."""
        response, content = sent
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if media_type != _MSGPACK:
            kind = media_type or "untyped"
            raise BadAnswer(response.status_code, f"answer is {kind}, not msgpack")
        try:
            decoded = msgpack.unpackb(content, raw=False)
        except Exception:  # msgpack raises several types for bad input
            raise BadAnswer(response.status_code, "answer is not valid msgpack") from None
        if not isinstance(decoded, dict):
            raise BadAnswer(response.status_code, "answer is not a msgpack map")
        return decoded

    def read(self, sid: str) -> SessionRecord | None:
        try:
            return _record(self._body(self._send("GET", f"/v1/sessions/{sid}")))
        except errors.SessionNotFound:
            return None

    def exists(self, sid: str) -> bool:
        response = self._http.head(f"/v1/sessions/{sid}")
        if response.status_code == 404:
            return False
        _raise_for(response, b"")
        return True

    def lock(
        self, sid: str, wait_ms: int | None = None, lease_ms: int | None = None
    ) -> SessionRecord:
        params = {
            k: v for k, v in {"wait_ms": wait_ms, "lease_ms": lease_ms}.items() if v is not None
        }
        return _record(self._body(self._send("POST", f"/v1/sessions/{sid}/lock", params=params)))

    def write(
        self,
        sid: str,
        data: bytes,
        ttl: int,
        *,
        lock: str | None = None,
        if_version: int | None = None,
    ) -> WriteResult:
        body = {"data": data, "ttl": ttl, "lock": lock, "if_version": if_version}
        return _written(self._body(self._send("PUT", f"/v1/sessions/{sid}", body)))

    def touch(self, sid: str, ttl: int, *, lock: str | None = None) -> WriteResult:
        sent = self._send("POST", f"/v1/sessions/{sid}/touch", {"ttl": ttl, "lock": lock})
        return _written(self._body(sent))

    def release(self, sid: str, lock: str) -> None:
        self._send("DELETE", f"/v1/sessions/{sid}/lock", params={"lock": lock})

    def destroy(self, sid: str) -> None:
        self._send("DELETE", f"/v1/sessions/{sid}")

    def gc(self) -> int:
        deleted = self._body(self._send("POST", "/v1/gc")).get("deleted")
        if not isinstance(deleted, int):
            raise BadAnswer(200, "answer has no integer deleted")
        return deleted
