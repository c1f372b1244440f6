"""A private MariaDB server for tests that stop, restart or replicate a database.

The shared server on 127.0.0.1:3306 is used by every other test; a test that
kills its database gets its own: its own datadir, port and socket under a
temporary directory, created with mariadb-install-db and torn down afterwards.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from stack.processes import Process, free_port

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


@dataclass
class MariaDBInstance:
    base: Path
    port: int = field(default_factory=free_port)
    server_id: int = 1
    extra_args: list[str] = field(default_factory=list)
    proc: Process | None = None

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"

    def install(self) -> MariaDBInstance:
        self.base.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                "--auth-root-authentication-method=normal", "--skip-test-db",
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        return self

    def start(self, timeout: float = 30) -> MariaDBInstance:
        cmd = [
            MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
            f"--socket={self.socket}", "--bind-address=127.0.0.1", "--user=root",
            f"--pid-file={self.base / 'mysqld.pid'}", f"--server-id={self.server_id}",
            "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M", *self.extra_args,
        ]  # fmt: skip
        self.proc = Process(f"mariadbd on port {self.port}", cmd, self.base / "mariadbd.log")
        self.proc.start()
        self.proc.wait_for(self.accepts, "connection accepted", timeout)
        return self

    def accepts(self) -> bool:
        try:
            self.connect().close()
        except pymysql.MySQLError:
            return False
        return True

    def connect(self, database: str | None = None) -> pymysql.Connection:
        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", database=database,
            autocommit=True, connect_timeout=2,
        )  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is not None:
            self.proc.stop(timeout, sig)
        self.proc = None

    def destroy(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)
