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

This module is the command line and the stack around the scenarios; the parts, one job
each: chaos_ledger.py (the users and their ledger), chaos_faults.py (the injections) and
chaos_scenario.py (one scenario's run and verdict).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from loadtests.chaos_faults import SCENARIOS
from loadtests.chaos_scenario import Chaos, Row
from stack.demo import terminate_as_interrupt
from stack.runner import REPO, Stack, StackConfig, StackError
from stack.ui import Output
from tests.mariadb_instance import MariaDBInstance

DATABASE = "session_chaos"


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
