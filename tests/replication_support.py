"""Private MariaDB topologies for tests: a GTID primary with a replica, a Galera cluster.

Every server is a tests.mariadb_instance.MariaDBInstance (own datadir, port and
socket under a temporary directory), so the shared server on 3306 is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from stack.processes import free_ports
from tests.mariadb_instance import MariaDBInstance
from tests.support import wait_until

DATABASE = "sessions_test"
GALERA_PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
Row = tuple[object, ...]
GALERA_INSTALL = "apt-get install -y galera-4 rsync"


def query(
    instance: MariaDBInstance, sql: str, database: str | None = None
) -> list[tuple[object, ...]]:
    with instance.connect(database) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def install(server: MariaDBInstance) -> MariaDBInstance:
    """mariadb-install-db, once more after a failure (seen once on a loaded machine),
    and with its own error output in the exception."""
    for attempt in range(2):
        try:
            return server.install()
        except subprocess.CalledProcessError as error:
            shutil.rmtree(server.datadir, ignore_errors=True)
            if attempt:
                stderr = (error.stderr or b"").decode(errors="replace")[-2000:]
                raise RuntimeError(f"mariadb-install-db failed: {stderr}") from error
    raise AssertionError("unreachable")


def _install_and_start(server: MariaDBInstance) -> MariaDBInstance:
    return install(server).start()


@dataclass
class Replication:
    """A GTID primary and one replica; the replica logs every client statement."""

    base: Path
    primary: MariaDBInstance = field(init=False)
    replica: MariaDBInstance = field(init=False)

    def __post_init__(self) -> None:
        ports = free_ports(2)
        self.primary = MariaDBInstance(
            self.base / "primary",
            port=ports[0],
            server_id=1,
            extra_args=[
                f"--log-bin={self.base / 'primary' / 'binlog'}",
                "--binlog-format=ROW",
                "--gtid-strict-mode=ON",
            ],
        )
        self.replica = MariaDBInstance(
            self.base / "replica",
            port=ports[1],
            server_id=2,
            extra_args=[
                f"--relay-log={self.base / 'replica' / 'relay'}",
                "--gtid-strict-mode=ON",
                "--general-log=ON",
                f"--general-log-file={self.general_log}",
            ],
        )

    @property
    def servers(self) -> list[MariaDBInstance]:
        return [self.primary, self.replica]

    @property
    def general_log(self) -> Path:
        return self.base / "replica" / "general.log"

    def start(self) -> Replication:
        with ThreadPoolExecutor(2) as pool:  # install and start both servers at once
            for done in [pool.submit(_install_and_start, server) for server in self.servers]:
                done.result()
        query(
            self.replica,
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={self.primary.port}, "
            "MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, "
            "MASTER_CONNECT_RETRY=1",
        )
        query(self.replica, "START SLAVE")
        query(self.primary, f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4")
        if not wait_until(self.replica_has_database, 20):
            raise RuntimeError(f"replication did not start: {self.replica_status()}")
        return self

    def replica_has_database(self) -> bool:
        return bool(query(self.replica, f"SHOW DATABASES LIKE '{DATABASE}'"))

    def replica_status(self) -> dict[str, object]:
        with self.replica.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
        return dict(row or {})

    def wait_caught_up(self, timeout: float = 20) -> None:
        position = query(self.primary, "SELECT @@gtid_binlog_pos")[0][0]
        done = query(self.replica, f"SELECT MASTER_GTID_WAIT('{position}', {timeout})")[0][0]
        if done != 0:
            raise RuntimeError(f"replica did not reach {position}: {self.replica_status()}")

    def primary_url(self) -> str:
        return self.primary.url(DATABASE)

    def replica_url(self) -> str:
        return self.replica.url(DATABASE)

    def replica_statements(self) -> list[str]:
        """Client statements the replica has run that touch the sessions table."""
        text = self.general_log.read_text(errors="replace")
        return [line for line in text.splitlines() if "sessions" in line and "Query" in line]

    def destroy(self) -> None:
        self.replica.destroy()
        self.primary.destroy()


@dataclass
class GaleraCluster:
    """Three Galera nodes on loopback: node 1 bootstraps, nodes 2 and 3 join by rsync SST."""

    base: Path
    size: int = 3
    nodes: list[MariaDBInstance] = field(default_factory=list)
    gcomm_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not GALERA_PROVIDER.exists() or shutil.which("rsync") is None:
            raise RuntimeError(f"Galera needs galera-4 and rsync: run `{GALERA_INSTALL}`")
        ports = free_ports(4 * self.size)
        self.gcomm_ports = ports[: self.size]
        cluster = ",".join(f"127.0.0.1:{p}" for p in self.gcomm_ports)
        for index in range(self.size):
            gcomm = self.gcomm_ports[index]
            # Shorter failure detection, so that a killed node leaves the cluster within
            # a few seconds rather than the default fifteen (not shorter: on two busy
            # cores a live node would be suspected too).
            provider = ";".join(
                [
                    f"gmcast.listen_addr=tcp://127.0.0.1:{gcomm}",
                    f"ist.recv_addr=127.0.0.1:{ports[self.size + index]}",
                    "evs.keepalive_period=PT0.5S",
                    "evs.suspect_timeout=PT2S",
                    "evs.inactive_timeout=PT4S",
                    "evs.inactive_check_period=PT0.5S",
                    "evs.install_timeout=PT4S",
                    "gcache.size=16M",
                    "repl.causal_read_timeout=PT5S",
                ]
            )
            self.nodes.append(
                MariaDBInstance(
                    self.base / f"node{index + 1}",
                    port=ports[3 * self.size + index],
                    server_id=index + 1,
                    extra_args=[
                        "--wsrep-on=ON",
                        f"--wsrep-provider={GALERA_PROVIDER}",
                        f"--wsrep-cluster-address=gcomm://{cluster}",
                        "--wsrep-cluster-name=session_test",
                        f"--wsrep-node-name=node{index + 1}",
                        f"--wsrep-node-address=127.0.0.1:{gcomm}",
                        f"--wsrep-provider-options={provider}",
                        "--wsrep-sst-method=rsync",
                        f"--wsrep-sst-receive-address=127.0.0.1:{ports[2 * self.size + index]}",
                        "--binlog-format=ROW",
                        "--innodb-autoinc-lock-mode=2",
                        "--wsrep-slave-threads=2",
                        # Conflicts reach the client (1213) instead of being retried once
                        # inside the server, so the tests exercise the store's own retry.
                        "--wsrep-retry-autocommit=0",
                    ],
                )
            )

    def start(self) -> GaleraCluster:
        """Bootstrap node 1, then give nodes 2 and 3 a copy of its stopped datadir.

        The copies carry node 1's cluster state (grastate.dat), so the joiners need no
        state transfer at all: seconds instead of an rsync SST of about six seconds each.
        """
        first, *others = self.nodes
        install(first)
        first.extra_args.append("--wsrep-new-cluster")
        first.start()
        query(first, f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4")
        first.stop()
        for node in others:
            node.base.mkdir(parents=True, exist_ok=True)
            shutil.copytree(first.datadir, node.datadir, symlinks=True)
        first.start()
        # The joiners still ask for an incremental transfer of the bootstrap's own events,
        # which the rsync script acknowledges through an rsync daemon; run by root, that
        # daemon is `nobody`, so the joiner's datadir (and the path to it) must let it in.
        self.base.chmod(0o755)
        for node in others:
            node.base.chmod(0o755)
            node.datadir.chmod(0o755)
            if os.geteuid() == 0:
                shutil.chown(node.datadir, "nobody")
        for node in others:  # one at a time: joining together is slower on two cores
            node.start(timeout=60)
        if not wait_until(lambda: self.cluster_size(first) == self.size, 30):
            raise RuntimeError(f"cluster has {self.cluster_size(first)} nodes, not {self.size}")
        return self

    @staticmethod
    def cluster_size(node: MariaDBInstance) -> int:
        try:
            row = query(node, "SHOW STATUS LIKE 'wsrep_cluster_size'")
        except pymysql.MySQLError:
            return 0
        return int(str(row[0][1])) if row else 0

    def url(self, first: int = 0) -> str:
        """All nodes' URLs, comma-separated, starting with node `first`."""
        order = self.nodes[first:] + self.nodes[:first]
        return ",".join(node.url(DATABASE) for node in order)

    def kill(self, index: int) -> None:
        self.nodes[index].stop(signal.SIGKILL)

    def destroy(self) -> None:
        for node in reversed(self.nodes):
            node.stop(signal.SIGKILL)
        time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)
