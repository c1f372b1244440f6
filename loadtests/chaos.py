"""``make chaos``: fault runs under load, with a ledger of every acknowledged increment.

    python -m loadtests.chaos                          # the four scenarios, about 2 minutes
    python -m loadtests.chaos --scenarios node,freeze --users 4 --observe 4

The stack is the demo's (stack/runner.py) on a private MariaDB server (its own datadir,
port and socket, started here with tests/mariadb_instance.py, so it can be stopped
safely): two session service instances, three PHP web nodes whose handler is given both
URLs (each node in another order), and the balancer in front. Simulated users, each with
its own session, POST ``examples/chaos.php`` through the balancer in a loop: one locked
read-modify-write increment of ``$_SESSION['n']`` per request, answered with the new value
only once ``session_write_close()`` succeeded.

Scenarios, one at a time, each with fresh users: ``node`` (kill -9 of a PHP web node, back
after ``--fault`` seconds), ``service`` (kill -9 of a service instance, back after
``--fault`` seconds), ``db`` (MariaDB stopped, started again after ``--fault`` seconds) and
``freeze`` (a service instance stopped with SIGSTOP for ``--freeze`` seconds, longer than
the handler's lease, then SIGCONT; a probe holds a lock through it, sends its write to it
while it is frozen, lets another instance take the lock over and write newer data, and
checks that the frozen instance's late write is refused with 409 lock_lost and not
applied).

The ledger, per user: every 200 answer is an acknowledged increment with its value N; a
failed request is a clear error (HTTP 5xx or a transport error), either *refused*
(``session_start()`` failed: nothing was changed) or *unknown* (it may or may not have
been applied: the write failed, the node died mid-request, ...). A 200 must show a value in
[last + 1, last + 1 + unknown since], and at the end the store (read straight from the
service) must hold a value in [last acknowledged, last + unknown since]. Below: lost
updates; above: an increment applied twice (duplicate). A 200 naming another session is a
silently wrong session. Exit status 0 only when nothing was lost or duplicated, no answer
was wrong or unclear, nothing failed before a fault and every scenario recovered (every
user succeeding again) within ``--max-recovery`` (5) seconds of the fault ending.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from session_service.client import SessionClient
from session_service.errors import LockLost
from stack.demo import terminate_as_interrupt
from stack.runner import REPO, Stack, StackConfig, StackError
from stack.ui import Output
from tests.mariadb_instance import MariaDBInstance

ENDPOINT = "/chaos.php"
SCENARIOS = {
    "node": "kill -9 of PHP web node web2",
    "service": "kill -9 of service instance 1",
    "db": "MariaDB stop and start",
    "freeze": "service instance 1 frozen (SIGSTOP) past the lease",
}
COUNTER = re.compile(rb"^n\|i:(\d+);$")
DATABASE = "session_chaos"


# ---------------------------------------------------------------------- the ledger


@dataclass
class Result:
    """One request as the client saw it (times: time.monotonic())."""

    user: str
    t0: float
    t1: float
    kind: str  # ok | refused | unknown | wrong
    status: int  # HTTP status, 0 when there was no HTTP answer
    n: int | None = None
    detail: str = ""


@dataclass
class User:
    """A simulated user: its own session, sequential increments, its own ledger."""

    name: str
    http: httpx.Client
    sid: str = ""
    first: int = 0  # the counter after the setup request (not part of the scenario)
    last: int = 0  # the last acknowledged value
    unknown_since: int = 0  # failed requests that may have been applied since `last`
    lost: int = 0
    duplicates: int = 0
    results: list[Result] = field(default_factory=list)

    def post(self) -> tuple[int, dict[str, Any] | None, str]:
        self.http.cookies.clear()  # the user sends its own session id, whatever it is told
        headers = {"Cookie": f"PHPSESSID={self.sid}"} if self.sid else {}
        response = self.http.post(ENDPOINT, headers=headers)
        try:
            body = response.json()
        except ValueError:
            body = None
        text = response.text.strip().splitlines()[0][:120] if response.text.strip() else ""
        return response.status_code, body if isinstance(body, dict) else None, text

    def setup(self, deadline: float) -> None:
        """The session's first increment, before any fault: it must succeed."""
        last_error = ""
        while time.monotonic() < deadline:
            try:
                status, body, text = self.post()
            except httpx.HTTPError as exc:
                last_error = repr(exc)
                time.sleep(0.2)
                continue
            if status == 200 and body and isinstance(body.get("n"), int) and body.get("sid"):
                self.sid, self.first = str(body["sid"]), int(body["n"])
                self.last = self.first
                return
            last_error = f"HTTP {status} {text}"
            time.sleep(0.2)
        raise StackError(f"{self.name}: could not create its session: {last_error}")

    def step(self) -> Result:
        t0 = time.monotonic()
        try:
            status, body, text = self.post()
        except httpx.HTTPError as exc:
            result = Result(self.name, t0, time.monotonic(), "unknown", 0, None, type(exc).__name__)
            self.unknown_since += 1
            self.results.append(result)
            return result
        t1 = time.monotonic()
        if status == 200:
            result = self._acknowledged(t0, t1, body, text)
        elif status >= 500:
            if body and body.get("stage") == "start":
                # session_start() failed: the increment was never computed, let alone stored
                result = Result(self.name, t0, t1, "refused", status, None, f"{status} start")
            else:
                self.unknown_since += 1
                label = f"{status} write" if body and body.get("stage") == "write" else text
                result = Result(self.name, t0, t1, "unknown", status, None, label or str(status))
        else:
            # a 4xx (or anything else) is not the clear server error a fault may cause
            self.unknown_since += 1
            result = Result(self.name, t0, t1, "wrong", status, None, f"unclear {status} {text}")
        self.results.append(result)
        return result

    def _acknowledged(self, t0: float, t1: float, body: dict[str, Any] | None, text: str) -> Result:
        if not body or not isinstance(body.get("n"), int):
            self.unknown_since += 1
            return Result(self.name, t0, t1, "wrong", 200, None, f"200 without a value: {text}")
        n = int(body["n"])
        if body.get("sid") != self.sid:
            # another session answered: the increment did not go to this user's session
            self.unknown_since += 1
            return Result(self.name, t0, t1, "wrong", 200, n, f"200 from another session {n}")
        low, high = self.last + 1, self.last + 1 + self.unknown_since
        detail = ""
        if n < low:
            self.lost += low - n  # the increment was computed on stale data
            detail = f"stale: {n} < {low}"
        elif n > high:
            self.duplicates += n - high  # more increments applied than were ever sent
            detail = f"skipped: {n} > {high}"
        self.last, self.unknown_since = n, 0
        return Result(self.name, t0, t1, "ok", 200, n, detail)

    def settle(self, stored: int | None) -> int:
        """Compare the stored counter with the ledger; returns the increments found."""
        if stored is None:
            self.lost += self.last - self.first
            return 0
        if stored < self.last:
            self.lost += self.last - stored
        elif stored > self.last + self.unknown_since:
            self.duplicates += stored - self.last - self.unknown_since
        return stored - self.first

    def run(self, stop: threading.Event, think: float) -> None:
        while not stop.is_set():
            self.step()
            if think:
                stop.wait(think)


