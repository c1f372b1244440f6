"""The Python client is a light dependency: importing it loads no SQLAlchemy (issue 14.1:
the records it returns live in session_service/records.py, not in the store)."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_importing_the_client_does_not_load_sqlalchemy() -> None:
    probe = (
        "import sys, session_service.client\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'asyncmy', "
        "'pymysql', 'greenlet'))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the client loaded: {done.stdout.strip()}"
