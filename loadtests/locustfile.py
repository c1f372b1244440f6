"""Load test of the whole stack through the balancer: no lost or stale session state, ever.

Run through ``make loadtest`` (stack.loadtest starts the stack and prints the verdict), or
against a running stack (``make demo``; docker compose's locust service)::

    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8080

Two kinds of simulated users, each with its own session (cookie jar):

- ``ShopUser`` logs in, then adds items to its cart, views it and clicks the counter, in a
  loop. Each answer carries the whole session state; the user keeps its own model of what
  its previous requests left and any difference (a lost or stale update, a logged-out
  user, a changed session id) is a failure named ``inconsistent: ...``.
- ``BurstUser`` sends bursts of concurrent increments on one session, then reads it: the
  increments must have been applied one after the other (answers c0+1 .. c0+N, in some
  order) and none may be lost.

Every web node names itself in the X-Served-By header; the run counts requests per node
and fails when a node of ``LOADTEST_NODES`` (comma-separated names) got none. With
``LOADTEST_SUMMARY=path`` a JSON summary is written there at the end. The process exit
code is 1 on any failure or inconsistency.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter
from typing import Any

from gevent.pool import Group
from locust import FastHttpUser, between, events, task
from locust.env import Environment

ITEMS = ("apple", "bread", "cheese", "coffee", "pear")
EXPECTED_NODES = [n for n in os.environ.get("LOADTEST_NODES", "").split(",") if n]
BURST = int(os.environ.get("LOADTEST_BURST", "5"))
WAIT_MAX = float(os.environ.get("LOADTEST_WAIT_MAX", "0.2"))

_lock = threading.Lock()
node_requests: Counter[str] = Counter()
inconsistencies: Counter[str] = Counter()
checked: Counter[str] = Counter()


@events.request.add_listener  # type: ignore[untyped-decorator]  # locust's hooks are untyped
def count_node(response: Any = None, exception: Any = None, **_: Any) -> None:
    headers = getattr(response, "headers", None)
    node = headers.get("X-Served-By") if headers else None
    if node:
        with _lock:
            node_requests[node] += 1


class ConsistentUser(FastHttpUser):
    abstract = True

    def inconsistent(self, resp: Any, kind: str, detail: str) -> None:
        with _lock:
            inconsistencies[kind] += 1
        resp.failure(f"inconsistent: {kind}: {detail}")

    def state(self, resp: Any) -> dict[str, Any] | None:
        """The JSON state of a 200 answer, else the request is marked failed."""
        if resp.status_code != 200:
            resp.failure(f"HTTP {resp.status_code}")
            return None
        try:
            data: dict[str, Any] = resp.json()
        except ValueError:
            resp.failure("not JSON")
            return None
        if data.get("node") != resp.headers.get("X-Served-By"):
            resp.failure("X-Served-By differs from the node named in the body")
            return None
        return data


class ShopUser(ConsistentUser):
    """One shopper: every answer must show exactly what its own previous requests left."""

    weight = 9
    wait_time = between(0.0, WAIT_MAX)

    def on_start(self) -> None:
        self.user = f"user{random.randrange(10**9)}"
        self.cart: Counter[str] = Counter()
        self.counter = 0
        self.views = 0
        self.sid = ""
        self.ready = False
        self.unsure = False
        with self.client.post(
            "/shop/login.php?format=json", data={"user": self.user}, name="login",
            catch_response=True,
        ) as resp:  # fmt: skip
            state = self.state(resp)
            if state is not None:
                self.views = 1
                self.check(resp, state)
                self.ready = state.get("user") == self.user

    def check(self, resp: Any, state: dict[str, Any]) -> None:
        with _lock:
            checked["shop"] += 1
        wanted = {
            "user": self.user,
            "cart": dict(self.cart),
            "counter": self.counter,
            "views": self.views,
        }
        for key, value in wanted.items():
            got = dict(state[key]) if key == "cart" else state.get(key)
            if got != value:
                stale = (
                    key == "views"
                    and isinstance(got, int)
                    and isinstance(value, int)
                    and got < value
                )
                kind = "stale" if stale else key
                self.inconsistent(resp, kind, f"{key} is {got!r}, expected {value!r}")
                self.resync(state)
                return
        sid = str(state.get("session_id"))
        if self.sid and sid != self.sid:
            self.inconsistent(resp, "session_id", "the session id changed")
        self.sid = sid

    def resync(self, state: dict[str, Any]) -> None:
        """Adopt what the server holds so one inconsistency is not counted on every request."""
        self.cart = Counter(dict(state.get("cart") or {}))
        self.counter = int(state.get("counter") or 0)
        self.views = int(state.get("views") or 0)
        self.sid = str(state.get("session_id"))

    def call(self, method: str, path: str, name: str, data: dict[str, str] | None = None) -> None:
        if not self.ready:
            self.on_start()
            return
        with self.client.request(
            method, path + "?format=json", data=data, name=name, catch_response=True
        ) as resp:
            state = self.state(resp)
            self.views += 1
            if state is None:
                # a failed request (already counted as a failure) may or may not have been
                # applied: the next answer is adopted as the new reference, not judged
                self.unsure = True
            elif self.unsure:
                self.resync(state)
                self.unsure = False
            else:
                self.check(resp, state)

    @task(4)
    def add_to_cart(self) -> None:
        item = random.choice(ITEMS)
        self.cart[item] += 1
        self.call("POST", "/shop/cart.php", "add to cart", {"item": item})

    @task(3)
    def view_cart(self) -> None:
        self.call("GET", "/shop/cart.php", "view cart")

    @task(2)
    def click_counter(self) -> None:
        self.counter += 1
        self.call("POST", "/shop/counter.php", "counter +1", {})


class BurstUser(ConsistentUser):
    """Bursts of concurrent increments on one shared session: none may be lost."""

    weight = 1
    wait_time = between(0.1, 0.5)
    concurrency = BURST + 2

    def on_start(self) -> None:
        with self.client.get(
            "/shop/counter.php?format=json", name="burst read", catch_response=True
        ) as resp:
            state = self.state(resp)
            self.counter = int(state["counter"]) if state else 0

    @task
    def burst(self) -> None:
        start = self.counter
        answers: list[int] = []

        def one() -> None:
            with self.client.post(
                "/shop/counter.php?format=json", data={}, name="burst counter +1",
                catch_response=True,
            ) as resp:  # fmt: skip
                state = self.state(resp)
                if state is not None:
                    answers.append(int(state["counter"]))

        group = Group()
        for _ in range(BURST):
            group.spawn(one)
        group.join()
        with self.client.get(
            "/shop/counter.php?format=json", name="burst read", catch_response=True
        ) as resp:
            state = self.state(resp)
            if state is None:
                return
            with _lock:
                checked["burst"] += 1
            final = int(state["counter"])
            if len(answers) != BURST:  # a failed request (already a failure) may not have counted
                self.counter = final
                return
            if len(answers) == BURST and sorted(answers) != list(
                range(start + 1, start + BURST + 1)
            ):
                self.inconsistent(resp, "burst", f"answers {sorted(answers)} after {start}")
            elif final != start + BURST:
                lost = start + BURST - final
                self.inconsistent(resp, "lost_increment", f"{final} after {start}+{BURST} ({lost})")
            self.counter = final


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def verdict(environment: Environment, **_: Any) -> None:
    stats = environment.stats.total if environment.stats else None
    missing = [n for n in EXPECTED_NODES if node_requests[n] == 0]
    failures = stats.num_failures if stats else 0
    summary = {
        "requests": stats.num_requests if stats else 0,
        "failures": failures,
        "inconsistencies": dict(inconsistencies),
        "checked": dict(checked),
        "nodes": dict(node_requests),
        "missing_nodes": missing,
        "consistent": not inconsistencies and sum(checked.values()) > 0,
    }
    path = os.environ.get("LOADTEST_SUMMARY")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2)
    if failures or inconsistencies or missing or not summary["consistent"]:
        environment.process_exit_code = 1
