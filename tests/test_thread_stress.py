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
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from lwtest import BOUND, new_lock

from latchwire import Lockable, Mutex, ObjectList, RWLock

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
