"""Rewriting request and response heads: hop-by-hop headers out, X-Forwarded-* in.

Pure functions on byte strings so that the proxy protocols stay about flow, and so that
the rewriting rules (RFC 9110 section 7.6.1) sit in one place.
"""

from __future__ import annotations

from http import HTTPStatus

# Never forwarded (RFC 9110 7.6.1), plus framing headers that the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
# Headers about the client and the way it came in: believed only from a trusted proxy.
SET_BY_PROXY = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive", b"Keep-Alive", b"Close"})
_NOTHING: frozenset[bytes] = frozenset()
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})


class BadRequest(Exception):
    """The request must be refused with ``status`` before anything reaches a backend."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def parsed_length(value: bytes) -> bytes:
    """A Content-Length as the number it means (``003`` is ``3``), as HAProxy and nginx send it.

    llhttp has already refused anything but digits, so only leading zeros can differ.
    """
    return b"%d" % int(value) if len(value) > 1 and value[0] == 48 else value  # 48: b"0"


def extra_hop_by_hop(value: bytes) -> frozenset[bytes]:
    """Header names listed in a Connection value, beyond the standard hop-by-hop ones."""
    if value in _PLAIN_CONNECTION:
        return _NOTHING
    return frozenset(t.strip().lower() for t in value.split(b",")) - HOP_BY_HOP


class RequestHead:
    """The rewritten request head plus the framing facts the proxy needs."""

    __slots__ = ("chunked", "content_length", "data")

    def __init__(self, data: bytes, content_length: bytes | None, chunked: bool) -> None:
        self.data = data
        self.content_length = content_length
        self.chunked = chunked


def request_head(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    client_ip: bytes,
    require_host: bool = True,
    extra: frozenset[bytes] = frozenset(),
    default_host: bytes = b"",
    trusted: bool = False,
) -> RequestHead:
    """Build the HTTP/1.1 head sent to a backend, in one pass over the headers.

    Raises BadRequest for a missing or repeated Host, which would let a client pick a
    different virtual host on each hop, and for a Transfer-Encoding other than a single
    ``chunked``. An HTTP/1.0 request may come without Host; the HTTP/1.1 request made
    of it gets `default_host` (the address the client connected to), since HTTP/1.1
    requires one.

    From a `trusted` peer (a proxy in front), the client's address is appended to its
    X-Forwarded-For and its X-Forwarded-Proto, X-Forwarded-Host, Forwarded and X-Real-IP
    pass; from any other peer (the edge) they are what a client says about itself, so
    X-Forwarded-* are replaced and Forwarded and X-Real-IP dropped.
    """
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    host: bytes | None = None
    content_length: bytes | None = None
    chunked = False
    forwarded_for: list[bytes] = []
    proto = forwarded_host = b""
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"content-length":
                content_length = parsed_length(value)
            elif lname == b"transfer-encoding":
                # llhttp accepts any list ending in chunked ("gzip, chunked"); the body
                # is re-framed as plain chunked, so any other coding would be lost.
                if chunked or value.strip(b" \t").lower() != b"chunked":
                    raise BadRequest(400, "Transfer-Encoding other than chunked")
                chunked = True
            elif lname == b"connection" and not extra:
                named = extra_hop_by_hop(value)
                if named:  # rare: start again, dropping the headers it names
                    return request_head(
                        method, target, headers, client_ip, require_host, named, default_host,
                        trusted,
                    )  # fmt: skip
            continue
        if lname in SET_BY_PROXY:
            if not trusted or (extra and lname in extra):
                continue
            if lname == b"x-forwarded-for":
                forwarded_for.append(value)
                continue
            if lname == b"x-forwarded-proto":
                proto = value if not proto else proto + b", " + value
                continue
            if lname == b"x-forwarded-host":
                forwarded_host = value if not forwarded_host else forwarded_host + b", " + value
                continue
        if lname == b"host":
            if host is not None:
                raise BadRequest(400, "more than one Host header")
            host = value
        elif extra and lname in extra:
            continue
        out += (name, b": ", value, b"\r\n")
    if host is None:
        if require_host:
            raise BadRequest(400, "missing Host header")
        if default_host:
            out += (b"Host: ", default_host, b"\r\n")
    original_host = forwarded_host or host
    if original_host is not None:
        out += (b"X-Forwarded-Host: ", original_host, b"\r\n")
    forwarded_for.append(client_ip)
    out += (
        b"X-Forwarded-For: ", b", ".join(forwarded_for),
        b"\r\nX-Forwarded-Proto: ", proto or b"http", b"\r\n",
    )  # fmt: skip
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif content_length is not None:
        out += (b"Content-Length: ", content_length, b"\r\n")
    out.append(b"\r\n")
    return RequestHead(b"".join(out), content_length, chunked)


# What response_head returns: the head lines so far (the caller adds the framing,
# Connection and the blank line, which depend on the client), the backend's
# Content-Length, whether its body is chunked (only when its last transfer coding is
# chunked, RFC 9112 6.3: otherwise its close ends the body), and its other transfer
# codings ("gzip"), which the client needs to decode the body. A tuple: one per response.
ResponseHead = tuple[list[bytes], bytes | None, bool, bytes]


def transfer_codings(values: list[bytes]) -> tuple[bool, bytes]:
    """Split Transfer-Encoding values into (last coding is chunked, the other codings)."""
    tokens = [t.strip() for value in values for t in value.split(b",") if t.strip()]
    chunked = bool(tokens) and tokens[-1].lower() == b"chunked"
    if chunked:
        tokens.pop()
    return chunked, b", ".join(tokens)


def response_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    extra: frozenset[bytes] = frozenset(),
) -> ResponseHead:
    """Start the head sent to the client, in one pass over the backend's headers."""
    out = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    content_length: bytes | None = None
    chunked = False
    codings = b""
    transfer: list[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"content-length":
                content_length = parsed_length(value)
            elif lname == b"transfer-encoding":
                if transfer is None:
                    transfer = [value]
                else:
                    transfer.append(value)
            elif lname == b"connection" and not extra:
                named = extra_hop_by_hop(value)
                if named:
                    return response_head(status, reason, headers, named)
            continue
        if extra and lname in extra:
            continue
        out += (name, b": ", value, b"\r\n")
    if transfer is not None:
        if transfer == [b"chunked"]:  # the usual case, without splitting
            chunked = True
        else:
            chunked, codings = transfer_codings(transfer)
    return out, content_length, chunked, codings


def error_response(status: int, detail: str, keep_alive: bool = False) -> bytes:
    """A short plain-text response generated by the balancer itself."""
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}: {detail}\n".encode()
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        b"Cache-Control: no-store\r\nConnection: %s\r\n\r\n%s"
        % (status, phrase.encode(), len(body), connection, body)
    )
