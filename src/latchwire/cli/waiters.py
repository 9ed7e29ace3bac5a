"""``latchwire locks --waiters``: who holds a file's lock, who waits for it, in what
order, and the wait cycles among the waiting threads.

The waits are latchwire.waitgraph's: those on the latchwire processes' wait boards
(thread by thread, each with when it began, so they are listed in that order, and
what the waiting thread holds), and the kernel's waits of other processes (listed
after them, their order unknown: QUEUE ``?``). A fair lock's waiters are in two
places: the one at the head of its queue waits for the lock file itself, the others
for their turn in the queue file (STATE ``queued``), in ticket order, which is the
order their waits began.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from latchwire import waitgraph
from latchwire._core import QUEUE_SUFFIX
from latchwire._procfs import command
from latchwire.cli._common import printable
from latchwire.locking import Holder

_COLUMNS = ("PATH", "PID", "TID", "STATE", "QUEUE", "MODE", "KIND", "WAITED", "COMMAND")


def show(holders: Sequence[tuple[str, Holder]], paths: Sequence[str], as_json: bool) -> bool:
    """Print the holders, the waiters on paths and every cycle among all waiters;
    whether anyone holds or waits."""
    keys: dict[str, str] = {}  # file key -> the lock file it is, or whose fair queue it is
    fair: set[str] = set()  # the keys of fair queue files
    for path in paths:
        for name in (path, path + QUEUE_SUFFIX):
            try:
                st = os.lstat(name)
            except OSError:
                continue
            key = waitgraph.file_key(st.st_dev, st.st_ino)
            keys[key] = path
            if name != path:
                fair.add(key)
    everyone = waitgraph.waiters()
    now = time.monotonic()
    queued = _queues([w for w in everyone if w.wait.key in keys], keys, fair)
    cycles = waitgraph.cycles(everyone)
    if as_json:
        print(json.dumps({
            "holders": [{"path": path, **h._asdict()} for path, h in holders],
            "waiters": [_waiter_json(keys[w.wait.key], w, place, now, w.wait.key in fair)
                        for w, place in queued],
            "cycles": [[_edge_json(wait, hold) for wait, hold in cycle] for cycle in cycles],
        }, indent=2))
    else:
        print("\t".join(_COLUMNS))
        for path, h in holders:
            print(f"{printable(path)}\t{h.pid}\t-\tholds\t-\t{h.mode}\t{h.kind}\t-\t"
                  f"{printable(h.command)}")
        for w, place in queued:
            waited = "?" if w.began is None else f"{max(0.0, now - w.began):.3f}"
            state = "queued" if w.wait.key in fair else "waits"
            print(f"{printable(keys[w.wait.key])}\t{w.wait.pid}\t{w.wait.tid}\t{state}\t"
                  f"{place or '?'}\t{_mode(w.wait.exclusive)}\t{w.wait.kind}\t{waited}\t"
                  f"{printable(command(w.wait.pid))}")
        for cycle in cycles:
            print(f"cycle: {printable(waitgraph.describe(cycle, here=False))}")
    return bool(holders or queued)


def _queues(on: Sequence[waitgraph.Waiter], keys: dict[str, str],
            fair: set[str]) -> list[tuple[waitgraph.Waiter, int | None]]:
    """The waiters by lock file (keys: by file key), each file's in the order its
    waits began (those whose start is not known last; a fair queue's after the wait
    for the file itself), with each one's place (None: not known)."""
    ordered = sorted(on, key=lambda w: (keys[w.wait.key], w.wait.key in fair,
                                        w.began is None, w.began or 0.0))
    out: list[tuple[waitgraph.Waiter, int | None]] = []
    place, path = 0, None
    for w in ordered:
        if keys[w.wait.key] != path:
            place, path = 0, keys[w.wait.key]
        place += 1
        out.append((w, place if w.began is not None else None))
    return out


def _mode(exclusive: bool) -> str:
    return "exclusive" if exclusive else "shared"


def _waiter_json(path: str, w: waitgraph.Waiter, place: int | None, now: float,
                 in_fair_queue: bool) -> dict[str, object]:
    return {"path": path, "pid": w.wait.pid, "tid": w.wait.tid, "queue": place,
            "state": "queued" if in_fair_queue else "waits",
            "mode": _mode(w.wait.exclusive), "kind": w.wait.kind,
            "waited": None if w.began is None else round(max(0.0, now - w.began), 6),
            "holds": [{"file": h.key, "mode": _mode(h.exclusive), "kind": h.kind}
                      for h in w.holds],
            "command": command(w.wait.pid)}


def _edge_json(wait: waitgraph.Wait, hold: waitgraph.Hold) -> dict[str, object]:
    return {"pid": wait.pid, "tid": wait.tid, "path": wait.path,
            "mode": _mode(wait.exclusive), "kind": wait.kind, "held_by": hold.pid,
            "held_mode": _mode(hold.exclusive)}
