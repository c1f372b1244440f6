#!/usr/bin/env python3
"""Health check of one session-balancer, for keepalived's vrrp_script (and docker).

Exit 0 when the local balancer answers its stats page (/stats) and sees at least one
backend UP (or PARTIAL: up for some of its workers); exit 1 otherwise, with the reason
on stderr. With --alive, only the first half: the balancer answers and is not stopping.

keepalived runs both (deploy/keepalived/): a balancer that is down, hung (no answer
within --timeout) or stopping fails --alive, and its node drops the floating IP at once;
one without a healthy backend loses priority, so the IP moves only to a balancer that
has one (when neither has, one of them keeps it and answers 503 "no backend").

Usage: check_balancer.py [--alive] [--timeout S] [STATS_URL]
STATS_URL defaults to http://127.0.0.1:8404/stats (the balancer's --stats listener).
Only the standard library: it runs with the system python3 on the balancer host.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8404/stats"


def problem(url: str, timeout: float, alive_only: bool = False) -> str | None:
    """Why this balancer is not healthy, or None when it is."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            stats = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"balancer stats at {url} not reachable: {reason}"
    except ValueError as exc:
        return f"balancer stats at {url} are not JSON: {exc}"
    if not isinstance(stats, dict) or not isinstance(stats.get("backends"), list):
        return f"balancer stats at {url} have no backend list"
    if stats.get("draining"):
        return "balancer is draining (stopping)"
    if alive_only:
        return None
    states = {str(b.get("name")): b.get("state") for b in stats["backends"]}
    if not any(state in ("UP", "PARTIAL") for state in states.values()):
        listed = ", ".join(f"{name} {state}" for name, state in states.items()) or "none"
        return f"no backend is UP ({listed})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_balancer.py", description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"stats URL ({DEFAULT_URL})")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait (1)")
    parser.add_argument("--alive", action="store_true", help="only check that the balancer answers")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    reason = problem(args.url, args.timeout, args.alive)
    if reason:
        print(f"check_balancer.py: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