class Load:
    """Fresh users, each in its own thread, until stop()."""

    def __init__(self, url: str, users: int, think: float, timeout: float) -> None:
        self.users = [
            User(f"u{i + 1}", httpx.Client(base_url=url, timeout=timeout)) for i in range(users)
        ]
        self.think = think
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        deadline = time.monotonic() + 30
        for user in self.users:
            user.setup(deadline)
        for user in self.users:
            thread = threading.Thread(target=user.run, args=(self.stop_event, self.think))
            thread.daemon = True
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(60)
        for user in self.users:
            user.http.close()

    @property
    def results(self) -> list[Result]:
        return sorted((r for u in self.users for r in u.results), key=lambda r: r.t0)


# ---------------------------------------------------------------------- scenarios


@dataclass
class Fault:
    """When the fault began and ended (monotonic), and what else was checked."""

    start: float = 0.0
    end: float = 0.0
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


@dataclass
class Row:
    scenario: str
    fault: str
    fault_seconds: float
    requests: int
    failed: int
    refused: int
    unknown: int
    acknowledged: int
    stored: int
    lost: int
    duplicates: int
    #: from the fault's start until the last failed request ended (0: none failed)
    errors_seconds: float
    recovery_seconds: float | None
    errors: dict[str, int]
    violations: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


