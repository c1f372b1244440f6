"""Command line: pen's positional form (``LISTEN BACKEND...``) plus HAProxy-style options.

Every input error is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from dataclasses import replace
from typing import Any, NoReturn

from balancer.config import (
    ConfigError,
    Settings,
    load_file,
    parse_backend,
    parse_hostport,
    parse_networks,
    validate,
)

DESCRIPTION = """\
Stateless round-robin HTTP/TCP load balancer: every request (HTTP mode) or connection
(TCP mode) goes to the next backend, with no stickiness at all.

  session-balancer -f 8080 10.0.0.5:80 10.0.0.6:80
  session-balancer -f --stats 8081 127.0.0.1:8080 web1:80,weight=2 web2
  session-balancer -f --config /etc/session-balancer.toml

LISTEN is PORT or HOST:PORT (default host 0.0.0.0). BACKEND is HOST[:PORT] (port 80 when
omitted) with optional ,weight=N (0-1000, default 1) and ,name=NAME. Command-line options
override the config file. See docs/balancer.md.
"""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage by default)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> Parser:
    p = Parser(
        prog="session-balancer",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("listen", nargs="?", metavar="LISTEN", help="port or host:port to listen on")
    p.add_argument("backends", nargs="*", metavar="BACKEND", help="host[:port][,weight=N][,name=N]")
    p.add_argument("--config", metavar="FILE", help="TOML config file (SIGHUP re-reads backends)")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="debug logging")
    p.add_argument("--tcp", action="store_true", help="TCP mode: round robin per connection")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default 1)")
    p.add_argument("--stats", metavar="[HOST:]PORT", help="serve stats (/, /stats, /metrics)")
    p.add_argument(
        "--debug-header",
        action="store_const",
        const="X-Balancer-Backend",
        help="add an X-Balancer-Backend response header naming the backend (for debugging)",
    )
    p.add_argument("--pidfile", metavar="FILE", help="write the process id to FILE")
    p.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="CIDR",
        help="a proxy in front (address or CIDR, repeatable, or comma-separated) whose"
        " X-Forwarded-For is appended to and X-Forwarded-Proto kept; from any other peer"
        " they are replaced and Forwarded/X-Real-IP dropped (default: none trusted)",
    )
    t = p.add_argument_group("timeouts (seconds)")
    t.add_argument("--connect-timeout", type=float, metavar="S", help="connect to a backend (3)")
    t.add_argument(
        "--server-timeout", type=float, metavar="S", help="backend silence during a response (30)"
    )
    t.add_argument(
        "--idle-timeout", type=float, metavar="S", help="client silence, also keep-alive idle (30)"
    )
    t.add_argument("--header-timeout", type=float, metavar="S", help="whole request head (10)")
    t.add_argument("--drain-timeout", type=float, metavar="S", help="SIGTERM grace period (30)")
    t.add_argument(
        "--backend-idle", type=float, metavar="S", help="keep idle backend connections (10)"
    )
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-conn", type=int, metavar="N", help="client connections (4096)")
    lim.add_argument("--max-header-size", type=int, metavar="BYTES", help="request head (16384)")
    lim.add_argument("--retries", type=int, metavar="N", help="other backends to try (3)")
    lim.add_argument("--pool-size", type=int, metavar="N", help="idle connections per backend (64)")
    h = p.add_argument_group("health checks")
    h.add_argument("--check-path", metavar="PATH", help="HTTP GET PATH, else a TCP connect check")
    h.add_argument("--check-interval", type=float, metavar="S", help="between checks (2)")
    h.add_argument("--check-timeout", type=float, metavar="S", help="per check (2)")
    h.add_argument("--rise", type=int, metavar="N", help="successes to put a backend back (2)")
    h.add_argument("--fall", type=int, metavar="N", help="failures to take a backend out (3)")
    h.add_argument("--slowstart", type=float, metavar="S", help="ramp-up after return, 0=off (10)")
    return p


# option name -> (section or None, field) in Settings
_OVERRIDES: dict[str, tuple[str, str]] = {
    "connect_timeout": ("timeouts", "connect"),
    "server_timeout": ("timeouts", "server"),
    "idle_timeout": ("timeouts", "idle"),
    "header_timeout": ("timeouts", "header"),
    "drain_timeout": ("timeouts", "drain"),
    "backend_idle": ("timeouts", "backend_idle"),
    "max_conn": ("limits", "max_connections"),
    "max_header_size": ("limits", "max_header_size"),
    "retries": ("limits", "retries"),
    "pool_size": ("limits", "pool_size"),
    "check_path": ("health", "path"),
    "check_interval": ("health", "interval"),
    "check_timeout": ("health", "timeout"),
    "rise": ("health", "rise"),
    "fall": ("health", "fall"),
    "slowstart": ("health", "slowstart"),
}


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Merge defaults, the config file and the command line (in that order)."""
    given: dict[str, Any] = vars(args)
    settings = Settings()
    if "config" in given:
        settings = load_file(given["config"])
    if given.get("listen"):
        host, port = parse_hostport(given["listen"], "0.0.0.0", None)
        settings = replace(settings, listen_host=host, listen_port=port)
    if given.get("backends"):
        backends = tuple(parse_backend(text) for text in given["backends"])
        settings = replace(settings, backends=backends)
    if "stats" in given:
        host, port = parse_hostport(given["stats"], "127.0.0.1", None)
        settings = replace(settings, stats_host=host, stats_port=port)
    flags: dict[str, Any] = {f: True for f in ("tcp", "foreground", "debug") if given.get(f)}
    settings = replace(settings, **flags)
    for name in ("debug_header", "pidfile"):
        if name in given:
            settings = replace(settings, **{name: given[name]})
    if "trusted_proxy" in given:
        networks = parse_networks([n for text in given["trusted_proxy"] for n in text.split(",")])
        settings = replace(settings, trusted_proxies=networks)
    if "workers" in given:
        if not 1 <= given["workers"] <= 64:
            raise ConfigError("--workers must be between 1 and 64")
        settings = replace(settings, workers=given["workers"])
    sections: dict[str, dict[str, Any]] = {}
    for option, (section, field) in _OVERRIDES.items():
        if option in given:
            value = given[option]
            if isinstance(value, int | float) and value < (0 if option == "retries" else 0.0):
                raise ConfigError(f"--{option.replace('_', '-')} must not be negative")
            if value == 0 and option not in ("retries", "slowstart"):
                raise ConfigError(f"--{option.replace('_', '-')} must be positive")
            sections.setdefault(section, {})[field] = value
    for section, changes in sections.items():
        settings = replace(settings, **{section: replace(getattr(settings, section), **changes)})
    if settings.health.path and not settings.health.path.startswith("/"):
        raise ConfigError("--check-path must start with /")
    if not settings.backends and "listen" not in given and "config" not in given:
        raise ConfigError("give LISTEN and at least one BACKEND, or --config FILE")
    return validate(settings)


def setup_logging(settings: Settings) -> None:
    level = logging.DEBUG if settings.debug else logging.INFO
    handler: logging.Handler
    if settings.foreground or not os.path.exists("/dev/log"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    else:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("session-balancer[%(process)d]: %(message)s"))
    root = logging.getLogger("balancer")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    setup_logging(settings)
    from balancer.server import describe, run

    logging.getLogger("balancer").debug("settings: %s", describe(settings))
    try:
        return run(settings)
    except OSError as exc:
        print(f"session-balancer: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
