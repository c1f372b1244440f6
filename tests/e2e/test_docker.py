"""docker/: what can be checked without a container engine (none runs on our machines).

The compose file parses; every file it and the Dockerfiles reference exists; every
environment variable set is one the component reads, with a value its own settings code
accepts (the service's Settings, the PHP handler's constructor, the balancer's command
line); published ports do not collide; paths agree across the Dockerfiles, php.ini, the
FPM pool and nginx.conf.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from balancer.cli import build_parser, settings_from_args
from session_service.settings import Settings, parse_tokens
from stack.runner import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"

#: Variables the official mariadb image reads (https://mariadb.com/kb/en/mariadb-server-docker-official-image-environment-variables/)
MARIADB_VARIABLES = {
    "MARIADB_ROOT_PASSWORD", "MARIADB_ROOT_PASSWORD_HASH", "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD",
    "MARIADB_RANDOM_ROOT_PASSWORD", "MARIADB_ROOT_HOST", "MARIADB_DATABASE", "MARIADB_USER",
    "MARIADB_PASSWORD", "MARIADB_PASSWORD_HASH", "MARIADB_MYSQL_LOCALHOST_USER",
    "MARIADB_MYSQL_LOCALHOST_GRANTS", "MARIADB_HEALTHCHECK_GRANTS", "MARIADB_INITDB_SKIP_TZINFO",
    "MARIADB_AUTO_UPGRADE", "MARIADB_DISABLE_UPGRADE_BACKUP", "MARIADB_MASTER_HOST",
    "MARIADB_MASTER_PORT", "MARIADB_REPLICATION_USER", "MARIADB_REPLICATION_PASSWORD",
    "MARIADB_REPLICATION_PASSWORD_HASH",
}  # fmt: skip

SUBST = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def resolve(value: object) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment: the default."""
    return SUBST.sub(lambda m: m.group(2) or "", str(value))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services(compose: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in compose["services"].items() if k.startswith(prefix)}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: resolve(v) for k, v in env.items()}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip():
                logical.append(current.strip())
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in logical]


def test_compose_has_the_whole_deployment(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "mariadb-primary", "mariadb-replica", "service1", "service2",
        "web1", "web2", "web3", "balancer", "locust",
    }  # fmt: skip
    primary, replica = (
        compose["services"]["mariadb-primary"],
        compose["services"]["mariadb-replica"],
    )
    assert "--log-bin" in primary["command"]
    ids = {c for c in primary["command"] + replica["command"] if c.startswith("--server-id=")}
    assert ids == {"--server-id=1", "--server-id=2"}
    p_env, r_env = env_of(primary), env_of(replica)
    assert r_env["MARIADB_MASTER_HOST"] == "mariadb-primary"
    for key in ("MARIADB_REPLICATION_USER", "MARIADB_REPLICATION_PASSWORD"):
        assert p_env[key] == r_env[key]
    for name in ("service1", "service2"):
        url = env_of(compose["services"][name])["SESSION_DB_URL"]
        assert "@mariadb-primary:3306/" in url
        assert f"mysql+pymysql://{p_env['MARIADB_USER']}:{p_env['MARIADB_PASSWORD']}@" in url
    assert compose["services"]["locust"]["profiles"] == ["load"]


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in compose["services"].items():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            dockerfile = context / service["build"]["dockerfile"]
            assert dockerfile.is_file(), (name, dockerfile)
            for instruction, args in dockerfile_instructions(dockerfile):
                if instruction in ("COPY", "ADD"):
                    *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
                    for source in sources:
                        assert (context / source).exists(), (dockerfile.name, source)
                        checked += 1
        else:
            assert "image" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).resolve().exists(), (name, volume)
                checked += 1
            else:
                assert source in compose["volumes"], (name, volume)
    assert checked >= 10


def test_service_environment_is_accepted_by_settings(compose: dict[str, Any]) -> None:
    field_of = {
        ("SESSION_DB_URL" if f == "db_url" else f"SESSION_SERVICE_{f.upper()}"): f
        for f in Settings.model_fields
    }
    dockerfile_env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions(DOCKER / "service.Dockerfile"):
        if instruction == "ENV":
            dockerfile_env.update(dict(kv.split("=", 1) for kv in shlex.split(args)))
    for name, service in services(compose, "service").items():
        env = {**dockerfile_env, **env_of(service)}
        unknown = set(env) - set(field_of)
        assert not unknown, (name, unknown)
        values: dict[str, Any] = {field_of[k]: v for k, v in env.items()}
        settings = Settings(**values)  # validates (and converts) every value
        assert parse_tokens(settings.tokens)
        assert settings.host == "0.0.0.0" and settings.port == 7070


