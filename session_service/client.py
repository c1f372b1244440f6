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
from session_service.store import SessionRecord, WriteResult

_MSGPACK = "application/msgpack"


class ServiceError(errors.StoreError):
    """The service answered with an error this client has no specific exception for."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class Unauthorized(ServiceError):
    """The token is missing or unknown."""


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    code, detail = "http_error", response.reason_phrase
    if response.content:
        try:
            body = msgpack.unpackb(response.content, raw=False)
            code, detail = body.get("error", code), body.get("detail", detail)
        except Exception:  # not our error body (a proxy in between, for example)
            detail = response.text[:200]
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
        retry_after = int(response.headers.get("retry-after", "1"))
        raise errors.LockTimeout(detail, retry_after * 1000)
    if status == 503:
        raise errors.StoreUnavailable(detail)
    raise ServiceError(status, code, detail)


def _record(body: dict[str, Any]) -> SessionRecord:
    return SessionRecord(
        data=body["data"],
        version=body["version"],
        expires_at=body["expires_at"],
        lock=body.get("lock"),
        lease_expires_at_ms=body.get("lease_expires_at_ms"),
        new=bool(body.get("new", False)),
    )


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
    ) -> httpx.Response:
        content = None
        headers = {}
        if body is not None:
            content = msgpack.packb(
                {k: v for k, v in body.items() if v is not None}, use_bin_type=True
            )
            headers["Content-Type"] = _MSGPACK
        response = self._http.request(method, path, content=content, params=params, headers=headers)
        _raise_for(response)
        return response

    @staticmethod
    def _body(response: httpx.Response) -> dict[str, Any]:
        decoded: dict[str, Any] = msgpack.unpackb(response.content, raw=False)
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
        _raise_for(response)
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
        result = self._body(self._send("PUT", f"/v1/sessions/{sid}", body))
        return WriteResult(result["version"], result["expires_at"])

    def touch(self, sid: str, ttl: int, *, lock: str | None = None) -> WriteResult:
        result = self._body(
            self._send("POST", f"/v1/sessions/{sid}/touch", {"ttl": ttl, "lock": lock})
        )
        return WriteResult(result["version"], result["expires_at"])

    def release(self, sid: str, lock: str) -> None:
        self._send("DELETE", f"/v1/sessions/{sid}/lock", params={"lock": lock})

    def destroy(self, sid: str) -> None:
        self._send("DELETE", f"/v1/sessions/{sid}")

    def gc(self) -> int:
        return int(self._body(self._send("POST", "/v1/gc"))["deleted"])
