"""Schemathesis against the service's own OpenAPI document: no 5xx, no schema breakage.

Over a thousand generated requests, with and without a valid token, against a real
service process. The checks include: no server error, responses conform to the
documented schemas and content types, schema-valid requests are accepted (or get a
documented state-dependent status), schema-invalid requests are rejected.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import ROOT, ServiceProcess

CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "412", "423"]
"""


def run_schemathesis(url: str, config: Path, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [
            str(ROOT / ".venv/bin/st"), "--no-color", "--config-file", str(config), "run",
            f"{url}/openapi.json", "--checks", "all", "--request-timeout", "15",
            "--seed", "20261127", *args,
        ],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    found = re.search(r"(\d+) generated", result.stdout)
    assert found, result.stdout[-3000:]
    assert result.returncode == 0, result.stdout[-6000:]
    return int(found.group(1)), result.stdout


@pytest.mark.timeout(1800)
def test_generated_requests_never_break_the_service(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    service = service_factory(
        f"sqlite:///{tmp_path / 'fuzz.db'}",
        extra_args=["--max-wait-ms", "500", "--max-data-bytes", "65536"],
    )
    with_token, _ = run_schemathesis(
        service.url, config, "-H", "Authorization: Bearer secret", "--max-examples", "90"
    )
    without_token, _ = run_schemathesis(service.url, config, "--max-examples", "15")
    assert with_token + without_token >= 1000
    log = (tmp_path / "service-0.log").read_text()
    assert "Traceback" not in log and "unexpected error" not in log
