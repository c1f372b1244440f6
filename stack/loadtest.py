"""``make loadtest``: the stack as in the demo, then locust headless through the balancer.

    python -m stack.loadtest                      # 60 s, 50 users, MariaDB when reachable
    python -m stack.loadtest --time 20 --users 20 --sqlite

Prints requests per second, p50/p95/p99, failures, how requests spread over the nodes and
a consistency verdict; writes locust's CSV files and HTML report under var/loadtest/.
Exit status 0 only when there was no failure, no inconsistency, every node served
requests and no node logged a PHP warning.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stack.demo import terminate_as_interrupt
from stack.runner import BIN, REPO, Stack, StackConfig, StackError
from stack.ui import Output

LOCUSTFILE = REPO / "loadtests" / "locustfile.py"
MARIADB_DATABASE = "session_loadtest"


def mariadb_url(host: str = "127.0.0.1", port: int = 3306) -> str | None:
    """A database on the local MariaDB (root, no password) when it answers, else None."""
    try:
        import pymysql

        conn = pymysql.connect(host=host, port=port, user="root", password="", connect_timeout=2)
    except Exception:
        return None
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{MARIADB_DATABASE}` CHARACTER SET utf8mb4")
    return f"mysql+pymysql://root@{host}:{port}/{MARIADB_DATABASE}"


def drop_loadtest_database(host: str = "127.0.0.1", port: int = 3306) -> None:
    """Leave the local MariaDB as it was found: drop the database mariadb_url() made."""
    import pymysql

    with (
        pymysql.connect(host=host, port=port, user="root", password="") as conn,
        conn.cursor() as cur,
    ):
        cur.execute(f"DROP DATABASE IF EXISTS `{MARIADB_DATABASE}`")


def read_stats(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def fmt_ms(value: str) -> str:
    try:
        return f"{float(value):.0f} ms"
    except ValueError:
        return value or "-"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make loadtest ARGS=...",
        description="Start the stack and run locust headless through the balancer.",
    )
    p.add_argument("--users", type=int, default=50, help="simulated users (default 50)")
    p.add_argument("--spawn-rate", type=float, default=10, help="users started per second (10)")
    p.add_argument("--time", type=int, default=60, help="run time in seconds (default 60)")
    p.add_argument("--db", default="", metavar="URL", help="database URL (default: see --sqlite)")
    p.add_argument(
        "--sqlite",
        action="store_true",
        help="SQLite even when MariaDB answers (default: SESSION_DB_URL, else MariaDB on "
        f"127.0.0.1:3306 database {MARIADB_DATABASE}, else SQLite)",
    )
    p.add_argument("--nodes", type=int, default=3, help="PHP web nodes (default 3)")
    p.add_argument("--node-workers", type=int, default=4, help="php -S workers per node (4)")
    p.add_argument(
        "--out", type=Path, default=REPO / "var" / "loadtest", help="reports (var/loadtest)"
    )
    p.add_argument("--plain", action="store_true", help="plain output even on a terminal")
    return p


def choose_db(args: argparse.Namespace, out: Output) -> tuple[str, bool]:
    """The database URL, and whether this run created it on the local MariaDB."""
    if args.db:
        return str(args.db), False
    if os.environ.get("SESSION_DB_URL"):
        return os.environ["SESSION_DB_URL"], False
    if not args.sqlite:
        url = mariadb_url()
        if url:
            return url, True
        out.step("MariaDB is not reachable on 127.0.0.1:3306: using SQLite")
    return f"sqlite:///{(args.out / 'sessions.db').resolve()}", False


def report(out: Output, rows: list[dict[str, str]], summary: dict[str, Any], seconds: int) -> None:
    columns = [
        ("request", 18),
        ("count", 7),
        ("fail", 5),
        ("req/s", 7),
        ("p50", 7),
        ("p95", 7),
        ("p99", 7),
        ("max", 8),
    ]
    out.table_start(f"locust, {seconds} s through the balancer", columns)
    for r in rows:
        if r["Name"] == "Aggregated":
            out.section("all requests")
        out.row(
            [
                r["Name"],
                r["Request Count"],
                r["Failure Count"],
                f"{float(r['Requests/s']):.1f}",
                fmt_ms(r["50%"]),
                fmt_ms(r["95%"]),
                fmt_ms(r["99%"]),
                fmt_ms(r["Max Response Time"]),
            ]
        )
    out.table_end()


def node_spread(summary: dict[str, Any]) -> str:
    """Requests per node over the whole run (X-Served-By), including the users' last tasks."""
    nodes: dict[str, int] = summary.get("nodes", {})
    total = sum(nodes.values()) or 1
    return ", ".join(f"{n} {c} ({100 * c / total:.0f} %)" for n, c in sorted(nodes.items()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.users < 1 or args.time < 1 or args.spawn_rate <= 0:
        print("make loadtest: --users, --time and --spawn-rate must be positive", file=sys.stderr)
        return 2
    out = Output(plain=True if args.plain else None)
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "locust"
    summary_path = args.out / "summary.json"
    html_path = args.out / "report.html"
    for stale in [summary_path, html_path, *args.out.glob("locust_*.csv")]:
        stale.unlink(missing_ok=True)
    db_url, created_db = choose_db(args, out)
    config = StackConfig(
        db_url=db_url,
        nodes=args.nodes,
        node_workers=args.node_workers,
        workdir=args.out / "stack",
    )
    with terminate_as_interrupt():
        stack = Stack(config, progress=out.step)
        try:
            stack.start()
            cmd = [
                str(BIN / "locust"), "-f", str(LOCUSTFILE), "--headless",
                "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.time}s",
                "--host", stack.url, "--csv", str(prefix), "--html", str(html_path),
                "--only-summary", "--stop-timeout", "10", "--loglevel", "WARNING",
            ]  # fmt: skip
            env = dict(os.environ)
            env["LOADTEST_NODES"] = ",".join(n.name for n in stack.nodes)
            env["LOADTEST_SUMMARY"] = str(summary_path)
            out.step(f"locust: {args.users} users for {args.time} s through {stack.url}")
            started = time.monotonic()
            with (args.out / "locust.log").open("wb") as log:
                code = subprocess.call(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                    timeout=args.time + 120,
                )  # fmt: skip
            elapsed = time.monotonic() - started
            problems = stack.php_problems()
        except StackError as exc:
            out.fail(str(exc))
            return 2
        except KeyboardInterrupt:
            out.note("\ninterrupted")
            return 130
        except subprocess.TimeoutExpired:
            out.fail("locust did not finish in time")
            return 1
        finally:
            stack.stop()
            if created_db:
                drop_loadtest_database()

    try:
        rows = read_stats(Path(f"{prefix}_stats.csv"))
        summary: dict[str, Any] = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        out.fail(f"locust left no results ({exc}); see {args.out / 'locust.log'}")
        return 1
    report(out, rows, summary, args.time)
    total = next(r for r in rows if r["Name"] == "Aggregated")
    out.kv(
        [
            ("database", stack.db_label),
            ("requests per second", f"{float(total['Requests/s']):.1f}"),
            ("p50 / p95 / p99", " / ".join(fmt_ms(total[k]) for k in ("50%", "95%", "99%"))),
            ("failures", f"{total['Failure Count']} of {total['Request Count']}"),
            ("requests per node", node_spread(summary) or "none"),
            ("state checks", ", ".join(f"{k} {v}" for k, v in summary["checked"].items())),
            ("report", f"{html_path} (CSV: {prefix}_*.csv)"),
            ("wall time", f"{elapsed:.0f} s"),
        ]
    )
    verdict: list[str] = []
    if summary["inconsistencies"]:
        verdict.append(f"inconsistent state seen: {summary['inconsistencies']}")
    if not summary["consistent"] and not summary["inconsistencies"]:
        verdict.append("no state was checked")
    if int(total["Failure Count"]):
        verdict.append(f"{total['Failure Count']} failed requests (see {prefix}_failures.csv)")
    if summary["missing_nodes"]:
        verdict.append(f"nodes that got no request: {summary['missing_nodes']}")
    for name, lines in problems.items():
        verdict.append(f"{name} logged {len(lines)} PHP/handler line(s), first: {lines[0]}")
    if code != 0 and not verdict:
        verdict.append(f"locust exited with {code} (see {args.out / 'locust.log'})")
    if verdict:
        for line in verdict:
            out.fail(line)
        return 1
    out.ok(
        "consistent: every user read exactly what its own requests left, no increment lost, "
        f"{len(summary['nodes'])} nodes served"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
