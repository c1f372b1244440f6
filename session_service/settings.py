"""One settings object for the service: defaults, environment, then command-line flags.

Every knob lives here, so docs/configuration in the README is generated from one place
and `session-service --help` cannot drift from what the code reads.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024
#: MEDIUMBLOB holds 16 MiB - 1 bytes; a row must also fit MySQL's max_allowed_packet.
HARD_MAX_DATA_BYTES = 16 * MIB - 1


class Settings(BaseSettings):
    """Service configuration. Environment variables use the SESSION_SERVICE_ prefix."""

    model_config = SettingsConfigDict(
        env_prefix="SESSION_SERVICE_", extra="ignore", populate_by_name=True
    )

    db_url: str = Field(
        default="sqlite:///./var/sessions.db",
        validation_alias=AliasChoices("SESSION_DB_URL", "SESSION_SERVICE_DB_URL", "db_url"),
        description="SQLAlchemy URL of the store: sqlite:///path or mysql+pymysql://user:pw@host/db"
        " (the primary); several comma-separated MySQL URLs (Galera nodes) are tried in turn",
    )
    db_replica_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="read replica URL (repeatable, or comma-separated): serves lock-free reads",
    )
    replica_max_lag_seconds: float = Field(
        default=0.0,
        ge=0.0,
        description="largest Seconds_Behind_Master at which a replica still serves reads",
    )
    replica_check_interval: float = Field(
        default=0.5, gt=0.0, description="seconds between replica lag and health checks"
    )
    replica_retry_seconds: float = Field(
        default=2.0, gt=0.0, description="seconds before a failed replica is tried again"
    )
    replica_gtid_wait: float = Field(
        default=0.05,
        ge=0.0,
        description="seconds a replica read waits (MASTER_GTID_WAIT) to catch up with writes",
    )
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=7070, ge=0, le=65535, description="TCP port to listen on")
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes")
    request_read_timeout: float = Field(
        default=20.0,
        gt=0.0,
        description="seconds a client has to send a request's line and headers (from when "
        "the connection opens or the request begins), and then again its body; then 408 "
        "and the connection closed",
    )
    http_server: str = Field(
        default="lean",
        description="lean: the service's own HTTP protocol on uvicorn's (a fast path for "
        "/v1/sessions, the wire limits below); uvicorn: stock uvicorn serving the same "
        "ASGI app (slower, only uvicorn's own limits), e.g. when a uvicorn upgrade fails "
        "tests/service/test_uvicorn_coupling.py",
    )
    first_byte_timeout: float = Field(
        default=5.0,
        gt=0.0,
        description="seconds a new connection has to send its first byte (at most "
        "request_read_timeout); then 408 and the connection closed",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="open client connections per worker process; at the limit the oldest "
        "idle one (kept alive, or no byte sent yet) is closed for a new one, else the new "
        "one is answered 503 and closed",
    )
    tokens: str = Field(
        default="",
        description='bearer tokens, "namespace:secret,..."; a bare secret means namespace '
        'default; "namespace+admin:secret" adds the admin scope (POST /v1/gc)',
    )
    tokens_file: str = Field(
        default="",
        description="file of tokens (same format, commas or one per line), re-read when it "
        "changes: rotate a secret without a restart",
    )
    tls_certfile: str = Field(default="", description="PEM certificate: serve HTTPS")
    tls_keyfile: str = Field(default="", description="PEM private key of tls_certfile")
    insecure_no_auth: bool = Field(
        default=False, description="serve without tokens (every caller is namespace default)"
    )
    max_data_bytes: int = Field(
        default=MIB, ge=1, le=HARD_MAX_DATA_BYTES, description="largest session payload accepted"
    )
    max_ttl: int = Field(default=366 * 86400, ge=1, description="largest ttl in seconds")
    default_wait_ms: int = Field(default=5000, ge=0, description="lock wait when none is given")
    max_wait_ms: int = Field(default=60000, ge=0, description="largest lock wait accepted")
    default_lease_ms: int = Field(default=30000, ge=100, description="lock lease when none given")
    max_lease_ms: int = Field(default=600000, ge=100, description="largest lock lease accepted")
    touch_skip_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="skip a touch's write when expiry would move by less than this part of ttl",
    )
    gc_interval: float = Field(
        default=60.0, ge=0.0, description="seconds between background gc runs (0 disables)"
    )
    gc_batch: int = Field(default=500, ge=1, le=10000, description="rows deleted per gc batch")
    db_pool_size: int = Field(
        default=20,
        ge=1,
        description="pooled connections per process (also the number of request threads)",
    )
    db_max_overflow: int = Field(
        default=5, ge=0, description="extra connections for gc and health checks"
    )
    db_pre_ping: bool = Field(
        default=True,
        description="ping a pooled connection before use when it was idle (see next)",
    )
    db_pre_ping_idle: float = Field(
        default=1.0,
        ge=0.0,
        description="idle seconds after which a pooled connection is pinged before use "
        "(0: before every use)",
    )
    db_async: bool = Field(
        default=True,
        description="serve a single MySQL/MariaDB primary from the event loop (asyncmy) "
        "instead of worker threads",
    )
    db_prepared_statements: bool = Field(
        default=True,
        description="on the event-loop path, send statements as server-side prepared "
        "statements (off: text protocol, e.g. behind a proxy without them)",
    )
    db_connect_timeout: float = Field(default=3.0, gt=0, description="database connect timeout")
    db_retry_seconds: float = Field(
        default=3.0, ge=0, description="how long transient database errors are retried"
    )
    db_fail_fast_seconds: float = Field(
        default=1.0,
        ge=0,
        description="after the database was unreachable for a whole retry window, fail "
        "at once (503) for this long instead of retrying again (0: never)",
    )
    auto_migrate: bool = Field(
        default=True, description="create or upgrade the schema when the service starts"
    )
    log_level: str = Field(default="info", description="debug, info, warning or error")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be debug, info, warning, error or critical")
        return value

    @field_validator("http_server")
    @classmethod
    def _known_server(cls, value: str) -> str:
        value = value.lower()
        if value not in {"lean", "uvicorn"}:
            raise ValueError("must be lean or uvicorn")
        return value

    @field_validator("db_url")
    @classmethod
    def _supported_db(cls, value: str) -> str:
        urls = split_urls(value)
        for url in urls:
            scheme = url.split(":", 1)[0]
            if not (scheme.startswith("sqlite") or scheme.startswith(("mysql", "mariadb"))):
                raise ValueError("only sqlite:/// and mysql+pymysql:// URLs are supported")
        if len(urls) > 1 and any(url.startswith("sqlite") for url in urls):
            raise ValueError("a list of database URLs must all be MySQL/MariaDB (Galera nodes)")
        return value

    @field_validator("db_replica_urls", mode="before")
    @classmethod
    def _replica_list(cls, value: object) -> object:
        """Accept a list (flags) or one comma-separated string (environment)."""
        items = value if isinstance(value, list | tuple) else [value]
        urls = [url for item in items if item for url in split_urls(str(item))]
        for url in urls:
            if not url.startswith(("mysql", "mariadb")):
                raise ValueError("replicas must be mysql+pymysql:// URLs")
        return urls


_URL_START = re.compile(r",\s*(?=[a-z][a-z0-9+]*://)")


def split_urls(value: str) -> list[str]:
    """Split "url1,url2": a comma counts only before another scheme, so query strings survive."""
    return [url.strip() for url in _URL_START.split(value) if url.strip()]


def read_tokens(settings: Settings) -> dict[str, str]:
    """Every configured token's namespace by secret (--tokens plus the tokens file);
    ValueError naming every problem. The tokens themselves: session_service/tokens.py."""
    from session_service.tokens import read_strictly

    return {secret: token.namespace for secret, token in read_strictly(settings).items()}


def parse_tokens(spec: str) -> dict[str, str]:
    """Map each secret to its namespace from "ns:secret,ns+admin:secret2,secret3,...".

    Several secrets may name the same namespace, which is how a token is rotated
    without downtime: add the new one, move clients, remove the old one.
    """
    from session_service.tokens import collect, strict

    return {secret: token.namespace for secret, token in strict(collect(spec, "tokens")).items()}


def env_name(field: str) -> str:
    """The environment variable of a settings field (SESSION_DB_URL for the database)."""
    return "SESSION_DB_URL" if field == "db_url" else f"SESSION_SERVICE_{field.upper()}"


def markdown_table() -> str:
    """The configuration table of the README, generated so that it cannot drift."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        flag = {"db_url": "--db", "db_replica_urls": "--db-replica"}.get(
            name, "--" + name.replace("_", "-")
        )
        value = field.get_default(call_default_factory=True)
        default = "(none)" if value in ("", None, []) else f"`{value}`"
        rows.append(f"| `{flag}` | `{env_name(name)}` | {default} | {field.description} |")
    return "\n".join(rows)
