#!/usr/bin/env python3
"""Instructions the service executes per lock+write cycle, counted by callgrind.

Throughput on a shared 2-core machine moves by 10 to 30 percent from minute to
minute (bench/store.py shows it); an instruction count does not. This runs the
service under valgrind's callgrind with counting switched off, drives warm-up
cycles, then counts exactly N lock+write cycles (16 clients, each on its own
sessions, as bench/store.py's (a)), and prints instructions per cycle for:

  default      the service as configured by default, keep-alive clients
  per-request  the same, with a new connection for every cycle, as PHP's
               handler makes one per PHP request
  text-sql     keep-alive clients and --no-db-prepared-statements (the text
               protocol), as a baseline in the same run

User-space instructions of the service process only (the kernel, MariaDB and the
client are not counted); a change to the hot path that lowers this number makes
the service cheaper per request. Needs valgrind and a MariaDB on 127.0.0.1:3306.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "store_support"))

from store_http import http_cycle  # noqa: E402

from session_service.schema import migrate  # noqa: E402
from session_service.settings import Settings  # noqa: E402
from session_service.store import SessionStore  # noqa: E402
from stack.processes import Process, ProcessError, free_port  # noqa: E402

CLIENTS = 16


async def _client(port: int, token: str, worker: int, cycles: int, reconnect: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n"
    sids = [f"{uuid.uuid4().hex}i{worker}" for _ in range(5)]

    for i in range(cycles):
        if reconnect and i:
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await http_cycle(reader, writer, auth, sids[i % len(sids)])
    writer.close()


def _drive(port: int, token: str, cycles: int, reconnect: bool = False) -> None:
    async def main() -> None:
        await asyncio.gather(*(_client(port, token, w, cycles, reconnect) for w in range(CLIENTS)))

    asyncio.run(main())


def count(url: str, extra: list[str], cycles: int, workdir: Path, reconnect: bool) -> float:
    """Instructions per cycle of one service process under callgrind."""
    token = secrets.token_urlsafe(16)
    port = free_port(19000 + os.getpid() % 1000)
    out = workdir / f"callgrind.{uuid.uuid4().hex[:6]}"
    args = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, "-m", "session_service", "serve", "--db", url, "--port", str(port),
        "--tokens", f"bench:{token}", "--log-level", "warning", "--gc-interval", "0", *extra,
    ]  # fmt: skip
    proc = Process("session-service under valgrind", args, Path(os.devnull), cwd=ROOT).start()
    try:
        try:
            proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=300)
        except ProcessError as exc:
            raise SystemExit(f"the service did not start under valgrind: {exc}") from None
        _drive(port, token, 10)  # warm: sessions exist, statements prepared, code paths hot
        subprocess.run(
            ["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True
        )
        _drive(port, token, cycles)
        subprocess.run(
            ["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True
        )
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.stop(120)  # callgrind writes its dump on SIGTERM
    total = 0
    for dump in workdir.glob(out.name + "*"):
        for line in dump.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    if not total:
        raise SystemExit("callgrind wrote no counts")
    return total / (CLIENTS * cycles)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=40, help="counted cycles per client")
    parser.add_argument("--only-default", action="store_true", help="skip the text-sql baseline")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")

    database = f"bench_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {database}")
    url = f"mysql+pymysql://root@127.0.0.1:3306/{database}"
    store = SessionStore(Settings(db_url=url))
    migrate(store.engine)
    store.close()
    variants: dict[str, tuple[list[str], bool]] = {"default": ([], False)}
    if not args.only_default:
        variants["per-request"] = ([], True)
        variants["text-sql"] = (["--no-db-prepared-statements"], False)
    results: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, (extra, reconnect) in variants.items():
                results[name] = count(url, extra, args.cycles, Path(tmp), reconnect)
                print(
                    f"{name:12s} {results[name] / 1000:8.1f} k instructions per lock+write cycle",
                    flush=True,
                )
    finally:
        admin.cursor().execute(f"DROP DATABASE {database}")
    if "text-sql" in results:
        print(f"\ndefault / text-sql: {results['default'] / results['text-sql']:.2f}")
        connection = results["per-request"] - results["default"]
        print(f"a new connection per cycle costs {connection / 1000:.1f} k instructions")
    print(f"({CLIENTS} clients x {args.cycles} counted cycles each, service process only)")


if __name__ == "__main__":
    main()
