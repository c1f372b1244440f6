"""CPU time used by process trees, read from /proc (Linux), for "where does each
request's CPU go" figures: on a 2-core machine shared by PHP, the service, MariaDB
and the load generator, throughput follows CPU per request, and this says whose."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system seconds) of one live process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its end
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def processes() -> dict[int, tuple[int, float]]:
    """Every live process: pid -> (parent pid, CPU seconds)."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat
    return found


def tree_seconds(roots: list[int], table: dict[int, tuple[int, float]] | None = None) -> float:
    """CPU seconds of the live processes under (and including) roots. Children that
    have exited count only once their parent has reaped them (its cutime), which
    long-running servers do not need here: their workers live for the whole run."""
    table = processes() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def pids_named(name: str) -> list[int]:
    """Live processes whose command name is `name` (e.g. mariadbd)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
            except OSError:
                continue
            if comm == name:
                found.append(int(entry.name))
    return found