def php_handler_env_names() -> set[str]:
    code = 'require "php_handler/autoload.php"; echo json_encode(SessionService\\Handler::OPTIONS);'
    out = subprocess.run(["php", "-r", code], cwd=REPO, capture_output=True, text=True, check=True)
    return {env for env, _default in json.loads(out.stdout).values()}


def test_web_node_environment_is_accepted_by_the_handler(compose: dict[str, Any]) -> None:
    known = php_handler_env_names() | {"NODE_NAME"}
    service_names = set(services(compose, "service"))
    for name, service in services(compose, "web").items():
        env = env_of(service)
        assert env["NODE_NAME"] == name
        assert not set(env) - known, (name, set(env) - known)
        hosts = {
            re.sub(r"^http://([^:/]+):7070$", r"\1", u)
            for u in env["SESSION_SERVICE_URL"].split(",")
        }
        assert hosts == service_names, env["SESSION_SERVICE_URL"]
        tokens = parse_tokens(env_of(compose["services"]["service1"])["SESSION_SERVICE_TOKENS"])
        assert tokens.get(env["SESSION_SERVICE_TOKEN"]) == "default"
        # the handler's own constructor validates every value it reads from the environment
        code = 'require "php_handler/autoload.php"; new SessionService\\Handler(); echo "ok";'
        r = subprocess.run(
            ["php", "-d", "error_reporting=-1", "-d", "display_errors=stderr", "-r", code],
            cwd=REPO, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env},
        )  # fmt: skip
        assert (r.returncode, r.stdout, r.stderr) == (0, "ok", ""), name


def test_balancer_command_is_accepted_and_ports_do_not_collide(compose: dict[str, Any]) -> None:
    balancer = compose["services"]["balancer"]
    entrypoint = []
    for instruction, args in dockerfile_instructions(DOCKER / "balancer.Dockerfile"):
        if instruction == "ENTRYPOINT":
            entrypoint = json.loads(args)
    assert entrypoint[0] == "session-balancer"
    settings = settings_from_args(build_parser().parse_args(entrypoint[1:] + balancer["command"]))
    assert {b.host for b in settings.backends} == set(services(compose, "web"))
    assert {b.port for b in settings.backends} == {80}  # nginx listens on 80
    published: dict[int, str] = {}
    for name, service in compose["services"].items():
        for spec in service.get("ports", []):
            *_, host, container = str(spec).split(":")
            assert int(host) not in published, (name, spec, published)
            published[int(host)] = name
            if name == "balancer":
                assert int(container) in (settings.listen_port, settings.stats_port)
    assert set(published.values()) == {"balancer"}
    assert settings.listen_port != settings.stats_port


def test_locust_and_mariadb_environment_are_known(compose: dict[str, Any]) -> None:
    locustfile = (REPO / "loadtests" / "locustfile.py").read_text()
    for key in env_of(compose["services"]["locust"]):
        assert f'"{key}"' in locustfile, key
    for name, service in services(compose, "mariadb").items():
        assert not set(env_of(service)) - MARIADB_VARIABLES, name


def test_web_node_paths_agree() -> None:
    copies = {}
    for instruction, args in dockerfile_instructions(DOCKER / "web.Dockerfile"):
        if instruction == "COPY":
            source, dest = shlex.split(args)
            copies[source] = dest
    ini = (DOCKER / "web" / "session-service.ini").read_text()
    prepend = re.search(r"^auto_prepend_file\s*=\s*(\S+)", ini, re.M)
    assert prepend and prepend.group(1) == copies["php_handler"] + "/prepend.php"
    nginx = (DOCKER / "web" / "nginx.conf").read_text()
    assert f"root {copies['examples']};" in nginx
    pool = (DOCKER / "web" / "fpm-pool.conf").read_text()
    socket = re.search(r"^listen\s*=\s*(\S+)", pool, re.M)
    assert socket and f"fastcgi_pass unix:{socket.group(1)};" in nginx
    assert re.search(r"^clear_env\s*=\s*no", pool, re.M)  # SESSION_SERVICE_* reach PHP
    assert "listen 80 " in nginx
    # the ini file parses, and PHP reads the values from it
    r = subprocess.run(
        ["php", "-n", "-c", str(DOCKER / "web" / "session-service.ini"), "-r",
         'echo ini_get("auto_prepend_file"), " ", ini_get("session.use_strict_mode");'],
        capture_output=True, text=True,
    )  # fmt: skip
    assert (r.stdout, r.stderr) == (f"{prepend.group(1)} 1", "")
