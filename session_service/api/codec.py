"""msgpack and JSON bodies: decoding requests and encoding responses (docs/api.md).

JSON carries bytes as base64; msgpack carries them as bin. The response format
follows Accept, or the request's own Content-Type when there is no Accept.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import msgpack
from starlette.requests import Request
from starlette.responses import Response

from session_service.api.problems import ApiError

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
JSON_TYPE = "application/json"
#: a request body is one flat map; a decoder refuses nesting past its own depth limit
#: (Python's recursion limit for JSON, 1024 levels for msgpack)
_TOO_DEEP = "body is not valid {}: nested too deeply (a request body is one flat map)"


def prefers_msgpack(accept: str | None, content_type: str | None) -> bool:
    """msgpack when Accept asks for it, or, with no Accept, when the request was msgpack."""
    if accept and accept != "*/*":
        return any(kind in accept for kind in MSGPACK_TYPES)
    return (content_type or "").startswith(MSGPACK_TYPES)


def encode_body(payload: dict[str, Any], msgpack_body: bool) -> tuple[bytes, str]:
    """The response body and its media type."""
    if msgpack_body:
        return msgpack.packb(payload, use_bin_type=True), MSGPACK_TYPES[0]
    body = {
        key: base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        for key, value in payload.items()
    }
    return json.dumps(body, separators=(",", ":")).encode(), JSON_TYPE


def encode(request: Request, payload: dict[str, Any], status: int = 200) -> Response:
    """A Starlette response (the FastAPI routes' form of encode_body)."""
    msgpack_body = prefers_msgpack(
        request.headers.get("accept"), request.headers.get("content-type")
    )
    body, media_type = encode_body(payload, msgpack_body)
    return Response(body, status_code=status, media_type=media_type)


def decode(content_type: str, body: bytes) -> dict[str, Any]:
    """Decode a request body into a dict whose `data`, if present, is bytes."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in MSGPACK_TYPES:
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except msgpack.StackError:
            raise ApiError(400, "malformed_body", _TOO_DEEP.format("msgpack")) from None
        except Exception as error:  # msgpack raises several unrelated types
            reason = str(error) or type(error).__name__
            raise ApiError(400, "malformed_body", f"body is not valid msgpack: {reason}") from None
        binary_data = True
    elif kind == JSON_TYPE or kind.endswith("+json"):
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(400, "malformed_body", f"body is not valid JSON: {error}") from None
        except RecursionError:  # "[[[[...": the decoder's depth guard, not a bug here
            raise ApiError(400, "malformed_body", _TOO_DEEP.format("JSON")) from None
        binary_data = False
    elif not kind:
        raise ApiError(
            415,
            "unsupported_media_type",
            "Content-Type must be application/msgpack or application/json",
        )
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {kind!r} is not supported; use application/msgpack or application/json",
        )
    if not isinstance(obj, dict):
        raise ApiError(400, "malformed_body", "body must be a map/object")
    if "data" in obj:
        obj["data"] = _as_bytes(obj["data"], binary_data)
    return obj


def _as_bytes(value: Any, binary: bool) -> bytes:
    if isinstance(value, bytes) and binary:
        return value
    if isinstance(value, str):
        if binary:
            return value.encode("utf-8")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid_request", "data must be base64 in JSON bodies") from None
    raise ApiError(422, "invalid_request", "data must be bytes (msgpack bin, or base64 in JSON)")
