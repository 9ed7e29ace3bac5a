"""Long runs that must leave memory and descriptors where they found them.

Each workload runs a warm-up (caches, free lists and allocator arenas settle),
then two equal halves. After the first half and after the second, with a full
garbage collection, three things are read: the open descriptors
(``/proc/self/fd``), the resident set (``/proc/self/statm``) and the number of
memory blocks CPython's allocator has handed out (``sys.getallocatedblocks``).
A leak grows all of them in both halves alike; allocator noise settles in the
first. So the second half is held to: the same descriptors as after the
warm-up (a FileLock keeps its lock file open while it exists; the test checks
that it is closed with the last FileLock), and growth within the bounds below.

The bounds, against the smallest real leaks:
- blocks: one leaked Python object per cycle is ``cycles / 2`` blocks over the
  half (5,000 for the smallest half here); the bound is 64.
- resident set: a C-level leak of 8 bytes per cycle (one pointer) over a half
  of 50,000 cycles is 400 KB, and anything per netlink dump is at least a
  message (~52 bytes a route, ~500 routes a dump: 26 KB a dump, 13 MB over the
  half); the bound is 256 KB, 64 pages, above what a steady loop moves.

Memory is judged only with CPython's own allocator (``sys.getallocatedblocks()``
is 0 under ``PYTHONMALLOC=malloc``, as in the sanitizer runs, where ASan's
quarantine holds freed memory on purpose and LeakSanitizer is the judge of
leaks); descriptors are judged always.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lwnetns import BASIC_SETUP, drop_netns, make_netns
from lwtest import WAIT

from latchwire import FileLock, LockBusy, LockSpace, Mutex, RWLock, netlink, rtnl
from latchwire.netlink import Request, Socket

BLOCKS_BOUND = 64
RSS_BOUND = 256 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
PYMALLOC = sys.getallocatedblocks() > 0  # False under PYTHONMALLOC=malloc
ROUTES = 500  # in the namespace's table 100: a route dump of two datagrams
TABLE = 100
RTMSG = struct.Struct("=BBBBBBBBI")
IFINFOMSG = struct.Struct("=BxHiII")


@dataclass(frozen=True)
class Usage:
    fds: int
    rss: int
    blocks: int


def usage() -> Usage:
    """Descriptors, resident bytes and allocated blocks now, after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * PAGE
    return Usage(len(os.listdir("/proc/self/fd")), resident, sys.getallocatedblocks())


def assert_steady(cycle: Callable[[], None], cycles: int) -> None:
    """Run cycle a tenth of cycles as warm-up, then cycles times in two halves;
    fail if the second half leaves descriptors open or (with PYMALLOC) grows memory
    past the bounds."""
    for _ in range(cycles // 10):
        cycle()
    warm = usage()
    for _ in range(cycles // 2):
        cycle()
    middle = usage()
    for _ in range(cycles // 2):
        cycle()
    end = usage()
    assert end.fds == middle.fds == warm.fds, (warm, middle, end)
    if not PYMALLOC:
        return
    assert end.blocks - middle.blocks <= BLOCKS_BOUND, (middle, end)
    assert end.rss - middle.rss <= RSS_BOUND, (middle, end)


def filelock_cycles(path: str) -> None:
    """The FileLock workloads on lock file path, with FileLocks of their own."""
    lock, other = FileLock(path, lockfile=path), FileLock(path, lockfile=path)

    def cycle() -> None:
        lock.acquire(timeout=WAIT)
        lock.release()
        with lock.shared(timeout=WAIT):
            pass
        with lock:
            pass

    def busy() -> None:
        with lock, pytest.raises(LockBusy):
            other.acquire(blocking=False)

    assert_steady(cycle, 100_000 // 3)
    assert_steady(busy, 10_000)


def test_filelock_cycles(tmp_path: Path) -> None:
    """100,000 FileLock acquire/release cycles (exclusive, shared, with-blocks), and
    10,000 refused while held (LockBusy raised from the compiled core); the lock
    file is closed once its FileLocks are gone."""
    # The process's one inotify instance (the path watch) is made by a record's second
    # grant and kept for the life of the process: make it first, or a run of this test
    # alone counts it as a leak.
    warm = FileLock(str(tmp_path / "warm"))
    for _ in range(3):
        with warm:
            pass
    del warm
    fds = usage().fds
    filelock_cycles(str(tmp_path / "lock"))
    assert usage().fds == fds


def test_mutex_rwlock_lockspace_cycles(tmp_path: Path) -> None:
    """100,000 Mutex and RWLock (read and write) cycles, refused acquires among
    them (False, RuntimeError), and 10,000 LockSpace acquire/release cycles of
    auto-created leases."""
    mutex, rwlock = Mutex(name="leak-mutex"), RWLock(name="leak-rwlock")
    space = LockSpace(str(tmp_path / "space"))

    def locks() -> None:
        with mutex:
            assert not mutex.acquire(blocking=False)
        with rwlock.read():
            pass
        with rwlock.write(), pytest.raises(RuntimeError):
            rwlock.acquire_read(blocking=False)

    def leases() -> None:
        space.acquire("vm-disk", owner="leak")
        space.release("vm-disk", owner="leak")

    assert_steady(locks, 100_000)
    assert_steady(leases, 10_000)
    assert not list((tmp_path / "space").iterdir())


@pytest.fixture
def netns() -> Iterator[str]:
    """A private namespace: veth0 up with 192.0.2.1/24 and ROUTES routes in table 100."""
    ns = make_netns([*BASIC_SETUP, *(f"route add 10.2.{i >> 8}.{i & 255}/32 dev veth0 "
                                     f"table {TABLE}" for i in range(ROUTES))],
                    prefix="lwleak")
    try:
        yield ns.name
    finally:
        drop_netns(ns)


def test_netlink_dumps(netns: str) -> None:
    """1,000 route dumps in a namespace: half read whole on a long-lived socket, a
    quarter decoded into records by a long-lived rtnl.Route, and every fourth on a
    fresh socket, abandoned after its first message by a transaction (copy-on-write
    moves it to a channel of its own) and closed."""
    routes = Request(netlink.RTM_GETROUTE, header=RTMSG.pack(socket.AF_INET, *[0] * 8))
    lo = Request(netlink.RTM_GETLINK, header=IFINFOMSG.pack(0, 0, 1, 0, 0))
    fds = usage().fds
    sock = Socket(netlink.NETLINK_ROUTE, netns=netns)
    ip = rtnl.Route(netns)
    count = 0

    def cycle() -> None:
        nonlocal count
        count += 1
        if count % 4 == 2:  # decoded into records by the compiled core
            assert len(ip.routes(table=TABLE)) == ROUTES
            return
        if count % 4:
            # Without strict checking the kernel dumps every table: count table 100's.
            assert sum(m.payload[4] == TABLE for m in sock.dump(routes, timeout=WAIT)) == ROUTES
            return
        with Socket(netlink.NETLINK_ROUTE, netns=netns) as fresh:
            dump = fresh.dump(routes, timeout=WAIT)
            next(dump)
            assert fresh.transact(lo, timeout=WAIT) is not None
            dump.close()

    try:
        assert_steady(cycle, 1_000)
    finally:
        sock.close()
        ip.close()
    assert usage().fds == fds
