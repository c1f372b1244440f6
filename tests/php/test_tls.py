"""The PHP handler over HTTPS: a real `session-service serve --tls-certfile/--tls-keyfile`
with a self-signed certificate made at test time (openssl), PHP nodes whose handler
trusts it through SESSION_SERVICE_CA_FILE, or not.

Verification is never switched off: without the CA, with a wrong CA, or with a host
name the certificate does not name, session_start() fails with a line naming the
TLS problem, and nothing is ever sent over plain http instead.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServiceProcess as TlsServiceProcess

from .conftest import REPO, TOKEN, Browser, ServiceProcess
from .test_php_handler import LOG, READ_FAILED, NodeFactory


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (CN and subjectAltName), made now."""
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certs(php_workdir: Path) -> dict[str, Path]:
    cert, key = make_certificate(php_workdir, "service")
    other, _ = make_certificate(php_workdir, "other")  # a CA that did not sign the service's
    return {"cert": cert, "key": key, "other": other}


@pytest.fixture(scope="module")
def tls_service(
    php_db_url: str, php_workdir: Path, certs: dict[str, Path], service: ServiceProcess
) -> Iterator[TlsServiceProcess]:
    """A real service over HTTPS on the tests' database (`service` created its schema)."""
    svc = TlsServiceProcess(
        php_db_url,
        tokens=f"default:{TOKEN}",
        tls=True,
        extra_args=["--tls-certfile", str(certs["cert"]), "--tls-keyfile", str(certs["key"])],
        log_path=php_workdir / "tls-service.log",
    )
    svc.start()
    yield svc
    svc.stop()


def lock_line(url: str) -> str:
    return LOG + rf"lock failed: service unreachable at {url}/v1/sessions/\{{sid\}}/lock\?\S+ "


def test_session_over_https_with_the_ca(
    start_node: NodeFactory, tls_service: TlsServiceProcess, certs: dict[str, Path]
) -> None:
    assert tls_service.url.startswith("https://")
    node = start_node(tls_service.url, ca_file=str(certs["cert"]))
    b = Browser()
    for i in range(1, 4):
        assert b.get(node, "incr")["n"] == i
    assert b.get(node, "get")["session"] == {"n": 3}
    r = httpx.head(
        f"{tls_service.url}/v1/sessions/{b.sid}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        verify=ssl.create_default_context(cafile=str(certs["cert"])),
    )
    assert r.status_code == 200, "stored in the service reached over TLS"


def test_without_the_ca_session_start_fails(
    start_node: NodeFactory, tls_service: TlsServiceProcess
) -> None:
    node = start_node(tls_service.url)  # the system CAs do not know the certificate
    out = Browser().get(node, "incr")
    assert out["started"] is False and "n" not in out
    node.expect(
        lock_line(tls_service.url)
        + r"\(curl error 60: SSL certificate problem: self.signed certificate"
        + r" \(TLS: the service's certificate could not be verified;"
        + r" set SESSION_SERVICE_CA_FILE to the CA that signed it\)\)"
    )
    node.expect(READ_FAILED)


def test_with_a_wrong_ca_session_start_fails(
    start_node: NodeFactory, tls_service: TlsServiceProcess, certs: dict[str, Path]
) -> None:
    node = start_node(tls_service.url, ca_file=str(certs["other"]))
    out = Browser().get(node, "incr")
    assert out["started"] is False
    node.expect(
        lock_line(tls_service.url)
        + r"\(curl error 60: SSL certificate problem: self.signed certificate"
        + r" \(TLS: the service's certificate is not signed by the CA of"
        + r" SESSION_SERVICE_CA_FILE/CA_PATH, or does not name this host\)\)"
    )
    node.expect(READ_FAILED)


def test_host_name_is_verified(
    start_node: NodeFactory, tls_service: TlsServiceProcess, certs: dict[str, Path]
) -> None:
    """The right CA, but a host name the certificate does not name (it names 127.0.0.1)."""
    url = tls_service.url.replace("127.0.0.1", "localhost")
    node = start_node(url, ca_file=str(certs["cert"]), connect_timeout_ms="2000")
    out = Browser().get(node, "incr")
    assert out["started"] is False
    node.expect(lock_line(url) + r"\(curl error (60|51): .*(host ?name|subject name).* \(TLS: ")
    node.expect(READ_FAILED)


def test_no_fallback_to_http(
    start_node: NodeFactory, tls_service: TlsServiceProcess, certs: dict[str, Path]
) -> None:
    """A failed https URL is not retried over http, nor is the next URL used for a TLS
    failure of a request the handler could not verify: the only URL tried is https."""
    node = start_node(tls_service.url, ca_file=str(certs["other"]), fresh=True)
    out = Browser().get(node, "incr")
    assert out["started"] is False
    (line,) = node.expect(LOG + r"lock failed: .*curl error 60")
    assert "http://" not in line and f"at {tls_service.url}/" in line
    node.expect(READ_FAILED)
    node.collect()
    assert not [e for e in node.pending if "trying" in e]


def test_ca_options_are_checked_at_registration(php_workdir: Path) -> None:
    missing = php_workdir / "no-such-ca.pem"
    script = (
        "require 'php_handler/autoload.php';"
        f"foreach ([['ca_file' => '{missing}'], ['ca_path' => '{missing}']] as $o) {{"
        ' try { new SessionService\\Handler($o); echo "accepted\\n"; }'
        ' catch (InvalidArgumentException $e) { echo $e->getMessage(), "\\n"; } }'
    )
    out = subprocess.run(
        ["php", "-d", "error_reporting=-1", "-d", "display_errors=stderr", "-r", script],
        capture_output=True, text=True, cwd=REPO, check=True, timeout=60,
    )  # fmt: skip
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0] == f'session-service: option "ca_file": "{missing}" is not a readable file'
    assert lines[1] == f'session-service: option "ca_path": "{missing}" is not a directory'
