"""PHP session handler benchmark (run it through bench/php_sessions).

One run, the same PHP node for every handler: `php -S` with PHP_CLI_SERVER_WORKERS
workers and opcache, serving bench/php_support/www. The client is wrk with
bench/php_support/rmw.lua (each request carries the cookie of one of N pre-created
sessions). For each handler:

  files    PHP's files handler on the node's local disk (not shared: the ceiling)
  service  SessionService\\Handler -> session-service -> MariaDB (exclusive locking)
  pdo      Symfony PdoSessionHandler -> MariaDB, LOCK_TRANSACTIONAL (SELECT ... FOR UPDATE)

it creates --sessions sessions, warms up, runs wrk for --duration seconds on a
read-modify-write page (counter += 1), and then reads every counter back to count
lost updates (successful increments that are not in the stored counters). The
handlers take turns --rounds times; each ratio is the median of the rounds'
ratios, because the speed of a shared machine drifts between one handler's run
and the next.

A second, shorter part ("contention") sends all requests to ONE session, with and
without locking, to show what locking buys.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pymysql
from cpu import pids_named, processes, tree_seconds

from stack.processes import Process, ProcessError, free_port

ROOT = Path(__file__).resolve().parents[2]
WWW = ROOT / "bench" / "php_support" / "www"
LUA = ROOT / "bench" / "php_support" / "rmw.lua"
SERVICE_BIN = ROOT / ".venv" / "bin" / "session-service"
TOKEN = "bench-secret"

PAGES = {
    "files": "/files.php",
    "service": "/service.php",
    "pdo": "/pdo.php",
    # for information: the service handler with SESSION_SERVICE_LOCK=none (no lock calls;
    # loses updates under concurrency on one session, see the contention part)
    "service-nolock": "/service.php?lock=none",
}
CONTENTION = {
    "files": "/files.php",
    "service (exclusive)": "/service.php",
    "service (lock none)": "/service.php?lock=none",
    "pdo (transactional)": "/pdo.php",
    "pdo (lock none)": "/pdo.php?lock=none",
}


def started(
    name: str, cmd: list[str], log: Path, env: dict[str, str], url: str, cwd: Path | None = None
) -> Process:
    """Start ``cmd`` in its own process group; exit with its log's tail if ``url`` never
    answers 200."""
    proc = Process(name, cmd, log, env, cwd).start()
    try:
        proc.wait_http(url)
    except ProcessError as exc:
        proc.stop()
        sys.exit(str(exc))
    return proc


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="php-sessions-bench-"))
        self.procs: list[Process] = []
        self.dbs: list[str] = []
        self.client = httpx.Client(timeout=30)
        # one client per helper thread (a new httpx client per call costs more CPU than
        # the PHP page it calls); see fresh_client()
        self._local = threading.local()

    # ------------------------------------------------------------------ setup

    def db(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.args.db_host, port=self.args.db_port, user="root", password=""
        )

    def create_db(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        conn = self.db()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        conn.close()
        self.dbs.append(name)
        return name

    def start(self) -> None:
        a = self.args
        service_db = self.create_db("bench_php_service")
        pdo_db = self.create_db("bench_php_pdo")
        self.files_dir = self.tmp / "files-sessions"
        self.files_dir.mkdir()

        port = free_port()
        self.service_url = f"http://127.0.0.1:{port}"
        cmd = [
            str(SERVICE_BIN), "serve",
            "--db", f"mysql+pymysql://root@{a.db_host}:{a.db_port}/{service_db}",
            "--host", "127.0.0.1", "--port", str(port), "--tokens", f"default:{TOKEN}",
            "--workers", str(a.service_workers),
        ]  # fmt: skip
        env = {**os.environ, "SESSION_SERVICE_LOG_LEVEL": "warning"}
        ready = self.service_url + "/readyz"
        self.procs.append(started("session-service", cmd, self.tmp / "service.log", env, ready))

        self.php_port = free_port()
        self.php_url = f"http://127.0.0.1:{self.php_port}"
        self.php_error_log = self.tmp / "php-error.log"
        self.php_error_log.touch()
        ini = {
            "opcache.enable_cli": "1",
            "error_reporting": "-1",
            "display_errors": "0",
            "log_errors": "1",
            "error_log": str(self.php_error_log),
            "session.use_strict_mode": "1",
            "session.lazy_write": "1",
            "session.gc_probability": "0",
            "session.gc_maxlifetime": "3600",
        }
        php_cmd = ["php"]
        for key, value in ini.items():
            php_cmd += ["-d", f"{key}={value}"]
        php_cmd += ["-S", f"127.0.0.1:{self.php_port}", "-t", str(WWW)]
        php_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SESSION_SERVICE_")},
            "PHP_CLI_SERVER_WORKERS": str(a.php_workers),
            "SESSION_SERVICE_URL": self.service_url,
            "SESSION_SERVICE_TOKEN": TOKEN,
            "BENCH_FILES_DIR": str(self.files_dir),
            "BENCH_PDO_DSN": f"mysql:host={a.db_host};port={a.db_port};dbname={pdo_db}",
        }
        php_log = self.tmp / "php-stderr.log"
        ready = self.php_url + "/files.php?op=init"
        self.procs.append(started("php -S", php_cmd, php_log, php_env, ready, WWW))
        r = self.client.get(self.php_url + "/pdo.php?op=create_table")
        if r.text != "created":
            sys.exit(f"PdoSessionHandler::createTable() failed: {r.status_code} {r.text[:500]}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.dbs:
            conn = self.db()
            with conn.cursor() as cur:
                for name in self.dbs:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            conn.close()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def url(self, page: str, op: str) -> str:
        sep = "&" if "?" in page else "?"
        return f"{self.php_url}{page}{sep}op={op}"

    def fresh_client(self) -> httpx.Client:
        """This thread's client, with its cookie jar emptied: every call names its own
        session (a kept cookie would make every "new" session the same one)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=30)
        client.cookies.clear()
        return client

    def init_sessions(self, page: str, count: int) -> list[str]:
        def one(_: int) -> str:
            r = self.fresh_client().get(self.url(page, "init"))
            if r.status_code != 200:
                raise RuntimeError(f"init {page}: {r.status_code} {r.text[:300]}")
            return r.text.strip()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(count)))

    def counters(self, page: str, ids: list[str]) -> int:
        def one(sid: str) -> int:
            r = self.fresh_client().get(
                self.url(page, "read"), headers={"Cookie": f"PHPSESSID={sid}"}
            )
            if r.status_code != 200:
                raise RuntimeError(f"read {page}: {r.status_code} {r.text[:300]}")
            return int(r.text)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return sum(pool.map(one, ids))

    def wrk(self, page: str, ids_file: Path, seconds: float, connections: int) -> dict[str, Any]:
        path = page + ("&" if "?" in page else "?") + "op=rmw"
        cmd = [
            "wrk", "-t", str(self.args.threads), "-c", str(connections),
            "-d", f"{max(1, round(seconds))}s", "--timeout", "30s", "-s", str(LUA),
            self.php_url, "--", path, str(ids_file),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
        out = proc.stdout
        m = re.search(r"^RESULT (.*)$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk output without RESULT:\n{out}")
        res: dict[str, float] = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
        res["rps"] = res["ok"] / (res["duration_us"] / 1e6)
        return res

    def measure(
        self, name: str, page: str, sessions: int, seconds: float, connections: int
    ) -> dict[str, Any]:
        ids = self.init_sessions(page, sessions)
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"{page}: init returned {len(set(ids))} distinct ids for {len(ids)}")
        ids_file = self.tmp / f"ids-{uuid.uuid4().hex[:6]}.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        if self.args.warmup > 0:
            self.wrk(page, ids_file, self.args.warmup, connections)
        before = self.counters(page, ids)
        cpu_before = self.cpu_seconds()
        res = self.wrk(page, ids_file, seconds, connections)
        cpu = {k: v - cpu_before[k] for k, v in self.cpu_seconds().items()}
        after = self.counters(page, ids)
        # Requests still in flight when wrk stops are completed by PHP but not counted
        # by wrk, so up to --connections stored increments more than "ok" are normal.
        res["stored"] = after - before
        res["lost"] = max(0, res["ok"] - res["stored"])
        res["name"] = name
        # CPU milliseconds per successful request, by process group
        res["cpu_ms"] = {k: 1000 * v / max(1, res["ok"]) for k, v in cpu.items()}
        print(
            f"  {name:<22} {res['rps']:8.0f} req/s  p50 {res['p50_us'] / 1000:7.1f} ms  "
            f"p99 {res['p99_us'] / 1000:7.1f} ms  ok {res['ok']:6d}  stored {res['stored']:6d}  "
            f"failed {res['bad'] + res['socket_errors']:4d}  lost updates {res['lost']}",
            flush=True,
        )
        return res

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each part of the bench: the PHP node, the service,
        MariaDB and the load generator (wrk, a reaped child of this process)."""
        table = processes()
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "php": tree_seconds([self.procs[1].pid], table),
            "service": tree_seconds([self.procs[0].pid], table),
            "mariadb": tree_seconds(pids_named("mariadbd"), table),
            "wrk": reaped.ru_utime + reaped.ru_stime,
        }

    def php_log_problems(self) -> list[str]:
        return [line for line in self.php_error_log.read_text().splitlines() if line.strip()]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=15, help="seconds per handler (default 15)")
    p.add_argument(
        "--warmup", type=float, default=3, help="warm-up seconds per handler (default 3)"
    )
    p.add_argument("--sessions", type=int, default=1000, help="distinct sessions (default 1000)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--php-workers", type=int, default=8, help="PHP_CLI_SERVER_WORKERS (default 8)")
    p.add_argument(
        "--service-workers",
        type=int,
        default=1,
        help="session-service --workers (default 1: on 2 cores shared with PHP, MariaDB and "
        "wrk, a second worker only adds contention)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="run the handlers in turn this many times; each ratio is the median of the "
        "rounds' ratios, so drift on a shared machine hits all handlers alike (default 3)",
    )
    p.add_argument(
        "--handlers",
        default="files,service,pdo,service-nolock",
        help="comma-separated subset of files,service,pdo,service-nolock",
    )
    p.add_argument(
        "--contention",
        type=float,
        default=5,
        help="seconds per variant of the one-session run (0 skips)",
    )
    p.add_argument("--db-host", default="127.0.0.1")
    p.add_argument("--db-port", type=int, default=3306)
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args()
    for tool in ("php", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")

    bench = Bench(args)
    results: dict[str, Any] = {
        "config": vars(args) | {"json": str(args.json)},
        "main": {},
        "contention": {},
    }
    try:
        bench.start()
        print(
            f"PHP node: php -S, {args.php_workers} workers, opcache; service: "
            f"{args.service_workers} worker(s); wrk -t{args.threads} -c{args.connections}; "
            f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; logs in {bench.tmp}"
        )
        print(f"\nread-modify-write, {args.sessions} distinct sessions, {args.duration:g}s each:")
        handlers = [h.strip() for h in args.handlers.split(",") if h.strip()]
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in handlers}
        for number in range(args.rounds):
            if args.rounds > 1:
                print(f" round {number + 1} of {args.rounds}:")
            for name in handlers:
                rounds[name].append(
                    bench.measure(name, PAGES[name], args.sessions, args.duration, args.connections)
                )
        main_res = results["main"]
        for name, runs in rounds.items():
            median = dict(sorted(runs, key=lambda run: run["rps"])[(len(runs) - 1) // 2])
            median["lost"] = sum(run["lost"] for run in runs)  # over every round
            median["rounds_rps"] = [run["rps"] for run in runs]
            main_res[name] = median
        if args.rounds > 1:
            print("\nmedian round of each handler (lost updates: all rounds):")
            for name, res in main_res.items():
                rates = ", ".join(f"{rps:.0f}" for rps in res["rounds_rps"])
                print(f"  {name:<22} {res['rps']:8.0f} req/s  (rounds {rates})  lost {res['lost']}")
        print("\nCPU milliseconds per request, by process (the median round):")
        for name, res in main_res.items():
            cpu_ms = res["cpu_ms"]
            parts = "  ".join(f"{k} {v:5.2f}" for k, v in cpu_ms.items())
            print(f"  {name:<22} {parts}  total {sum(cpu_ms.values()):5.2f}")
        print("\nratios (throughput, median of the rounds' ratios):")
        pairs = [
            ("service", "pdo"),
            ("service", "files"),
            ("pdo", "files"),
            ("service-nolock", "pdo"),
        ]
        results["ratios"] = {}
        for a, b in pairs:
            if a in main_res and b in main_res:
                each = sorted(
                    x["rps"] / y["rps"] for x, y in zip(rounds[a], rounds[b], strict=True)
                )
                ratio = statistics.median(each)
                results["ratios"][f"{a}/{b}"] = ratio
                spread = f" (rounds {each[0]:.2f} to {each[-1]:.2f})" if len(each) > 1 else ""
                print(f"  {a} / {b}: {ratio:.2f}{spread}")
        if "service" in main_res and "pdo" in main_res:
            ok = results["ratios"]["service/pdo"] >= 0.6 and main_res["service"]["lost"] == 0
            verdict = "met" if ok else "NOT met"
            print(f"  target (service >= 60% of pdo, zero lost updates): {verdict}")

        if args.contention > 0:
            print(f"\ncontention: every request on ONE session, {args.contention:g}s each:")
            for name, page in CONTENTION.items():
                if name.split()[0] in main_res or not main_res:
                    results["contention"][name] = bench.measure(
                        name, page, 1, args.contention, args.connections
                    )

        results["loadavg_end"] = os.getloadavg()
        print(
            f"\nload average at the end: {os.getloadavg()[0]:.1f}"
            " (other work on the machine skews the results)"
        )
        problems = bench.php_log_problems()
        print(f"\nPHP error log: {len(problems)} line(s)")
        for line in problems[:10]:
            print("  " + line)
        results["php_log_lines"] = problems
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
