"""``make demo``: start the stack, walk a scripted user through the balancer, show the table.

    python -m stack.demo            # walk, then keep the stack running until Ctrl-C
    python -m stack.demo --once     # walk and exit: 0 only if every check held (CI)

Each row is one request through the balancer: the node that served it (the X-Served-By
header each web node sets), the session id (shortened) and what the session holds. The
walk then stops one node, shows the next requests served by the others with the cart
intact, and restarts it. See docs/demo.md.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from stack.runner import REPO, Stack, StackConfig, StackError
from stack.ui import Output

COLUMNS = [
    ("#", 3),
    ("request", 24),
    ("node", 5),
    ("session", 9),
    ("user", 6),
    ("cart", 30),
    ("counter", 7),
    ("views", 5),
    ("check", 5),
]


@dataclass
class Step:
    label: str
    method: str
    path: str
    form: dict[str, str] | None = None
    new_id: bool = False  # the session id is expected to change (login)


@dataclass
class Expected:
    """What the session must hold after each request: the model of the scripted user."""

    user: str | None = None
    cart: dict[str, int] = field(default_factory=dict)
    counter: int = 0
    views: int = 0
    sid: str | None = None


@dataclass
class Row:
    step: Step
    status: int
    node: str
    state: dict[str, Any]
    problems: list[str]


def shorten(sid: str) -> str:
    return sid[:8] + "…" if sid else "-"


def cart_text(cart: dict[str, int]) -> str:
    return ", ".join(f"{item}×{qty}" for item, qty in cart.items()) or "(empty)"  # noqa: RUF001


class Walk:
    """A scripted user (one cookie jar) that checks every answer against its own model."""

    def __init__(self, stack: Stack, out: Output, user: str = "alice") -> None:
        self.stack = stack
        self.out = out
        self.user = user
        self.client = httpx.Client(base_url=stack.url, timeout=15.0)
        self.expected = Expected()
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.counter = 0

    def close(self) -> None:
        self.client.close()

    def request(self, step: Step) -> Row:
        self.counter += 1
        exp = self.expected
        problems: list[str] = []
        state: dict[str, Any] = {}
        try:
            r = self.client.request(
                step.method, step.path, params={"format": "json"}, data=step.form
            )
            status, node = r.status_code, r.headers.get("x-served-by", "?")
            if status == 200:
                state = r.json()
            else:
                problems.append(f"HTTP {status}")
        except (httpx.HTTPError, ValueError) as exc:
            status, node = 0, "?"
            problems.append(f"{type(exc).__name__}: {exc}")
        # the model: what this request must have left in the session
        exp.views += 1
        if step.path.endswith("login.php"):
            exp.user = (step.form or {}).get("user")
        elif step.path.endswith("cart.php") and step.form:
            item = step.form["item"]
            exp.cart[item] = exp.cart.get(item, 0) + 1
        elif step.path.endswith("counter.php") and step.method == "POST":
            exp.counter += 1
        if state:
            if state.get("node") != node:
                problems.append(f"body says node {state.get('node')}, header {node}")
            got_cart = dict(state.get("cart") or {})
            checks = [
                ("user", state.get("user"), exp.user),
                ("cart", got_cart, exp.cart),
                ("counter", state.get("counter"), exp.counter),
                ("views", state.get("views"), exp.views),
            ]
            problems += [f"{n} is {g!r}, expected {w!r}" for n, g, w in checks if g != w]
            sid = str(state.get("session_id") or "")
            if exp.sid is not None and (sid != exp.sid) != step.new_id:
                change = "changed" if sid != exp.sid else "did not change"
                problems.append(f"session id {change}")
            exp.sid = sid
        row = Row(step, status, node, state, problems)
        self.rows.append(row)
        self.failures += [f"request {self.counter} ({step.label}): {p}" for p in problems]
        self.out.row(
            [
                str(self.counter),
                step.label,
                node,
                shorten(str(state.get("session_id", ""))),
                str(state.get("user") or "-"),
                cart_text(dict(state.get("cart") or {})),
                str(state.get("counter", "-")),
                str(state.get("views", "-")),
                "ok" if not problems else "FAIL",
            ],
            style=None if not problems else "bold red",
        )
        for problem in problems:
            self.out.fail(problem)
        return row

    def check(self, ok: bool, text: str) -> None:
        if not ok:
            self.failures.append(text)

    def run(self) -> list[str]:
        """The whole walk; returns the failed checks (empty: everything held)."""

        def add(item: str) -> Step:
            return Step(f"add {item} to cart", "POST", "/shop/cart.php", {"item": item})

        first = [
            Step("open the shop", "GET", "/shop/index.php"),
            Step(f"log in as {self.user}", "POST", "/shop/login.php", {"user": self.user}, True),
            add("apple"),
            add("cheese"),
            add("apple"),
            Step("click the counter", "POST", "/shop/counter.php", {}),
            Step("view the cart", "GET", "/shop/cart.php"),
        ]
        victim = self.stack.nodes[1].name if len(self.stack.nodes) > 1 else self.stack.nodes[0].name
        while_down = [
            Step("view the cart", "GET", "/shop/cart.php"),
            add("bread"),
            Step("click the counter", "POST", "/shop/counter.php", {}),
            Step("view the cart", "GET", "/shop/cart.php"),
        ]
        after = [Step("view the cart", "GET", "/shop/cart.php") for _ in self.stack.nodes]

        self.out.table_start(f"A scripted user through the balancer at {self.stack.url}", COLUMNS)
        try:
            rows = [self.request(step) for step in first]
            nodes = {r.node for r in rows}
            self.check(
                len(nodes) == len(self.stack.nodes),
                f"the first requests were served by {sorted(nodes)}, not by every node",
            )
            self.out.section(f"{victim} stopped")
            self.stack.stop_node(victim)
            rows = [self.request(step) for step in while_down]
            served = {r.node for r in rows}
            self.check(victim not in served, f"{victim} served a request while stopped")
            self.out.section(f"{victim} restarted")
            self.stack.start_node(victim)
            self.stack.wait_backends({victim: "UP"})
            rows = [self.request(step) for step in after]
            self.check(
                victim in {r.node for r in rows},
                f"{victim} served none of the {len(after)} requests after its restart",
            )
        finally:
            self.out.table_end()
        problems = self.stack.php_problems()
        for name, lines in problems.items():
            self.failures += [f"{name} error log: {line}" for line in lines]
        return self.failures


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the demo once (a second one cannot cut the cleanup short).

    SIGINT is handled explicitly too: a shell starts background jobs with SIGINT ignored.
    """
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make demo ARGS=...",
        description="Start the session service, three PHP web nodes and the balancer, walk a "
        "scripted user through the balancer and show which node served what.",
    )
    p.add_argument(
        "--once", action="store_true", help="walk, stop everything, exit 0 only if all checks held"
    )
    p.add_argument(
        "--db",
        default="",
        metavar="URL",
        help="database URL (default SESSION_DB_URL, else SQLite at var/sessions.db)",
    )
    p.add_argument("--nodes", type=int, default=3, help="PHP web nodes (default 3)")
    p.add_argument(
        "--port", type=int, default=8080, help="balancer port (default 8080, or a free one)"
    )
    p.add_argument(
        "--stats-port", type=int, default=8404, help="stats port (default 8404, or a free one)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=REPO / "var" / "demo",
        help="logs and pid files (default var/demo)",
    )
    p.add_argument("--plain", action="store_true", help="plain output even on a terminal")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.nodes <= 10:
        print("make demo: --nodes must be between 1 and 10", file=sys.stderr)
        return 2
    out = Output(plain=True if args.plain else None)
    config = StackConfig(
        db_url=args.db,
        nodes=args.nodes,
        balancer_port=args.port,
        stats_port=args.stats_port,
        workdir=args.workdir,
    )
    with terminate_as_interrupt():
        stack = Stack(config, progress=out.step)
        try:
            stack.start()
            walk = Walk(stack, out)
            try:
                failures = walk.run()
            finally:
                walk.close()
            if failures:
                out.fail(f"{len(failures)} check(s) failed:")
                for failure in failures:
                    out.note(f"  - {failure}", "red")
            else:
                out.ok(
                    f"{len(walk.rows)} requests, {len({r.node for r in walk.rows})} nodes: the "
                    "session followed the user everywhere, nothing lost, nothing stale"
                )
            if args.once:
                return 1 if failures else 0
            out.note("\nThe stack is running:")
            out.kv(
                [
                    ("shop", stack.url + "/shop/index.php"),
                    ("Symfony example", stack.url + "/symfony/"),
                    ("balancer stats", stack.stats_url),
                    ("session service", f"{stack.service_url}  ({stack.db_label})"),
                    ("logs", str(stack.workdir)),
                ]
            )
            out.note("Reload the shop: the footer names a different node each time. Ctrl-C stops.")
            while True:
                time.sleep(1)
                dead = [p.name for p in stack.processes() if not p.running]
                if dead:
                    out.fail(f"{', '.join(dead)} exited; see the logs in {stack.workdir}")
                    return 1
        except StackError as exc:
            out.fail(str(exc))
            return 2
        except KeyboardInterrupt:
            out.note("\nstopping…")
            return 0
        finally:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
