"""The faults of ``make chaos``, one method each, and the repair that follows any of them.

Kept apart from the ledger and the verdict because each injection is a small script of
its own against the running stack (kill -9 of a web node or a service instance, a MariaDB
stop and start, a SIGSTOP past the lease with a probe of the frozen instance's late
write), and every one must leave all processes running for the next scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from session_service.client import SessionClient
from session_service.errors import LockLost
from stack.runner import Stack
from stack.ui import Output
from tests.mariadb_instance import MariaDBInstance

SCENARIOS = {
    "node": "kill -9 of PHP web node web2",
    "service": "kill -9 of service instance 1",
    "db": "MariaDB stop and start",
    "freeze": "service instance 1 frozen (SIGSTOP) past the lease",
}


@dataclass
class Fault:
    """When the fault began and ended (monotonic), and what else was checked."""

    start: float = 0.0
    end: float = 0.0
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


class Faults:
    """The injections into one running stack; each records when its fault began and ended."""

    def __init__(self, args: argparse.Namespace, stack: Stack, db: MariaDBInstance, out: Output):
        self.args = args
        self.stack = stack
        self.db = db
        self.out = out

    def injection(self, name: str) -> Callable[[Fault], None]:
        """The injection of scenario `name` (a key of SCENARIOS)."""
        return {
            "node": self.kill_node,
            "service": self.kill_service,
            "db": self.restart_db,
            "freeze": self.freeze_service,
        }[name]

    def kill_node(self, fault: Fault) -> None:
        node = self.stack.node("web2")
        fault.start = time.monotonic()
        node.proc.kill()
        self.out.step("kill -9 web2 (php -S and its workers)")
        time.sleep(self.args.fault)
        self.stack.start_node("web2")
        fault.end = time.monotonic()
        self.out.step(f"web2 answers again after {fault.end - fault.start:.1f} s")

    def kill_service(self, fault: Fault) -> None:
        fault.start = time.monotonic()
        self.stack.services[0].kill()
        self.out.step(f"kill -9 service instance 1 ({self.stack.service_urls[0]})")
        time.sleep(self.args.fault)
        self.stack.start_service(0)
        fault.end = time.monotonic()
        self.out.step(f"service instance 1 ready again after {fault.end - fault.start:.1f} s")

    def restart_db(self, fault: Fault) -> None:
        fault.start = time.monotonic()
        self.db.stop()
        self.out.step(f"MariaDB stopped in {time.monotonic() - fault.start:.1f} s")
        time.sleep(self.args.fault)
        self.db.start()
        fault.end = time.monotonic()
        self.out.step(f"MariaDB accepts connections again after {fault.end - fault.start:.1f} s")

    def freeze_service(self, fault: Fault) -> None:
        """SIGSTOP instance 1 past the lease, with a probe of its late write."""
        lease = self.args.lease_ms
        token = self.stack.config.token
        url_a, url_b = self.stack.service_urls[0], self.stack.service_urls[1]
        sid = secrets.token_hex(16)
        frozen = self.stack.services[0]
        late: dict[str, str] = {}
        with (
            SessionClient(url_a, token, timeout=self.args.freeze + 30) as a,
            SessionClient(url_b, token, timeout=30) as b,
        ):
            first = b.lock(sid, wait_ms=2000, lease_ms=lease)
            b.write(sid, b"n|i:100;", 600, lock=first.lock)
            held = a.lock(sid, wait_ms=2000, lease_ms=lease)  # instance 1 holds the lease
            fault.start = time.monotonic()
            frozen.signal(signal.SIGSTOP)
            self.out.step(f"SIGSTOP service instance 1 ({url_a}) for {self.args.freeze:.0f} s")

            def late_write() -> None:  # sent now, served when instance 1 resumes
                try:
                    a.write(sid, b"n|i:101;", 600, lock=held.lock)
                    late["result"] = "applied"
                except LockLost as exc:
                    late["result"] = f"refused: 409 lock_lost ({exc})"
                except Exception as exc:
                    late["result"] = f"failed: {exc!r}"

            writer = threading.Thread(target=late_write, daemon=True)
            writer.start()
            # Instance 2 takes the lock over once the lease has run out and writes newer data.
            took = b.lock(sid, wait_ms=lease + 5000, lease_ms=lease)
            taken_after = time.monotonic() - fault.start
            b.write(sid, b"n|i:101;", 600, lock=took.lock)
            again = b.lock(sid, wait_ms=2000, lease_ms=lease)
            b.write(sid, b"n|i:102;", 600, lock=again.lock)
            time.sleep(max(0.0, fault.start + self.args.freeze - time.monotonic()))
            frozen.signal(signal.SIGCONT)
            fault.end = time.monotonic()
            self.out.step(f"SIGCONT service instance 1 after {fault.end - fault.start:.1f} s")
            writer.join(30)
            record = b.read(sid)
        stored = record.data if record else None
        fault.notes.append(
            f"fencing probe: lock through instance 1 (lease {lease} ms), instance 1 frozen, "
            f"its write sent while frozen; instance 2 took the lock over after "
            f"{taken_after:.1f} s and stored n=101 then n=102; instance 1 resumed and its late "
            f"write was {late.get('result', 'never answered')}; stored: "
            f"{stored.decode() if stored else None!r}"
        )
        if not late.get("result", "").startswith("refused"):
            fault.violations.append(
                f"the frozen instance's late write was not refused: {late.get('result')}"
            )
        if stored != b"n|i:102;":
            fault.violations.append(f"after the late write the store holds {stored!r}, not n=102")

    def ensure_all_up(self) -> None:
        """Whatever happened in an injection, leave every process running for the next."""
        with contextlib.suppress(Exception):
            self.stack.services[0].signal(signal.SIGCONT)
        if self.db.proc is None:
            self.db.start()
        for i, service in enumerate(self.stack.services):
            if not service.running:
                self.stack.start_service(i)
        for node in self.stack.nodes:
            if not node.proc.running:
                self.stack.start_node(node.name)
