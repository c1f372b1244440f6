"""Unit tests of the handler's wire codec (SessionService\\Codec) and options
(SessionService\\Options), each case run by a real `php` process.

Each test sends PHP code that leaves its result in `$out`; the harness prints it as
JSON (bytes as base64 where the code says so), with the test's input as JSON on
stdin, and the test checks it from Python, with Python's own msgpack as the other
side of the wire.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest

from .conftest import PHP, REPO

pytestmark = pytest.mark.php

HARNESS = """
require getenv('HANDLER_AUTOLOAD');
use SessionService\\Codec;
use SessionService\\Options;
$in = json_decode((string) stream_get_contents(STDIN), true);
try {
    %s
} catch (InvalidArgumentException $e) {
    $out = ['error' => $e->getMessage()];
}
echo json_encode($out, JSON_THROW_ON_ERROR);
"""


def php(code: str, inp: Any = None, env: dict[str, str] | None = None, **ini: str) -> Any:
    """Run `code` in a fresh php process (no SESSION_SERVICE_* variable unless given)
    and return its `$out`."""
    if PHP is None:
        pytest.skip("php CLI not installed")
    args = [PHP, "-d", "error_reporting=-1", "-d", "display_errors=stderr"]
    for key, value in ini.items():
        args += ["-d", f"{key.replace('__', '.')}={value}"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_SERVICE_")}
    environment.update(env or {})
    environment["HANDLER_AUTOLOAD"] = str(REPO / "php_handler" / "autoload.php")
    proc = subprocess.run(
        [*args, "-r", HARNESS % code],
        input=json.dumps(inp), capture_output=True, text=True, env=environment, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr + proc.stdout
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- codec

ENCODE = "$out = base64_encode((new Codec($in['msgpack']))->encode($in['body']));"


def encode(body: dict[str, Any], *, msgpack_: bool) -> bytes:
    """The PHP codec's encoding of body; a "data" value given as bytes is sent to
    PHP in base64 and decoded there first."""
    code = ENCODE
    if isinstance(body.get("data"), bytes):
        body = {**body, "data": base64.b64encode(body["data"]).decode()}
        code = "$in['body']['data'] = base64_decode($in['body']['data']);" + code
    return base64.b64decode(php(code, {"msgpack": msgpack_, "body": body}))


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 1 << 20])
def test_msgpack_sends_session_data_as_bin_of_every_length(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    raw = encode({"data": data, "ttl": 1440}, msgpack_=True)
    decoded = msgpack.unpackb(raw, raw=False)
    assert decoded == {"data": data, "ttl": 1440}
    assert isinstance(decoded["data"], bytes), "session data must go as msgpack bin, not str"


@pytest.mark.parametrize("size", [0, 31, 32, 255, 256, 65535, 65536])
def test_msgpack_sends_strings_as_str_of_every_length(size: int) -> None:
    lock = "k" * size
    assert msgpack.unpackb(encode({"lock": lock}, msgpack_=True), raw=False) == {"lock": lock}


@pytest.mark.parametrize("value", [0, 1, -1, 127, 128, -33, 1 << 40, -(1 << 62), (1 << 63) - 1])
def test_msgpack_sends_integers_exactly(value: int) -> None:
    assert msgpack.unpackb(encode({"ttl": value}, msgpack_=True)) == {"ttl": value}


def test_json_sends_data_in_base64_and_slashes_as_they_are() -> None:
    data = b"\x00\xff/|a:1:{}"
    raw = encode({"data": data, "lock": "a/b", "ttl": 60}, msgpack_=False)
    assert b"a/b" in raw
    doc = json.loads(raw)
    assert base64.b64decode(doc.pop("data")) == data
    assert doc == {"lock": "a/b", "ttl": 60}


DECODE = """
[$value, $format, $problem] = Codec::decode(base64_decode($in['raw']), $in['type']);
$out = [$value, $format, $problem];
"""


def decode(raw: bytes, content_type: str) -> list[Any]:
    result: list[Any] = php(DECODE, {"raw": base64.b64encode(raw).decode(), "type": content_type})
    return result


def test_decode_reads_msgpack_and_json_maps() -> None:
    packed = msgpack.packb({"lock": "t", "version": 3, "new": False}, use_bin_type=True)
    assert decode(packed, "application/msgpack") == [
        {"lock": "t", "version": 3, "new": False},
        "msgpack",
        None,
    ]
    assert decode(b'{"version": 2}', "application/json; charset=utf-8") == [
        {"version": 2},
        "json",
        None,
    ]


@pytest.mark.parametrize(
    ("raw", "content_type", "format_", "problem"),
    [
        (b"", "application/msgpack", None, "its body is empty"),
        (b"\xc1\xc1", "application/msgpack", "msgpack", "is not a msgpack map"),
        (msgpack.packb(7), "application/msgpack", "msgpack", "is not a msgpack map"),
        (b'{"lock": ', "application/json", "json", "is not a JSON object"),
        (b"[" * 40 + b"]" * 40, "application/json", "json", "is not a JSON object"),
        (b"<html>", "text/html", None, 'its Content-Type is "text/html", not msgpack or JSON'),
        (b"\x80", "", None, "its Content-Type is missing"),
    ],
)
def test_decode_names_what_is_wrong(
    raw: bytes, content_type: str, format_: str | None, problem: str
) -> None:
    value, fmt, why = decode(raw, content_type)
    assert value is None and fmt == format_
    assert problem in why


def test_decode_never_instantiates_a_php_object() -> None:
    """ext-msgpack turns a map keyed by nil into an object of the class it names
    (its __wakeup/__destruct run) unless msgpack.php_only is 0: an answer never
    instantiates anything, and the setting is put back afterwards."""
    hostile = msgpack.packb({None: "ArrayObject", "lock": "t"})
    code = DECODE + "$out[] = ini_get('msgpack.php_only');"
    value, fmt, problem, php_only = php(
        code, {"raw": base64.b64encode(hostile).decode(), "type": "application/msgpack"}
    )
    assert fmt == "msgpack" and problem is None
    assert value == {"": "ArrayObject", "lock": "t"}, "a plain array, not an ArrayObject"
    assert php_only == "1"


def test_data_is_bytes_or_false() -> None:
    code = """
    $out = array_map(static fn ($c) => Codec::data($c[0], $c[1]), [
        ['YWJj', 'json'], ['not base64!', 'json'], ['abc', 'msgpack'],
        [42, 'msgpack'], [null, 'json'],
    ]);
    """
    assert php(code) == ["abc", False, "abc", False, False]


# --------------------------------------------------------------------------- options

RESOLVE = """
$o = Options::resolve($in['options'] ?? [], $in['save_path'] ?? '');
$out = get_object_vars($o);
"""


def resolve(
    options: dict[str, Any] | None = None, save_path: str = "", env: dict[str, str] | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = php(RESOLVE, {"options": options or {}, "save_path": save_path}, env)
    return result


def test_defaults() -> None:
    assert resolve() == {
        "urls": ["http://127.0.0.1:7070"],
        "token": "",
        "connectTimeoutMs": 1000,
        "timeoutMs": 5000,
        "lock": "exclusive",
        "lockWaitMs": 5000,
        "lockLeaseMs": 30000,
        "onUnavailable": "fail",
        "onLockTimeout": "fail",
        "msgpack": True,  # ext-msgpack is loaded here: format auto picks it
        "caFile": "",
        "caPath": "",
    }


def test_the_defaults_are_the_documented_ones() -> None:
    """Options::DEFINITIONS (also Handler::OPTIONS) and the resolved defaults agree."""
    out = php("$out = [Options::DEFINITIONS, SessionService\\Handler::OPTIONS];")
    definitions, handler_options = out
    assert definitions == handler_options
    defaults = resolve()
    assert defaults["urls"] == [definitions["url"][1]]
    assert defaults["lockWaitMs"] == definitions["lock_wait_ms"][1]
    assert defaults["lockLeaseMs"] == definitions["lock_lease_ms"][1]
    assert defaults["timeoutMs"] == definitions["timeout_ms"][1]
    assert defaults["connectTimeoutMs"] == definitions["connect_timeout_ms"][1]
    assert defaults["lock"] == definitions["lock"][1]


SP = "http://sp:1?lock_wait_ms=3"


@pytest.mark.parametrize(
    ("options", "env", "save_path", "expected"),
    [
        ({"lock_wait_ms": 1}, {"SESSION_SERVICE_LOCK_WAIT_MS": "2"}, SP, 1),
        ({}, {"SESSION_SERVICE_LOCK_WAIT_MS": "2"}, SP, 2),
        ({}, {"SESSION_SERVICE_LOCK_WAIT_MS": ""}, SP, 3),  # empty: unset
        ({}, {}, SP, 3),
        ({}, {}, "", 5000),
        ({}, {}, "/var/lib/php/sessions", 5000),  # not for the handler
    ],
)
def test_precedence_code_env_save_path_default(
    options: dict[str, Any], env: dict[str, str], save_path: str, expected: int
) -> None:
    assert resolve(options, save_path, env)["lockWaitMs"] == expected


def test_each_option_takes_its_own_source() -> None:
    out = resolve(
        {"timeout_ms": 10},
        "http://a:1,https://b:2/?lock=NONE&timeout_ms=20&connect_timeout_ms=30",
        {"SESSION_SERVICE_URL": "http://env:1"},
    )
    assert out["urls"] == ["http://env:1"]
    assert out["timeoutMs"] == 10
    assert out["connectTimeoutMs"] == 30
    assert out["lock"] == "none"


def test_save_path_parsing() -> None:
    out = resolve(
        save_path=" HTTP://a:1/, ,https://b:2//?&on_unavailable=%65mpty&&on_lock_timeout=readonly&"
    )
    assert out["urls"] == ["HTTP://a:1", "https://b:2"]
    assert out["onUnavailable"] == "empty" and out["onLockTimeout"] == "readonly"
    assert php("$out = Options::savePathOptions('/tmp/sessions');") == []
    assert php("$out = Options::savePathOptions('http://a:1?ca_path=/x%26y');") == {
        "url": "http://a:1",
        "ca_path": "/x&y",
    }


def test_save_path_from_php_ini() -> None:
    """Without an explicit save_path, resolve() reads session.save_path from php.ini."""
    code = "$out = get_object_vars(Options::resolve());"
    out = php(code, session__save_path='"http://ini:1?lock_lease_ms=1234"')
    assert out["urls"] == ["http://ini:1"] and out["lockLeaseMs"] == 1234


def test_token_and_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n")
    tf = str(token_file)
    assert resolve(save_path=f"http://a:1?token_file={tf}")["token"] == "from-file"
    env_token = {"SESSION_SERVICE_TOKEN": "from-env"}
    assert resolve({}, f"http://a:1?token_file={tf}", env_token)["token"] == "from-env"
    assert resolve({"token_file": tf}, "", env_token)["token"] == "from-file"
    assert resolve({"token": "from-code"}, "", {"SESSION_SERVICE_TOKEN_FILE": tf})["token"] == (
        "from-code"
    )
    both = resolve({"token": "x", "token_file": tf})
    assert both == {"error": 'session-service: give "token" or "token_file", not both'}
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in resolve({"token_file": str(empty)})["error"]
    assert "must be one line" in resolve({"token": "a\nb"})["error"]
    assert resolve({"token": " spaced \n"})["token"] == "spaced"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lock_wait_ms": " 42 "}, None),
        ({"lock_wait_ms": 0}, None),
        ({"lock_wait_ms": "4.2"}, "must be an integer >= 0, got '4.2'"),
        ({"lock_wait_ms": -1}, "must be an integer >= 0, got -1"),
        ({"lock_lease_ms": 99}, 'option "lock_lease_ms" must be an integer >= 100, got 99'),
        ({"timeout_ms": "0"}, 'option "timeout_ms" must be an integer >= 1'),
        ({"lock": "sometimes"}, 'option "lock" must be one of exclusive, none, got "sometimes"'),
        ({"format": "xml"}, 'option "format" must be one of auto, msgpack, json, got "xml"'),
        ({"url": " , "}, "no service url given"),
        ({"url": ["http://a:1", "ftp://b"]}, 'url "ftp://b" must start with http:// or https://'),
        ({"ca_file": "/no/such/ca.pem"}, 'option "ca_file": "/no/such/ca.pem" is not a readable'),
        ({"ca_path": "/no/such/dir"}, 'option "ca_path": "/no/such/dir" is not a directory'),
        ({"colour": "red"}, 'unknown option "colour"'),
    ],
)
def test_values_are_validated(options: dict[str, Any], message: str | None) -> None:
    out = resolve(options)
    if message is None:
        assert "error" not in out, out
    else:
        assert message in out.get("error", ""), out
        assert "(environment" not in out["error"] and "(session.save_path" not in out["error"]


def test_errors_name_their_source() -> None:
    env = resolve(env={"SESSION_SERVICE_LOCK": "maybe"})["error"]
    assert env.endswith('got "maybe" (environment variable SESSION_SERVICE_LOCK)'), env
    ini = resolve(save_path="http://a:1?lock=maybe")["error"]
    assert ini.endswith('got "maybe" (session.save_path)'), ini


def test_format_json_and_url_list() -> None:
    out = resolve({"format": "JSON", "url": ["http://a:1/", " http://b:2 "]})
    assert out["msgpack"] is False
    assert out["urls"] == ["http://a:1", "http://b:2"]
