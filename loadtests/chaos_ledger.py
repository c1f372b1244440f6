"""The simulated users of ``make chaos`` and their ledger of acknowledged increments.

Kept apart from the faults and the command line because it is the part that decides what
counts as lost, duplicated or wrong, and is unit-tested on its own
(tests/loadtests/test_chaos_ledger.py). Each user has its own session and POSTs
``examples/chaos.php`` through the balancer in a loop: every 200 answer is an acknowledged
increment with its value N; a failed request is either *refused* (``session_start()``
failed: nothing was changed) or *unknown* (it may or may not have been applied). A 200 must
show a value in [last + 1, last + 1 + unknown since], and the stored counter at the end a
value in [last acknowledged, last + unknown since].
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from stack.runner import StackError

ENDPOINT = "/chaos.php"


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
