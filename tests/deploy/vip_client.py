"""A client that keeps requesting one URL, run inside a network namespace by the HA test.

Usage: python vip_client.py URL STOP_FILE. Every 0.1 s it sends GET URL (2 s timeout) and
prints one line: `<unix time> ok <body>`, `<unix time> http <status> <body>` for an
answer that is not 2xx, or `<unix time> error <reason>` for no answer, until STOP_FILE
exists. The test reads the lines to see that requests kept working through a failover.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request


def main(url: str, stop_file: str) -> None:
    while not os.path.exists(stop_file):
        started = time.time()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                line = f"{started:.3f} ok {response.read().decode().strip()}"
        except urllib.error.HTTPError as exc:
            line = f"{started:.3f} http {exc.code} {exc.read().decode(errors='replace').strip()}"
        except OSError as exc:
            line = f"{started:.3f} error {exc}".replace("\n", " ")
        print(line, flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
