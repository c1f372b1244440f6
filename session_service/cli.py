"""`session-service serve|migrate|gc|check-tokens`: flags are generated from the Settings fields.

Precedence: flag, then environment variable, then default. Every flag's help names
its environment variable, so `--help` is the configuration reference.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from session_service import tokens
from session_service.settings import Settings, env_name, read_tokens

_SHORT = {"db_url": ["--db"], "db_replica_urls": ["--db-replica"]}


def _add_settings_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for name in names:
        field = Settings.model_fields[name]
        flags = [*_SHORT.get(name, []), "--" + name.replace("_", "-")]
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} [env {env_name(name)}; default {default!r}]"
        if field.annotation == list[str]:  # repeatable flag; None keeps the environment
            parser.add_argument(*flags, dest=name, action="append", default=None, help=help_text)
        elif field.annotation is bool:
            parser.add_argument(
                *flags,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            kind: Any = field.annotation if field.annotation in (int, float) else str
            parser.add_argument(*flags, dest=name, type=kind, default=None, help=help_text)


_DB_FLAGS = [
    "db_url",
    "db_pool_size",
    "db_max_overflow",
    "db_pre_ping",
    "db_pre_ping_idle",
    "db_connect_timeout",
    "db_retry_seconds",
    "log_level",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="session-service",
        description="Shared sessions for stateless PHP web nodes: an HTTP session store "
        "over MySQL/MariaDB or SQLite. See docs/api.md and README.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP session service")
    _add_settings_flags(serve, list(Settings.model_fields))
    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    _add_settings_flags(migrate, _DB_FLAGS)
    gc = commands.add_parser("gc", help="delete expired sessions once, then exit")
    _add_settings_flags(gc, [*_DB_FLAGS, "gc_batch"])
    check = commands.add_parser(
        "check-tokens",
        help="validate a tokens file before putting it in place (exit 1 naming each bad line)",
        description="Read FILE as the service reads --tokens-file and report every item it "
        "would refuse, by line, without printing secrets. Exit 0 when the whole file is "
        "valid, 1 otherwise. A running service applies the good lines of a changed file and "
        "refuses the bad ones (docs/security.md).",
    )
    check.add_argument("file", metavar="FILE", help="the tokens file to check")
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: value
        for name, value in vars(args).items()
        if name in Settings.model_fields and value is not None
    }
    return Settings(**overrides)


def _fail(message: str) -> int:
    print(f"session-service: {message}", file=sys.stderr)
    return 2


def check_tokens(path: str) -> int:
    """`session-service check-tokens FILE`: what the service would refuse in FILE."""
    found = tokens.load(Settings(tokens="", tokens_file=path))
    for problem in found.problems:
        print(f"session-service: {problem}", file=sys.stderr)
    if found.file_empty:
        print(f"session-service: tokens file {path} has no tokens", file=sys.stderr)
    if found.problems or found.file_empty:
        return 1
    namespaces = sorted({token.namespace for token in found.tokens.values()})
    admins = sum(token.admin for token in found.tokens.values())
    print(
        f"{path}: {len(found.tokens)} tokens, namespaces {', '.join(namespaces)}; "
        f"{admins} with the admin scope"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-tokens":
        return check_tokens(args.file)
    try:
        settings = load_settings(args)
        tokens = read_tokens(settings)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        return _fail(f"invalid setting: {problems}")
    except ValueError as error:
        return _fail(f"invalid tokens: {error}")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        if not tokens and not settings.insecure_no_auth:
            return _fail(
                "no tokens configured: set --tokens / SESSION_SERVICE_TOKENS "
                '("namespace:secret,...") or --tokens-file, or pass --insecure-no-auth '
                "for a private test"
            )
        if bool(settings.tls_certfile) != bool(settings.tls_keyfile):
            return _fail("--tls-certfile and --tls-keyfile go together")
        for path in (settings.tls_certfile, settings.tls_keyfile):
            if path and not os.access(path, os.R_OK):
                return _fail(f"cannot read {path}")
        return _serve(settings)
    return _maintenance(args.command, settings)


def _maintenance(command: str, settings: Settings) -> int:
    from session_service.errors import StoreError
    from session_service.schema import migrate
    from session_service.store import SessionStore

    store = SessionStore(settings)
    try:
        if command == "migrate":
            version = migrate(store.engine)
            print(f"schema is at version {version}")
        else:
            print(f"deleted {store.gc()} expired sessions")
    except StoreError as error:
        return _fail(str(error))
    except Exception as error:  # a clear line, not a traceback, for operators
        return _fail(f"{command} failed: {type(error).__name__}: {error}")
    finally:
        store.close()
    return 0


def _serve(settings: Settings) -> int:
    # Workers are separate processes: they read the same settings from the environment.
    for name, value in settings.model_dump().items():
        if isinstance(value, list):
            value = ",".join(value)
        os.environ[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    metrics_dir = None
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker writes its metrics to files here and /metrics adds them all up,
        # whichever worker answers the scrape.
        # Every metric update writes to a memory-mapped file there: keep it in tmpfs,
        # where the kernel never writes those pages back to a disk.
        shm = "/dev/shm"
        metrics_dir = tempfile.mkdtemp(
            prefix="session-service-metrics-",
            dir=shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None,
        )
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _run_uvicorn(settings)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _run_uvicorn(settings: Settings) -> None:
    import uvicorn

    if settings.http_server == "uvicorn":  # stock uvicorn, the FastAPI app (stock.py)
        app, http = "session_service.api.stock:app_from_environment", "auto"
    else:
        app, http = "session_service.api.app:app_from_environment", "lean"
    uvicorn.run(
        app,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
        loop="auto",
        http=_lean_protocol() if http == "lean" else http,
        # no WebSocket endpoint: an upgrade request is a plain request (a connection
        # handed to a WebSocket protocol would leave the lean protocol's connection cap)
        ws="none",
        proxy_headers=False,  # the service uses no client address (no access log)
        server_header=False,  # no "server: uvicorn" on every reply
        timeout_graceful_shutdown=10,
        ssl_certfile=settings.tls_certfile or None,
        ssl_keyfile=settings.tls_keyfile or None,
    )


def _lean_protocol() -> type:
    from session_service.api.http_protocol import SessionHttpProtocol

    return SessionHttpProtocol


if __name__ == "__main__":
    sys.exit(main())
