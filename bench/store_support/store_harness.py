"""What every variant of bench/store.py shares: the session data, the sessions, a result.

Kept apart so that the four client loops (store_threaded.py, store_event_loop.py,
store_http.py) do the very same read-modify-write on the same number of sessions and are
measured alike; bench/store.py only alternates them and prints the table.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

PAYLOAD = secrets.token_bytes(190)


def incremented(data: bytes | None) -> bytes:
    """The read-modify-write every variant does: a 10-digit counter + 190 bytes.

    The data must change on every cycle, as a real session's does: InnoDB skips
    the write (and the log flush at commit) for an UPDATE that changes nothing,
    which would make a baseline look faster than any real handler can be.
    """
    count = int(data[:10]) if data and data[:10].isdigit() else 0
    return b"%010d" % (count + 1) + PAYLOAD


TTL = 1440


@dataclass
class Result:
    name: str
    concurrency: int
    cycles: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.cycles / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


SESSIONS_PER_WORKER = 50


def sessions_for(worker: int, count: int = SESSIONS_PER_WORKER) -> list[str]:
    return [f"{uuid.uuid4().hex}w{worker}" for _ in range(count)]
