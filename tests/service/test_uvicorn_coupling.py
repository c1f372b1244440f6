"""The service's HTTP protocol extends uvicorn's httptools protocol (http_guard.py) and
copies parts of it (http_protocol.py's lean path). A uvicorn release that changes any
of that code must be looked at before it is used: this test fails when the source of
a uvicorn method the service relies on is not the one recorded here, and says what to
re-check. (It caught nothing yet; the copy of `_start_asgi_task` had already drifted
once: uvicorn 0.55 added `reset_contextvars`.)

When it fails: read uvicorn's new code of that method, bring the service's code named
in the message in line (or confirm nothing it relies on changed), run
tests/service/test_service_wire*.py, then record the new hash printed in the message. Until
then `--http-server uvicorn` runs the service on stock uvicorn."""

from __future__ import annotations

import hashlib
import inspect

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

GUARD = "session_service/api/http_guard.py"
LEAN = "session_service/api/http_protocol.py"

#: (uvicorn's class, method): (sha256 of its source, first 16 hex digits; what relies on it)
RELIED_ON: dict[tuple[type, str], tuple[str, str]] = {
    (HttpToolsProtocol, "__init__"): (
        "4f08999410347141",
        f"the attributes {GUARD} and {LEAN} read (parser, app, loop, flow, cycle, "
        "pipeline, tasks, server_state, timeout_keep_alive_task, limit_concurrency, root_path)",
    ),
    (HttpToolsProtocol, "connection_made"): (
        "6efb565ff3d36b91",
        f"{GUARD} connection_made (extended); coalescing.py hides the socket from it",
    ),
    (HttpToolsProtocol, "connection_lost"): (
        "c91a4c9bf2e29c55",
        f"{GUARD} connection_lost (extended): the cycle marked disconnected",
    ),
    (HttpToolsProtocol, "data_received"): (
        "010a7ae59a5d3b1a",
        f"{GUARD} data_received (extended): the bytes counted around it",
    ),
    (HttpToolsProtocol, "on_message_begin"): (
        "96d377fdc7c2baef",
        f"{GUARD}: a new scope and header list per request (a next head is detected "
        "by its scope; the header list is counted, and replaced by TrailerSink)",
    ),
    (HttpToolsProtocol, "on_url"): ("37be44e962b04ca8", f"{GUARD} _head_size reads self.url"),
    (HttpToolsProtocol, "on_header"): (
        "1e86ebb6cea0458c",
        f"{GUARD}: each field appended to self.headers (counted; TrailerSink.append)",
    ),
    (HttpToolsProtocol, "on_headers_complete"): (
        "1ea8589acfad92d8",
        f"{LEAN} SessionHttpProtocol.start_request copies its scope and cycle set-up",
    ),
    (HttpToolsProtocol, "_start_asgi_task"): (
        "8d0189e65525db42",
        f"{LEAN} SessionHttpProtocol._start_asgi_task copies it for DirectCycle; "
        f"{GUARD} queues refusals through the pipeline it serves",
    ),
    (HttpToolsProtocol, "on_body"): (
        "dba9c32aeba35b6a",
        f"{LEAN} DirectCycle (body, message_event); {GUARD} measures a chunked body by "
        "the growth of cycle.body",
    ),
    (HttpToolsProtocol, "on_message_complete"): (
        "1fbad42dc31fc01f",
        f"{GUARD} on_message_complete (extended); DirectCycle's more_body/message_event",
    ),
    (HttpToolsProtocol, "on_response_complete"): (
        "64e254f28e389e76",
        f"{LEAN} DirectCycle.respond calls it; keep-alive timer and pipeline",
    ),
    (HttpToolsProtocol, "timeout_keep_alive_handler"): (
        "8b53bf5f2e202970",
        f"{GUARD} timeout_keep_alive_handler (extended: bytes waiting are read first)",
    ),
    (HttpToolsProtocol, "shutdown"): ("d7351fa33f00d430", f"{LEAN} DirectCycle.keep_alive"),
    (RequestResponseCycle, "__init__"): (
        "4d2f220910c33c12",
        f"{LEAN} DirectCycle mirrors its attributes",
    ),
    (RequestResponseCycle, "receive"): (
        "8124ae006be71184",
        f"{LEAN} DirectCycle.receive copies it",
    ),
    (RequestResponseCycle, "send"): (
        "abdd8601b326a8da",
        f"{LEAN} DirectCycle.respond does what its end does (response_complete, "
        "message_event, close, on_response)",
    ),
}


def _digest(owner: type, name: str) -> str:
    source = inspect.getsource(getattr(owner, name))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "owner, name", list(RELIED_ON), ids=[f"{o.__name__}.{n}" for o, n in RELIED_ON]
)
def test_uvicorn_code_the_service_relies_on_is_unchanged(owner: type, name: str) -> None:
    recorded, relied_on_by = RELIED_ON[(owner, name)]
    now = _digest(owner, name)
    assert now == recorded, (
        f"uvicorn {uvicorn.__version__} changed {owner.__name__}.{name} (source hash "
        f"{now}, recorded {recorded}). Re-check: {relied_on_by}. Then run "
        "tests/service/test_service_wire*.py and record the new hash in "
        "tests/service/test_uvicorn_coupling.py."
    )


def test_the_service_overrides_only_what_is_recorded() -> None:
    """A method of uvicorn's protocol newly overridden by the service must be recorded
    above, so that a change of it in uvicorn is noticed too."""
    from session_service.api.http_guard import GuardedHttpProtocol
    from session_service.api.http_protocol import SessionHttpProtocol

    recorded = {name for owner, name in RELIED_ON if owner is HttpToolsProtocol}
    for cls in (GuardedHttpProtocol, SessionHttpProtocol):
        overridden = {
            name
            for name, value in vars(cls).items()
            if callable(value) and name in vars(HttpToolsProtocol)
        }
        assert overridden <= recorded, f"{cls.__name__}: not recorded: {overridden - recorded}"
