"""Property-based fuzzing of the balancer's HTTP front end (hypothesis, real sockets).

One balancer subprocess sits in front of one recording backend (tests/balancer/
fuzz_support.py), which parses everything it receives strictly and attributes each
request to its client connection. Each case opens a new client connection from its own
loopback address, sends adversarial bytes built from parts (valid requests, smuggling
variants, huge heads, mutations, truncations, random bytes, several pipelined on one
connection, sometimes in pieces), half-closes and reads to EOF. Per case:

* the balancer is still running;
* the client gets a sequence of well-formed ``HTTP/1.1`` responses and then EOF: backend
  answers (200), and at most one balancer-made error, last, with ``Connection: close``,
  whose status is in ALLOWED_ERRORS (4xx, or 501/505 for the well-formed requests the
  balancer does not support); never a 5xx for client bytes;
* the backend received exactly the complete requests that the client got answers for;
  after a refusal it received nothing more of that connection, except the clean prefix
  of a chunked body whose bad chunk came later, cut off by closing the backend connection;
* everything forwarded is well-formed, with at most one framing (the recording backend
  records any violation);
* requests built to be valid are answered by the backend; requests built to be ambiguous
  or malformed are refused with the expected status and none of their bytes is forwarded.

At the end: no backend connection is stuck inside a request, the balancer has no open
connection and no active request left, and its RSS grew less than RSS_GROWTH_LIMIT_KIB
between the warm-up and the end.

FUZZ_CASES (default 10000) sets the number of cases. The cases are the same on every run
(derandomized); FUZZ_SEED=N explores a different, still reproducible, set.

Why one module of this length: the strategies that build a case and the oracle that
judges it are two halves of one specification, read side by side.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.balancer.fuzz_support import (
    BalancerProcess,
    Exchange,
    RecordingBackend,
    Response,
    case_ip,
    exchange,
    parse_responses,
    settle,
    source_port,
)

CASES = int(os.environ.get("FUZZ_CASES", "10000"))
SEED = os.environ.get("FUZZ_SEED")
WARMUP = min(500, CASES // 4)
# Growth allowed between the warm-up and the end. What legitimately grows: the
# allocator's arenas settling, the kernel's socket memory accounted to the process, and
# CPython's free lists. A leak of even 1 KiB per case would be ~9.5 MiB over 9,500 cases.
RSS_GROWTH_LIMIT_KIB = 8 * 1024

# Statuses the balancer itself may answer malformed or unsupported input with. 501
# (upgrades, CONNECT) and 505 (HTTP/2.0 and later in an HTTP/1 request line) are its
# documented answers to well-formed requests it does not support, not failures.
ALLOWED_ERRORS = frozenset({400, 408, 413, 414, 431, 501, 505})

VALID, REJECT_HEAD, REJECT_BODY, UNKNOWN = "valid", "reject-head", "reject-body", "unknown"


@dataclass
class Segment:
    """One request (or garbage) in a case, with what the balancer must do with it.

    VALID: forwarded and answered by the backend. REJECT_HEAD: refused with a status in
    ``statuses``, nothing of it forwarded. REJECT_BODY: a valid chunked head with a bad
    body: refused, the head and a clean part of the body may have been forwarded.
    UNKNOWN: anything allowed by the general invariants; the segments after it are not
    checked individually.
    """

    data: bytes
    kind: str
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({400}))
    label: str = ""


@dataclass
class Case:
    segments: list[Segment]
    cuts: list[int]  # send the bytes in pieces at these offsets

    @property
    def data(self) -> bytes:
        return b"".join(s.data for s in self.segments)

    def pieces(self) -> list[bytes]:
        data, out, last = self.data, [], 0
        for cut in sorted(c for c in self.cuts if 0 < c < len(data)):
            out.append(data[last:cut])
            last = cut
        out.append(data[last:])
        return [p for p in out if p]

    def describe(self) -> str:
        return " + ".join(f"{s.kind}:{s.label}" for s in self.segments)


# -- strategies ------------------------------------------------------------------------

TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~"
VALUE = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t"
PATH = "abcdefghijklmnopqrstuvwxyz0123456789-._~/%?=&+:@!$'()*,;"
RESERVED = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "expect",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
}

names = st.text(TOKEN, min_size=1, max_size=20).filter(lambda n: n.lower() not in RESERVED)
values = st.text(VALUE, max_size=40).map(lambda v: v.strip(" \t"))
benign_header = st.builds(lambda n, v: b"X-%s: %s\r\n" % (n.encode(), v.encode()), names, values)
targets = st.text(PATH, max_size=40).map(lambda p: b"/" + p.encode())
methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"])
HOST = b"Host: fuzz.test\r\n"


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` as valid chunks, with optional chunk extensions and trailers."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body))), max_size=4))))
    parts, last = [], 0
    for cut in [*cuts, len(body)]:
        if last < cut <= len(body):  # no empty chunk: that would be the last one
            parts.append(body[last:cut])
            last = cut
    out = b""
    for part in parts:
        ext = draw(st.sampled_from([b"", b"", b";ext=1", b';name="quoted"', b";a;b=c"]))
        size = b"%x" % len(part)
        out += (size.upper() if draw(st.booleans()) else size) + ext + b"\r\n" + part + b"\r\n"
    trailer = draw(st.sampled_from([b"", b"", b"X-Trailer: t\r\n"]))
    return out + b"0\r\n" + trailer + b"\r\n"


@st.composite
def valid_request(draw: st.DrawFn) -> Segment:
    method = draw(methods)
    headers = [HOST, *draw(st.lists(benign_header, max_size=6))]
    if draw(st.integers(0, 9)) == 0:
        headers.append(b"X-Forwarded-For: 10.1.2.3\r\n")
    if draw(st.integers(0, 9)) == 0:
        headers.append(b"Connection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\n")
    headers = draw(st.permutations(headers))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = draw(st.binary(max_size=200)) if framing != "none" else b""
    if framing == "length":
        headers.append(b"Content-Length: %d\r\n" % len(body))
    elif framing == "chunked":
        coding = draw(st.sampled_from([b"chunked", b"chunked", b" chunked ", b"Chunked"]))
        headers.append(b"Transfer-Encoding: " + coding + b"\r\n")
        body = draw(chunked_body(body))
    head = method + b" " + draw(targets) + b" HTTP/1.1\r\n" + b"".join(headers) + b"\r\n"
    return Segment(head + body, VALID, label=f"{method.decode()} {framing}")


def post(*lines: bytes, body: bytes = b"") -> bytes:
    return b"POST /s HTTP/1.1\r\n" + HOST + b"".join(lines) + b"\r\n" + body


CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"
# Transfer-Encoding values that are not exactly "chunked" (RFC 9112 6.3 makes a request
# whose final coding is not chunked unframeable; anything but a bare "chunked" is refused).
BAD_CODINGS = [
    b"chunked, identity",
    b"identity, chunked",
    b"identity",
    b"gzip, chunked",
    b"chunked, chunked",
    b"chunked,",
    b"xchunked",
    b"chunk",
    b"chunked\x0b",
    b'"chunked"',
    b"chunked;q=1",
    b"\x00chunked",
    b"chunked\x00",
    b"ch\x00unked",
]
# Header-name tricks that hide a Transfer-Encoding from one parser but not another.
BAD_TE_LINES = [
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding\t: chunked\r\n",
    b"Transfer-Encoding\x00: chunked\r\n",
    b"Transfer\x00-Encoding: chunked\r\n",
    b"X-A: b\r\n Transfer-Encoding: chunked\r\n",
    b"X-A: b\r\n\tTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding:\r\n chunked\r\n",
    b"Transfer-Encoding: chunked\nX-A: b\r\n",
    b"X-A: b\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\rX-A: b\r\n",
]
BAD_LENGTHS = [
    b"+5",
    b"-5",
    b"0x5",
    b"5x",
    b"5 5",
    b"5, 5",
    b"5,5",
    b"",
    b"5.0",
    b"1e1",
    b"\xd9\xa5",
    b"5\x00",
    b"99999999999999999999999",
    b"18446744073709551621",
]
BAD_CHUNKS = [
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"fffffffffffffffff1\r\nx\r\n0\r\n\r\n",
    b"10000000000000000\r\nx\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5\r\nhello0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\n0\r\n\r\n",
    b"5\rhello\r\n0\r\n\r\n",
    b"3\r\nhello\r\n0\r\n\r\n",
]
# Malformed heads that strict parsing refuses (status 400 unless given).
BAD_HEADS: list[tuple[bytes, frozenset[int]]] = [
    (b"GET / HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\nHost: t\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\rc\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\r\n c\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\r\n\tc\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX\x00A: b\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\x00c\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\x01c\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\x7fc\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX A: b\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\n: b\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-A b\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", frozenset({400})),
    (b"GET /\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/1.1 \r\nHost: t\r\n\r\n", frozenset({400})),
    (b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", frozenset({400})),
    (b"GET /\x00 HTTP/1.1\r\nHost: t\r\n\r\n", frozenset({400})),
    (b"get / HTTP/1.1\r\nHost: t\r\n\r\n", frozenset({400})),
    (b"G\x00T / HTTP/1.1\r\nHost: t\r\n\r\n", frozenset({400})),
    (b"FOO / HTTP/1.1\r\nHost: t\r\n\r\n", frozenset({400, 501})),
    (b"GET / HTTP/1.x\r\nHost: t\r\n\r\n", frozenset({400})),
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", frozenset({400, 505})),
    (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", frozenset({400, 505})),
    (b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
     frozenset({501})),
    (b"CONNECT fuzz.test:443 HTTP/1.1\r\nHost: fuzz.test:443\r\n\r\n", frozenset({400, 501})),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", frozenset({400, 505})),
]  # fmt: skip


# Tolerated by llhttp and forwarded normalized (the balancer rebuilds the request line
# and the framing headers), so they are safe either way: only the general checks apply.
LENIENT = [
    b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /  HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:t\r\nX-A:\t b \t\r\n\r\n",
    b"GET http://fuzz.test/abs HTTP/1.1\r\nHost: t\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 005\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length:  5 \r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhello",
]


@st.composite
def smuggling(draw: st.DrawFn) -> Segment:
    """Ambiguous framing and malformed heads, built from parts."""
    kind = draw(st.sampled_from(["cl+te", "te", "te-line", "cl", "cl-dup", "chunk", "head"]))
    if kind == "cl+te":
        coding = draw(st.sampled_from([b"chunked", *BAD_CODINGS]))
        te = b"Transfer-Encoding: " + coding + b"\r\n"
        cl = b"Content-Length: %d\r\n" % draw(st.integers(0, 20))
        lines = [te, cl] if draw(st.booleans()) else [cl, te]
        return Segment(post(*lines, body=CHUNKED_BODY), REJECT_HEAD, label=kind)
    if kind == "te":
        coding = draw(st.sampled_from(BAD_CODINGS))
        data = post(b"Transfer-Encoding: " + coding + b"\r\n", body=CHUNKED_BODY)
        return Segment(data, REJECT_HEAD, frozenset({400, 501}), label=f"te {coding!r}")
    if kind == "te-line":
        line = draw(st.sampled_from(BAD_TE_LINES))
        extra = draw(st.sampled_from([b"", b"Content-Length: 4\r\n"]))
        return Segment(post(line, extra, body=CHUNKED_BODY), REJECT_HEAD, label=f"{line!r}")
    if kind == "cl":
        value = draw(st.sampled_from(BAD_LENGTHS))
        return Segment(post(b"Content-Length: " + value + b"\r\n", body=b"hello"), REJECT_HEAD)
    if kind == "cl-dup":
        a, b = draw(st.integers(0, 9)), draw(st.integers(0, 9))
        lines = [b"Content-Length: %d\r\n" % a, b"X-Y: z\r\n", b"Content-Length: %d\r\n" % b]
        if draw(st.booleans()):
            lines.pop(1)
        return Segment(post(*lines, body=b"x" * max(a, b)), REJECT_HEAD, label=f"{a},{b}")
    if kind == "chunk":
        body = draw(st.sampled_from(BAD_CHUNKS))
        data = post(b"Transfer-Encoding: chunked\r\n", body=body)
        return Segment(data, REJECT_BODY, label=f"chunk {body[:12]!r}")
    if draw(st.integers(0, 3)) == 0:
        return Segment(draw(st.sampled_from(LENIENT)), UNKNOWN, label="lenient")
    data, statuses = draw(st.sampled_from(BAD_HEADS))
    return Segment(data, REJECT_HEAD, statuses, label=f"head {data[:20]!r}")


@st.composite
def big_head(draw: st.DrawFn) -> Segment:
    """Up to 600 headers, or one value up to 40000 bytes (limits: 100 headers, 16 KiB)."""
    count = draw(st.one_of(st.integers(0, 110), st.integers(0, 600)))
    value_size = draw(st.integers(0, 40000)) if draw(st.booleans()) else 8
    filler = draw(st.sampled_from([b"a", b"-", b"9", b"\t"]))
    value = b"v" + filler * value_size + b"v"
    lines = [b"X-H%d: %s\r\n" % (i, value) for i in range(count)]
    if not lines:
        lines = [b"X-Big: " + value + b"\r\n"]
    head = b"GET /big HTTP/1.1\r\n" + HOST + b"".join(lines) + b"\r\n"
    headers = len(lines) + 1
    if headers > 100 or len(head) > 20000:
        return Segment(head, REJECT_HEAD, frozenset({431}), label=f"{headers}x{len(value)}")
    kind = VALID if len(head) < 12000 else UNKNOWN
    return Segment(head, kind, label=f"{headers}x{len(value)}")


@st.composite
def mutated(draw: st.DrawFn) -> Segment:
    """A valid or smuggling request with random byte edits or truncated at a random offset."""
    base = bytearray(draw(st.one_of(valid_request(), smuggling())).data)
    if draw(st.booleans()):
        base = base[: draw(st.integers(0, len(base)))]
        return Segment(bytes(base) or b"G", UNKNOWN, label="truncated")
    alphabet = b"\r\n :;,\t\x00\x7f\x80\xffGETPOST/0123456789abcdefABCDEF-"
    for _ in range(draw(st.integers(1, 6))):
        if not base:
            break
        pos = draw(st.integers(0, len(base) - 1))
        op = draw(st.integers(0, 3))
        byte = draw(st.sampled_from(alphabet)) if op < 3 else draw(st.integers(0, 255))
        if op in (0, 3):
            base[pos] = byte
        elif op == 1:
            base.insert(pos, byte)
        else:
            del base[pos]
    return Segment(bytes(base) or b"G", UNKNOWN, label="mutated")


random_bytes = st.binary(min_size=1, max_size=400).map(lambda b: Segment(b, UNKNOWN, label="bytes"))
one_segment = st.one_of(
    valid_request(),
    valid_request(),
    smuggling(),
    smuggling(),
    big_head(),
    mutated(),
    mutated(),
    random_bytes,
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    segments = draw(st.lists(one_segment, min_size=1, max_size=4))
    total = sum(len(s.data) for s in segments)
    cuts = draw(st.lists(st.integers(1, total), max_size=3)) if draw(st.booleans()) else []
    return Case(segments, cuts)


def catalog_cases() -> list[Case]:
    """Each listed smuggling variant and malformed head, alone and after a valid GET."""
    get = Segment(b"GET /first HTTP/1.1\r\n" + HOST + b"\r\n", VALID, label="GET")
    chunked = b"Transfer-Encoding: chunked\r\n"
    singles = [Segment(data, REJECT_HEAD, statuses, "head") for data, statuses in BAD_HEADS]
    singles += [Segment(data, UNKNOWN, label="lenient") for data in LENIENT]
    for coding in BAD_CODINGS:
        te = b"Transfer-Encoding: " + coding + b"\r\n"
        singles.append(Segment(post(te, body=CHUNKED_BODY), REJECT_HEAD, label="te"))
        both = post(te, b"Content-Length: 3\r\n", body=CHUNKED_BODY)
        singles.append(Segment(both, REJECT_HEAD, label="cl+te"))
    singles.append(Segment(post(b"Content-Length: 3\r\n", chunked, body=CHUNKED_BODY), REJECT_HEAD))
    singles += [Segment(post(line, body=CHUNKED_BODY), REJECT_HEAD) for line in BAD_TE_LINES]
    for value in BAD_LENGTHS:
        line = b"Content-Length: " + value + b"\r\n"
        singles.append(Segment(post(line, body=b"hello"), REJECT_HEAD, label="cl"))
    singles += [Segment(post(chunked, body=body), REJECT_BODY) for body in BAD_CHUNKS]
    return [Case([s], []) for s in singles] + [Case([get, s], []) for s in singles]


# -- the test --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BalancerProcess, RecordingBackend]]:
    backend = RecordingBackend()
    backend.start()
    log = Path(tmp_path_factory.mktemp("fuzz")) / "balancer.log"
    balancer = BalancerProcess([f"127.0.0.1:{backend.port},name=rec"], log)
    try:
        yield balancer, backend
    finally:
        balancer.stop()
        backend.stop()


def check_case(
    case: Case, got: Exchange, balancer: BalancerProcess, backend: RecordingBackend, ip: str
) -> tuple[list[Response], int]:
    """Assert the per-case properties; return the responses and the backend answers."""
    context = f"case {case.describe()} from {ip}\nsent {case.data[:600]!r}\ngot {got.raw[:600]!r}"
    assert balancer.alive(), f"the balancer died: {context}\n{balancer.stop()}"
    responses, problem = parse_responses(got.raw)
    assert problem is None, f"{problem}: {context}"
    answered = 0
    for i, response in enumerate(responses):
        if response.from_recorder:
            assert response.status == 200, context
            answered += 1
            continue
        assert response.status in ALLOWED_ERRORS, f"status {response.status}: {context}"
        assert response.header(b"connection") == b"close", context
        assert i == len(responses) - 1, f"a response after an error: {context}"
    record = backend.record
    with record.lock:
        assert not record.violations, f"forwarded: {record.violations[:3]}\n{context}"
    requests = record.requests_from(ip)
    complete = [r for r in requests if r.complete]
    partial = [r for r in requests if not r.complete]
    assert len(complete) == answered, (
        f"the backend got {len(complete)} complete requests, the client {answered} answers: "
        f"{[r.head[:200] for r in complete]}\n{context}"
    )
    refused = bool(responses) and not responses[-1].from_recorder
    if refused:
        for r in partial:  # only a chunked body can turn out bad after its head was sent
            assert b"\r\nTransfer-Encoding: chunked\r\n" in r.head, (r.head[:300], context)
    # What each segment was built to be.
    position = 0
    for segment in case.segments:
        if segment.kind == UNKNOWN:
            break
        if segment.kind == VALID:
            assert position < len(responses), f"valid request not answered: {context}"
            assert responses[position].from_recorder, f"valid request refused: {context}"
            position += 1
            continue
        assert position < len(responses), f"{segment.kind} not answered: {context}"
        response = responses[position]
        assert not response.from_recorder, f"{segment.kind} was forwarded: {context}"
        assert response.status in segment.statuses, f"{response.status}: {context}"
        if segment.kind == REJECT_HEAD:
            assert not partial, f"part of a refused request reached the backend: {context}"
        assert len(partial) <= 1, context
        break
    else:
        assert len(responses) == position, context
    return responses, answered


@pytest.mark.timeout(max(600, CASES // 5))
def test_fuzz_malformed_and_adversarial_http(
    rig: tuple[BalancerProcess, RecordingBackend],
) -> None:
    balancer, backend = rig
    answers: dict[str, int] = {}
    outcomes: Counter[str] = Counter()
    rss: dict[str, int] = {"start": balancer.rss_kib()}
    counter = iter(range(10**9))
    started = time.monotonic()

    def run_case(case: Case) -> None:
        index = next(counter)
        if index == WARMUP:
            settle(backend.record)
            rss["warm"] = balancer.rss_kib()
        ip = case_ip(index)
        pieces = case.pieces()
        source = (ip, source_port(index))
        got = exchange(balancer.port, source, pieces, pause=0.002 if len(pieces) > 1 else 0.0)
        responses, answered = check_case(case, got, balancer, backend, ip)
        answers[ip] = answered
        outcomes["forwarded" if answered else "not forwarded"] += 1
        if responses and not responses[-1].from_recorder:
            outcomes[f"refused {responses[-1].status}"] += 1
        elif not responses:
            outcomes["closed, no response" + (" (reset)" if got.reset else "")] += 1

    # Every catalogued variant once, alone and behind a valid request, whatever the draws.
    catalog = catalog_cases()
    for case in catalog:
        run_case(case)

    @settings(
        max_examples=CASES,
        deadline=None,
        derandomize=SEED is None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases())
    def run(case: Case) -> None:
        run_case(case)

    if SEED is not None:
        run = seed(int(SEED))(run)

    run()
    elapsed = time.monotonic() - started
    # Whatever the balancer forwarded late has arrived; nothing is left half-sent.
    settle(backend.record)
    record = backend.record
    with record.lock:
        assert not record.violations, record.violations[:5]
        assert record.open_mid_request == 0, "a backend connection is stuck inside a request"
        for ip, answered in answers.items():
            requests = record.by_ip.get(ip, [])
            assert sum(r.complete for r in requests) == answered, (ip, requests)
            for r in requests:
                assert r.complete or r.closed_mid_request, (ip, r)
        unknown = set(record.by_ip) - set(answers)
        assert not unknown, f"requests from no known client: {sorted(unknown)[:5]}"
        cut_off = sum(r.closed_mid_request for rs in record.by_ip.values() for r in rs)
    stats = balancer.stats()
    for _ in range(100):  # the balancer's side of the last connections closes shortly
        if stats["connections"] == 0 and all(b["active"] == 0 for b in stats["backends"]):
            break
        time.sleep(0.05)
        stats = balancer.stats()
    assert stats["connections"] == 0, stats
    assert all(b["active"] == 0 for b in stats["backends"]), stats["backends"]
    rss["end"] = balancer.rss_kib()
    count = len(answers)
    summary = (
        f"{count} cases ({len(catalog)} catalogued) in {elapsed:.1f} s; "
        f"balancer RSS start {rss['start']} KiB, "
        f"after {WARMUP} cases {rss.get('warm')} KiB, end {rss['end']} KiB; "
        f"the backend answered {record.requests} requests and had {cut_off} cut off; "
        f"{dict(sorted(outcomes.items()))}"
    )
    print(summary)
    assert count >= CASES * 0.9, summary
    # Not vacuous: many cases were forwarded and many were refused.
    assert outcomes["forwarded"] >= count // 10, summary
    refused = sum(n for k, n in outcomes.items() if k.startswith("refused"))
    assert refused >= count // 10, summary
    assert rss["end"] - rss["warm"] < RSS_GROWTH_LIMIT_KIB, summary
