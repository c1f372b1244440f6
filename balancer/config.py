"""Settings of the balancer: one frozen dataclass built from the command line or a TOML file.

Kept free of asyncio so that the command line can validate everything before any socket
is opened, and so that SIGHUP can re-read the file with the same code.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_BACKEND_PORT = 80
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A setting is invalid; the message is meant for a one-line error on the command line."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One backend as configured: where it is and how much traffic it gets."""

    host: str
    port: int
    weight: int = 1
    name: str = ""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def label(self) -> str:
        return self.name or self.address


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts in seconds, named after HAProxy's (connect, server, client, http-request)."""

    connect: float = 3.0
    server: float = 30.0
    idle: float = 30.0
    header: float = 10.0
    drain: float = 30.0
    backend_idle: float = 10.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that keep one client (or many) from holding the balancer."""

    max_connections: int = 4096
    max_header_size: int = 16384
    max_headers: int = 100
    retries: int = 3
    pool_size: int = 64


@dataclass(frozen=True, slots=True)
class Health:
    """Active health checks: TCP connect, or HTTP GET of ``path`` when it is set."""

    path: str = ""
    interval: float = 2.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    slowstart: float = 10.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the balancer needs to run; immutable so that workers can share it safely."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    backends: tuple[BackendSpec, ...] = ()
    tcp: bool = False
    workers: int = 1
    stats_host: str = "127.0.0.1"
    stats_port: int = 0
    debug_header: str = ""
    foreground: bool = False
    debug: bool = False
    pidfile: str = ""
    config_file: str = ""
    #: proxies in front whose X-Forwarded-* are believed (nginx's set_real_ip_from)
    trusted_proxies: tuple[Network, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    health: Health = field(default_factory=Health)


def parse_port(text: str) -> int:
    """Parse a TCP port number, refusing anything outside 1..65535."""
    try:
        port = int(text, 10)
    except ValueError:
        raise ConfigError(f"invalid port {text!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} out of range 1-65535")
    return port


def parse_hostport(
    text: str, default_host: str | None, default_port: int | None
) -> tuple[str, int]:
    """Parse ``PORT``, ``HOST``, ``HOST:PORT`` or ``[V6]:PORT`` (pen's forms)."""
    text = text.strip()
    if not text:
        raise ConfigError("empty address")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"invalid address {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"invalid address {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.isdigit() and default_host is not None:
        host, port_text = default_host, text
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        if default_host is None:
            raise ConfigError(f"missing host in {text!r}")
        host = default_host
    if port_text:
        return host, parse_port(port_text)
    if default_port is None:
        raise ConfigError(f"missing port in {text!r}")
    return host, default_port


def parse_backend(text: str) -> BackendSpec:
    """Parse ``HOST[:PORT][,weight=N][,name=NAME]``; a missing port means 80."""
    address, *options = text.split(",")
    host, port = parse_hostport(address, None, DEFAULT_BACKEND_PORT)
    weight, name = 1, ""
    for option in options:
        key, sep, value = option.partition("=")
        if key == "weight" and sep:
            weight = _int_in(value, 0, 1000, "weight")
        elif key == "name" and sep and value:
            name = value
        else:
            raise ConfigError(f"invalid backend option {option!r} in {text!r}")
    return BackendSpec(host, port, weight, name)


def parse_networks(items: Any) -> tuple[Network, ...]:
    """Parse addresses or CIDR blocks (``10.0.0.0/8``, ``192.0.2.7``, ``::1``), or a list.

    A string may hold several, separated by commas. An address is a block of one.
    """
    if isinstance(items, str):
        items = items.split(",")
    if not isinstance(items, list | tuple):
        raise ConfigError(f"trusted_proxies must be a list of addresses, got {items!r}")
    networks = []
    for item in items:
        text = str(item).strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(f"invalid trusted proxy address {text!r}") from None
    return tuple(networks)


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise ConfigError(f"{what} must be between {low} and {high}, got {value!r}")
    return number


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


_TOP_KEYS = {
    *("listen", "mode", "workers", "stats", "debug_header", "pidfile", "backend"),
    "trusted_proxies",
}
_SECTIONS: dict[str, set[str]] = {
    "timeouts": {"connect", "server", "idle", "header", "drain", "backend_idle"},
    "limits": {"max_connections", "max_header_size", "max_headers", "retries", "pool_size"},
    "health": {"path", "interval", "timeout", "rise", "fall", "slowstart"},
}


def load_file(path: str, base: Settings | None = None) -> Settings:
    """Read a TOML config file on top of ``base`` (defaults when None)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"invalid config file {path}: {exc}") from None
    settings = apply_mapping(base or Settings(), data)
    return replace(settings, config_file=str(path))


def apply_mapping(settings: Settings, data: dict[str, Any]) -> Settings:
    """Apply a parsed config mapping, rejecting unknown keys so that typos are not ignored."""
    unknown = set(data) - _TOP_KEYS - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    if "listen" in data:
        listen = str(data["listen"])
        changes["listen_host"], changes["listen_port"] = parse_hostport(listen, "0.0.0.0", None)
    if "mode" in data:
        if data["mode"] not in ("http", "tcp"):
            raise ConfigError(f"mode must be 'http' or 'tcp', got {data['mode']!r}")
        changes["tcp"] = data["mode"] == "tcp"
    if "workers" in data:
        changes["workers"] = _int_in(data["workers"], 1, 64, "workers")
    if "stats" in data:
        changes["stats_host"], changes["stats_port"] = parse_hostport(
            str(data["stats"]), "127.0.0.1", None
        )
    if "debug_header" in data:
        changes["debug_header"] = str(data["debug_header"])
    if "pidfile" in data:
        changes["pidfile"] = str(data["pidfile"])
    if "backend" in data:
        changes["backends"] = _backends_from(data["backend"])
    if "trusted_proxies" in data:
        changes["trusted_proxies"] = parse_networks(data["trusted_proxies"])
    for section, keys in _SECTIONS.items():
        if section not in data:
            continue
        table = data[section]
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        bad = set(table) - keys
        if bad:
            raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(sorted(bad))}")
        changes[section] = _section(section, getattr(settings, section), table)
    return replace(settings, **changes)


def _backends_from(items: Any) -> tuple[BackendSpec, ...]:
    if not isinstance(items, list):
        raise ConfigError("[[backend]] must be an array of tables")
    backends = []
    for item in items:
        if isinstance(item, str):
            backends.append(parse_backend(item))
            continue
        if not isinstance(item, dict) or "address" not in item:
            raise ConfigError("each [[backend]] needs an address")
        bad = set(item) - {"address", "weight", "name"}
        if bad:
            raise ConfigError(f"unknown key(s) in [[backend]]: {', '.join(sorted(bad))}")
        host, port = parse_hostport(str(item["address"]), None, DEFAULT_BACKEND_PORT)
        weight = _int_in(item.get("weight", 1), 0, 1000, "weight")
        backends.append(BackendSpec(host, port, weight, str(item.get("name", ""))))
    return tuple(backends)


def _section(section: str, current: Any, table: dict[str, Any]) -> Any:
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key == "path":
            changes[key] = _check_path(value)
        elif isinstance(getattr(current, key), float):
            changes[key] = _seconds(value, f"{section}.{key}")
        else:
            changes[key] = _int_in(value, 0 if key == "retries" else 1, 10**7, f"{section}.{key}")
    return replace(current, **changes)


def _check_path(value: Any) -> str:
    path = str(value)
    if path and (not path.startswith("/") or any(c in path for c in " \r\n\t")):
        raise ConfigError(f"health check path must start with / and hold no spaces: {path!r}")
    return path


def validate(settings: Settings) -> Settings:
    """Check what only makes sense once every source has been merged."""
    if not settings.backends:
        raise ConfigError("no backend given")
    if all(b.weight == 0 for b in settings.backends):
        raise ConfigError("every backend has weight 0")
    if settings.stats_port and settings.stats_port == settings.listen_port:
        raise ConfigError("the stats port must differ from the listen port")
    if settings.debug_header and not settings.debug_header.replace("-", "").isalnum():
        raise ConfigError(f"invalid header name {settings.debug_header!r}")
    return settings
