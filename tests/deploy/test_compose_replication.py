"""docker/compose.yaml's primary and replica, run here without Docker: lock-free reads
reach the replica through the user that docker/mariadb/initdb/ creates.

Two private MariaDB servers (tests.mariadb_instance) get the compose file's own command
lines. What the official image's entrypoint does on first start is done by hand, as its
entrypoint does it (the database, the user and the replication user on the primary;
CHANGE MASTER without MASTER_USE_GTID and START REPLICA on the replica); then our init
script runs on the primary, replication brings its user to the replica, and a session
service started with the compose file's environment (only the host names replaced by
loopback ports) serves lock-free GETs from the replica, with the lag check working.
The local server is Debian's MariaDB 10.11; the compose file uses 11.4.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pytest
import yaml

from tests.mariadb_instance import MariaDBInstance
from tests.replication_support import install
from tests.support import ROOT, ServiceProcess, session_id, wait_until

DOCKER = ROOT / "docker"
INITDB = DOCKER / "mariadb" / "initdb" / "10-session-reader.sh"
SUBST = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def compose_services() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data["services"]  # type: ignore[no-any-return]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment with ${VAR:-default} resolved to its default."""
    return {
        k: SUBST.sub(lambda m: m.group(2) or "", str(v)) for k, v in service["environment"].items()
    }


def run_sql(server: MariaDBInstance, *statements: str) -> None:
    with server.connect() as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def replica_status(server: MariaDBInstance) -> dict[str, Any]:
    with server.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SHOW REPLICA STATUS")
        return dict(cur.fetchone() or {})


def metric(service: ServiceProcess, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(service.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[MariaDBInstance, MariaDBInstance]]:
    """The compose file's primary and replica, each with the command line compose gives it."""
    found = compose_services()
    made = []
    for name, server_id in (("mariadb-primary", 1), ("mariadb-replica", 2)):
        command = found[name]["command"]
        assert f"--server-id={server_id}" in command
        args = [a for a in command if not a.startswith("--server-id=")]
        made.append(MariaDBInstance(tmp_path / name, server_id=server_id, extra_args=args))
    try:
        for server in made:
            install(server).start()
        yield made[0], made[1]
    finally:
        for server in made:
            server.destroy()


def test_lock_free_reads_go_to_the_replica_as_compose_sets_it_up(
    servers: tuple[MariaDBInstance, MariaDBInstance], tmp_path: Path
) -> None:
    primary, replica = servers
    found = compose_services()
    p_env, r_env = env_of(found["mariadb-primary"]), env_of(found["mariadb-replica"])
    database, user = p_env["MARIADB_DATABASE"], p_env["MARIADB_USER"]
    # what the image's entrypoint does on the primary (docker_setup_db), binary log on
    run_sql(
        primary,
        f"CREATE DATABASE `{database}`",
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{p_env['MARIADB_PASSWORD']}'",
        f"GRANT ALL ON `{database}`.* TO '{user}'@'%'",
        f"CREATE USER '{p_env['MARIADB_REPLICATION_USER']}'@'%' "
        f"IDENTIFIED BY '{p_env['MARIADB_REPLICATION_PASSWORD']}'",
        f"GRANT REPLICATION REPLICA ON *.* TO '{p_env['MARIADB_REPLICATION_USER']}'@'%'",
    )
    # then it sources the init scripts: ours, with the primary's environment
    client = shutil.which("mariadb") or shutil.which("mysql")
    assert client, "the mariadb client is missing (apt-get install mariadb-client)"
    shim = (
        f'docker_process_sql() {{ "{client}" --protocol=tcp -h127.0.0.1 -P{primary.port} '
        '-uroot "$@"; }; . "$0"'
    )
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", shim, str(INITDB)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **p_env}, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    # on the replica, the image runs CHANGE MASTER with no MASTER_USE_GTID: since MariaDB
    # 10.10 that means slave_pos, which the service's GTID waits need
    assert r_env["MARIADB_MASTER_HOST"] == "mariadb-primary"
    run_sql(
        replica,
        f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
        f"MASTER_USER='{r_env['MARIADB_REPLICATION_USER']}', "
        f"MASTER_PASSWORD='{r_env['MARIADB_REPLICATION_PASSWORD']}', MASTER_CONNECT_RETRY=1",
        "START REPLICA",
    )
    reader = p_env["SESSION_DB_READER_USER"]

    def reader_replicated() -> bool:
        with replica.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM mysql.user WHERE user = %s", (reader,))
            return bool(cur.fetchone()[0])  # type: ignore[index]

    assert wait_until(reader_replicated, 30, 0.2), replica_status(replica)
    assert replica_status(replica)["Using_Gtid"] == "Slave_Pos"

    # a service with the compose file's environment, the host names made loopback ports
    def local(value: str) -> str:
        return value.replace("@mariadb-primary:3306/", f"@127.0.0.1:{primary.port}/").replace(
            "@mariadb-replica:3306/", f"@127.0.0.1:{replica.port}/"
        )

    s_env = {k: local(v) for k, v in env_of(found["service1"]).items()}
    own = (
        "SESSION_DB_URL",
        "SESSION_SERVICE_HOST",
        "SESSION_SERVICE_PORT",
        "SESSION_SERVICE_TOKENS",
    )
    service = ServiceProcess(
        db_url=s_env["SESSION_DB_URL"],
        env={k: v for k, v in s_env.items() if k not in own},
        log_path=tmp_path / "service.log",
    )
    replica_label = f"127.0.0.1:{replica.port}"
    try:
        service.start()
        assert wait_until(
            lambda: metric(service, "session_replica_healthy", replica=replica_label) == 1, 30
        ), (tmp_path / "service.log").read_text()[-3000:]
        sid = session_id()
        with httpx.Client(
            base_url=service.url, headers={"Authorization": "Bearer secret"}, timeout=10
        ) as http:
            for i in range(10):
                data = base64.b64encode(f"v{i}".encode()).decode()
                put = http.put(f"/v1/sessions/{sid}", json={"data": data, "ttl": 600})
                assert put.status_code == 200, put.text
                got = http.get(f"/v1/sessions/{sid}")  # read-your-writes, on the replica
                assert got.status_code == 200 and got.json()["data"] == data
        served = metric(service, "session_db_reads_total", db=replica_label)
        assert served >= 5, f"only {served} of 10 lock-free reads reached the replica"
        assert metric(service, "session_replica_fallbacks_total", reason="error") == 0
    finally:
        service.stop()
