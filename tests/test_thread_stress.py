"""Many threads hammering one lock: exact counts, no overlap.

The shapes of issue 20's bar for free-threaded CPython: 8 threads x OPS operations
on one Mutex, one RWLock (its invariant checked by the readers), one lock file
(each thread its own FileLock, one record) and one ObjectList, with 0 overlaps and
0 lost updates; and 64 threads on one Mutex, where the slowest thread must get
the lock at least a tenth as often as the slowest thread on a ``threading.Lock``
in the same run (that one is in ``free_threaded_fairness.py``). ``LATCHWIRE_STRESS_OPS``
sets OPS (CI's free-threaded step runs 200,000 with ``PYTHON_GIL=0``); the default
keeps the normal run short. Every counter here is touched only inside the lock under
test, so if the lock holds, the counts are exact on any interpreter.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from lwtest import BOUND, new_lock

from latchwire import Lockable, Mutex, ObjectList, RWLock, _core, ipjson

OPS = int(os.environ.get("LATCHWIRE_STRESS_OPS", "20000"))
THREADS = 8

pytestmark = pytest.mark.usefixtures("watchdog")


def run_threads(count: int, target: Callable[[int], None], timeout: float) -> None:
    """count threads running target(i), all released at one barrier; any error fails."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(BOUND)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert errors == []


class Witnessed:
    """What the sections see: who is inside, and the count they keep."""

    def __init__(self) -> None:
        self.inside = 0
        self.overlaps = 0
        self.count = 0

    def section(self) -> None:
        self.inside += 1
        if self.inside != 1:
            self.overlaps += 1
        self.count += 1
        self.inside -= 1


def test_mutex_eight_threads(tmp_path: Path) -> None:
    m, seen = Mutex(), Witnessed()

    def work(_: int) -> None:
        for _ in range(OPS):
            with m:
                seen.section()

    run_threads(THREADS, work, 60 + OPS / 1000)
    assert (seen.overlaps, seen.count) == (0, THREADS * OPS)
    assert not m.locked()


def test_rwlock_eight_threads_invariant_checked_by_readers() -> None:
    """Six readers and two writers: a reader never sees a writer inside, a writer
    never sees anyone else inside, and the writers' count is exact."""
    rw = RWLock()
    readers_in = [False] * THREADS     # each reader writes its own slot only
    state = {"writing": 0, "count": 0, "broken": 0}

    def work(i: int) -> None:
        writer = i < 2
        for n in range(OPS):
            if writer and n % 4 == 0:
                with rw.write():
                    state["writing"] += 1
                    if state["writing"] != 1 or any(readers_in):
                        state["broken"] += 1
                    state["count"] += 1
                    state["writing"] -= 1
            else:
                with rw.read():
                    readers_in[i] = True
                    if state["writing"]:
                        state["broken"] += 1
                    readers_in[i] = False

    run_threads(THREADS, work, 60 + OPS / 1000)
    assert state["broken"] == 0
    assert state["count"] == 2 * len(range(0, OPS, 4))
    assert rw.writer is None and rw.readers == []


def test_filelock_one_record_many_objects(tmp_path: Path) -> None:
    """Eight threads, each its own FileLock of one file: one record, exact count."""
    lockfile, seen = str(tmp_path / "lock"), Witnessed()
    ops = OPS

    def work(_: int) -> None:
        lock = new_lock(lockfile)
        for _ in range(ops):
            with lock:
                seen.section()

    run_threads(THREADS, work, 120 + ops / 200)
    assert (seen.overlaps, seen.count) == (0, THREADS * ops)


def test_objectlist_eight_threads() -> None:
    """Threads add, find (handed back locked), bump a shared object's count and remove
    their own objects: the shared count is exact and the list ends as it began."""
    doms: ObjectList[Lockable] = ObjectList()
    shared = doms.add(Lockable("shared", "shared"))
    shared.unlock()
    counts = {"shared": 0}
    ops = OPS

    def work(i: int) -> None:
        for n in range(ops):
            mine = doms.add(Lockable((i, n), f"{i}-{n}"))
            mine.unlock()
            with doms.find_by_uuid("shared") as obj:
                assert obj is shared
                counts["shared"] += 1
            found = doms.find_by_name(f"{i}-{n}")
            assert found is mine
            found.unlock()
            doms.remove(mine)

    run_threads(THREADS, work, 120 + ops / 200)
    assert counts["shared"] == THREADS * ops
    assert len(doms) == 1


class SlowNames(dict[int, str]):
    """Link names that make each lookup give up the GIL (and never remember)."""

    def __missing__(self, index: int) -> str:
        time.sleep(0)
        return f"link{index}"


def route_messages(count: int) -> bytes:
    """count RTM_NEWROUTE messages: 10.i/32 via oif i+1, table main."""
    out = b""
    for i in range(count):
        attrs = (struct.pack("=HH4s", 8, 1, bytes([10, i >> 16 & 255, i >> 8 & 255, i & 255]))
                 + struct.pack("=HHI", 8, 4, i + 1) + struct.pack("=HHI", 8, 15, 254))
        body = struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 254, 4, 253, 1, 0) + attrs
        out += struct.pack("=IHHII", 16 + len(body), 24, 2, 1, 0) + body
    return out


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_route_format_shared_by_eight_threads(as_json: bool) -> None:
    """One RouteFormat rendering in 8 threads at once, its names lookups giving up the
    GIL mid-route: every render is what one thread alone writes (each has its own buffer)."""
    routes = _core.decode(route_messages(200))
    fmt = ipjson.route_format(SlowNames(), as_json)
    expected = fmt.render(routes)
    assert expected.count(b"link200") == 1
    rounds = max(5, OPS // 1000)
    bad = []

    def work(_: int) -> None:
        for _n in range(rounds):
            if fmt.render(routes) != expected:
                bad.append(1)

    run_threads(THREADS, work, 120 + rounds)
    assert bad == []