class Chaos:
    def __init__(self, args: argparse.Namespace, stack: Stack, db: MariaDBInstance, out: Output):
        self.args = args
        self.stack = stack
        self.db = db
        self.out = out

    # --------------------------------------------------------------- injections

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

    # --------------------------------------------------------------- one scenario

    def run(self, name: str) -> Row:
        inject: dict[str, Callable[[Fault], None]] = {
            "node": self.kill_node,
            "service": self.kill_service,
            "db": self.restart_db,
            "freeze": self.freeze_service,
        }
        self.out.note(f"\n== {name}: {SCENARIOS[name]}")
        self.stack.php_problems()  # judge this scenario's log lines only
        load = Load(self.stack.url, self.args.users, self.args.think, self.args.timeout)
        load.start()
        fault = Fault()
        try:
            time.sleep(self.args.warmup)
            try:
                inject[name](fault)
            except Exception as exc:
                fault.violations.append(f"the injection itself failed: {exc!r}")
            finally:
                self.ensure_all_up()
                fault.end = fault.end or time.monotonic()
                fault.start = fault.start or fault.end
            # watch until every user has succeeded again and --observe seconds have passed
            deadline = fault.end + self.args.observe
            hard_deadline = fault.end + self.args.max_recovery + self.args.observe + 10
            while time.monotonic() < hard_deadline and (
                time.monotonic() < deadline or not self.all_recovered(load, fault)
            ):
                time.sleep(0.2)
        finally:
            load.stop()
        time.sleep(0.5)  # a request a client gave up on may still land: let it
        return self.judge(name, load, fault)

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

    @staticmethod
    def recovered_at(load: Load, fault: Fault) -> float:
        failures = [r.t1 for r in load.results if r.kind != "ok" and r.t1 >= fault.start]
        return max([fault.end, *failures])

    def all_recovered(self, load: Load, fault: Fault) -> bool:
        since = self.recovered_at(load, fault)
        return all(any(r.kind == "ok" and r.t0 >= since for r in u.results) for u in load.users)

    def judge(self, name: str, load: Load, fault: Fault) -> Row:
        stored_total = 0
        with SessionClient(self.stack.service_urls[-1], self.stack.config.token) as client:
            for user in load.users:
                record = client.read(user.sid)
                match = COUNTER.match(record.data) if record else None
                stored_total += user.settle(int(match.group(1)) if match else None)
        results = load.results
        failed = [r for r in results if r.kind != "ok"]
        violations = list(fault.violations)
        before = [r for r in failed if r.t1 < fault.start]
        if before:
            violations.append(f"{len(before)} request(s) failed before the fault: {before[0]}")
        wrong = [r for r in results if r.kind == "wrong" or (r.kind == "ok" and r.detail)]
        violations += [f"{r.user}: {r.detail}" for r in wrong[:5]]
        lost = sum(u.lost for u in load.users)
        duplicates = sum(u.duplicates for u in load.users)
        if lost:
            violations.append(f"{lost} acknowledged increment(s) lost")
        if duplicates:
            violations.append(f"{duplicates} increment(s) applied twice")
        recovery: float | None = self.recovered_at(load, fault) - fault.end
        if not self.all_recovered(load, fault):
            violations.append("not every user succeeded again after the fault")
            recovery = None
        elif recovery is not None and recovery > self.args.max_recovery:
            violations.append(f"recovered {recovery:.1f} s after the fault ended (limit 5 s)")
        problems = self.stack.php_problems()
        notes = list(fault.notes)
        for source, lines in sorted(problems.items()):
            fatal = [line for line in lines if "Fatal error" in line or "Parse error" in line]
            if fatal:
                violations.append(f"{source}: {fatal[0]}")
            notes.append(f"{source} logged {len(lines)} line(s) during the fault, e.g. {lines[0]}")
        acked = sum(1 for r in results if r.kind == "ok")
        return Row(
            scenario=name,
            fault=SCENARIOS[name],
            fault_seconds=fault.end - fault.start,
            requests=len(results),
            failed=len(failed),
            refused=sum(1 for r in failed if r.kind == "refused"),
            unknown=sum(1 for r in failed if r.kind != "refused"),
            acknowledged=acked,
            stored=stored_total,
            lost=lost,
            duplicates=duplicates,
            errors_seconds=max([fault.start, *(r.t1 for r in failed)]) - fault.start,
            recovery_seconds=recovery,
            errors=dict(Counter(r.detail or r.kind for r in failed).most_common()),
            violations=violations,
            notes=notes,
        )


# ---------------------------------------------------------------------- output

HEADER = (
    "| scenario | fault lasted | requests | failed (refused / unknown) | acknowledged "
    "| found in store | lost | duplicates | errors seen for | recovery | verdict |"
)


