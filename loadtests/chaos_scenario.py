"""One scenario of ``make chaos``: fresh users under load, a fault, the watch for recovery,
and the verdict (a Row of the table).

Kept apart from the ledger (chaos_ledger.py) and the injections (chaos_faults.py) because
it is the one place that turns both into the verdict: requests failed before the fault,
wrong answers, lost or duplicated increments (the ledger settled against the stored
counters), recovery later than ``--max-recovery`` seconds and PHP fatal errors.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from dataclasses import dataclass

from loadtests.chaos_faults import SCENARIOS, Fault, Faults
from loadtests.chaos_ledger import Load
from session_service.client import SessionClient
from stack.runner import Stack
from stack.ui import Output
from tests.mariadb_instance import MariaDBInstance

COUNTER = re.compile(rb"^n\|i:(\d+);$")


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
    """Runs the scenarios, one at a time, on one running stack."""

    def __init__(self, args: argparse.Namespace, stack: Stack, db: MariaDBInstance, out: Output):
        self.args = args
        self.stack = stack
        self.db = db
        self.out = out
        self.faults = Faults(args, stack, db, out)

    def run(self, name: str) -> Row:
        self.out.note(f"\n== {name}: {SCENARIOS[name]}")
        self.stack.php_problems()  # judge this scenario's log lines only
        load = Load(self.stack.url, self.args.users, self.args.think, self.args.timeout)
        load.start()
        fault = Fault()
        try:
            time.sleep(self.args.warmup)
            try:
                self.faults.injection(name)(fault)
            except Exception as exc:
                fault.violations.append(f"the injection itself failed: {exc!r}")
            finally:
                self.faults.ensure_all_up()
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