def table(rows: list[Row]) -> list[str]:
    lines = [HEADER, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        recovery = "never" if r.recovery_seconds is None else f"{r.recovery_seconds:.1f} s"
        lines.append(
            f"| {r.fault} | {r.fault_seconds:.1f} s | {r.requests} | {r.failed} "
            f"({r.refused} / {r.unknown}) | {r.acknowledged} | {r.stored} | {r.lost} "
            f"| {r.duplicates} | {r.errors_seconds:.1f} s | {recovery} "
            f"| {'ok' if r.ok else 'FAIL'} |"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make chaos ARGS=...",
        description="Fault runs under load: kill a web node, kill a service instance, restart "
        "MariaDB, freeze a service instance; no acknowledged increment may be lost.",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, in order (default {','.join(SCENARIOS)})",
    )
    p.add_argument("--users", type=int, default=10, help="users per scenario (default 10)")
    p.add_argument("--think", type=float, default=0.02, help="pause between requests (0.02 s)")
    p.add_argument("--warmup", type=float, default=3, help="load before the fault (3 s)")
    p.add_argument("--fault", type=float, default=3, help="how long a killed process or the "
                   "database stays down (3 s)")  # fmt: skip
    p.add_argument("--freeze", type=float, default=6, help="SIGSTOP duration (6 s)")
    p.add_argument("--observe", type=float, default=6, help="load after the fault (6 s)")
    p.add_argument("--lease-ms", type=int, default=2000, help="the handler's lock lease (2000)")
    p.add_argument("--max-recovery", type=float, default=5, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=30, help="client timeout per request (30 s)")
    p.add_argument("--node-workers", type=int, default=4, help="php -S workers per node (4)")
    p.add_argument("--out", type=Path, default=REPO / "var" / "chaos", help="logs (var/chaos)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--plain", action="store_true", help="plain output even on a terminal")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    problem = ""
    if unknown or not names:
        problem = f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}"
    elif args.users < 1 or args.node_workers < 1 or args.lease_ms < 100:
        problem = "--users and --node-workers must be at least 1, --lease-ms at least 100"
    elif min(args.warmup, args.fault, args.observe, args.think) < 0 or args.timeout <= 0:
        problem = "times must not be negative"
    elif args.freeze * 1000 <= args.lease_ms and "freeze" in names:
        problem = "--freeze must be longer than the lease (--lease-ms)"
    if problem:
        print(f"make chaos: {problem}", file=sys.stderr)
        return 2
    out = Output(plain=True if args.plain else None)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[Row] = []
    with (
        terminate_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="mariadb-", dir=args.out) as base,
    ):
        db = MariaDBInstance(Path(base))
        stack: Stack | None = None
        try:
            out.step(f"private MariaDB server in {base}")
            db.install().start()
            with db.connect() as conn, conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4")
            config = StackConfig(
                db_url=db.url(DATABASE),
                services=2,
                nodes=3,
                node_workers=args.node_workers,
                workdir=args.out / "stack",
                node_env={"SESSION_SERVICE_LOCK_LEASE_MS": str(args.lease_ms)},
            )
            stack = Stack(config, progress=out.step)
            stack.start()
            chaos = Chaos(args, stack, db, out)
            for name in names:
                row = chaos.run(name)
                rows.append(row)
                for line in [*row.notes, *(f"FAIL {v}" for v in row.violations)]:
                    out.note(f"  {line}", style="" if not line.startswith("FAIL") else "red")
                if row.errors:
                    errors = ", ".join(f"{k} x{v}" for k, v in row.errors.items())
                    out.note(f"  failed requests: {errors}", style="")
        except (StackError, RuntimeError) as exc:
            out.fail(str(exc))
            return 2
        except KeyboardInterrupt:
            out.note("\ninterrupted")
            return 130
        finally:
            if stack is not None:
                stack.stop()
            db.destroy()
    out.note(
        f"\nFault runs under load ({args.users} users per scenario, 3 PHP nodes, 2 service "
        f"instances, MariaDB; {time.monotonic() - started:.0f} s in all)"
    )
    for line in table(rows):
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    failed = [r for r in rows if not r.ok]
    if failed:
        out.fail(f"{len(failed)} scenario(s) failed: {', '.join(r.scenario for r in failed)}")
        return 1
    out.ok("no acknowledged increment lost, none applied twice, every fault recovered within 5 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
