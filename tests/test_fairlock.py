"""Fair file locks (``FileLock(fair=True)``, ``LockSpace(fair=True)``), across real
threads and processes: arrival order, shared waiters granted together, a waiting
writer keeping later readers out, a killed waiter not blocking the queue, a kill
storm with a witness log, fair and unfair users of one file, the queue file's life.

Arrival order is checked where it is known: a waiter is started only once the one
before it is seen queued (its ticket in /proc/locks). The contention test compares
the fair and the unfair lock in one run; its throughput figures are for the report,
``bench/compare.py fair`` measures them properly.
"""

from __future__ import annotations

import asyncio
import errno
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from lwfcntl import fcntl_probe, inode_key
from lwtest import LATCHWIRE, WAIT, join_all, run_cli
from lwthreads import poll_until
from storm_worker import WorkerPool
from witness import Witness, check

from latchwire import FileLock, LockBusy, LockCancelled, LockSpace, LockTimeout
from latchwire._core import QUEUE_SUFFIX

FORK = multiprocessing.get_context("fork")
sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # after tests/helpers
from part_fair import contended_round  # noqa: E402 - the benchmark's own measurement


def tickets(lock: FileLock) -> int:
    """How many waiters hold a ticket in lock's queue (granted one-byte locks past byte 0
    of the queue file, in /proc/locks)."""
    assert lock.queuefile is not None
    try:
        key = inode_key(lock.queuefile)
    except FileNotFoundError:
        return 0
    count = 0
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields or key not in fields:
                continue
            start, end = fields[-2], fields[-1]
            if start == end and start != "0":
                count += 1
    return count


def queue_locks(lock: FileLock) -> list[str]:
    """Every /proc/locks line of lock's queue file (none once nobody waits)."""
    assert lock.queuefile is not None
    if not os.path.exists(lock.queuefile):
        return []
    key = inode_key(lock.queuefile)
    with open("/proc/locks") as f:
        return [line.strip() for line in f if key in line.split()]


def fair(path: Path | str) -> FileLock:
    return FileLock(str(path), lockfile=str(path), fair=True)


def queue_threads(holder: FileLock, target: Callable[..., object],
                  args: list[tuple[object, ...]]) -> list[threading.Thread]:
    """A thread for each args, each started once the one before is queued behind holder."""
    threads = []
    for n, arg in enumerate(args):
        thread = threading.Thread(target=target, args=arg)
        thread.start()
        threads.append(thread)
        poll_until(lambda k=n + 1: tickets(holder) == k, f"waiter {arg} queued", WAIT)
    return threads


# ---------------------------------------------------------------------------
# Order


def test_threads_are_served_in_arrival_order(tmp_path: Path) -> None:
    """Eight threads, each with its own fair FileLock, queue one after another behind
    a holder; they are granted in exactly that order."""
    path = tmp_path / "lock"
    holder = fair(path)
    holder.acquire()
    order: list[int] = []

    def waiter(i: int) -> None:
        lock = fair(path)
        lock.acquire(timeout=WAIT)
        order.append(i)
        lock.release()

    threads = queue_threads(holder, waiter, [(i,) for i in range(8)])
    holder.release()
    for thread in threads:
        thread.join(WAIT)
    assert order == list(range(8))
    assert queue_locks(holder) == []


def _queued_process(path: str, i: int, out: Connection) -> None:
    lock = fair(path)
    lock.acquire(timeout=WAIT)
    out.send((i, time.monotonic_ns()))
    time.sleep(0.005)
    lock.release()


def test_processes_are_served_in_arrival_order(tmp_path: Path) -> None:
    """Six processes queue one after another behind a holder in a seventh; the grants
    come in arrival order (the unfair kernel lock gives no such order)."""
    path = str(tmp_path / "lock")
    holder = fair(path)
    holder.acquire()
    reader, writer = FORK.Pipe(duplex=False)
    procs = []
    for i in range(6):
        proc = FORK.Process(target=_queued_process, args=(path, i, writer))
        proc.start()
        procs.append(proc)
        poll_until(lambda n=i + 1: tickets(holder) == n, f"process {i} queued", WAIT)
    holder.release()
    grants = [reader.recv() for _ in procs]
    join_all(procs, WAIT)
    assert [i for i, _ in sorted(grants, key=lambda g: g[1])] == list(range(6))


def test_adjacent_shared_waiters_go_together_and_a_waiting_writer_keeps_later_ones_out(
        tmp_path: Path) -> None:
    """Behind an exclusive holder queue R1, R2 (shared), W (exclusive), R3 (shared):
    R1 and R2 hold together; W only after both left; R3 only after W, though R3 could
    have joined R1 and R2 (the unfair shared() lets it)."""
    path = tmp_path / "lock"
    holder = fair(path)
    holder.acquire()
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def note(what: str, who: str) -> None:
        with lock:
            events.append((what, who))

    def waiter(who: str, shared: bool) -> None:
        mine = fair(path)
        mine.acquire(timeout=WAIT, shared=shared)
        note("in", who)
        time.sleep(0.1)
        note("out", who)
        mine.release()

    threads = queue_threads(holder, waiter, [("R1", True), ("R2", True), ("W", False),
                                             ("R3", True)])
    holder.release()
    for thread in threads:
        thread.join(WAIT)
    at = {event: i for i, event in enumerate(events)}
    assert max(at["in", "R1"], at["in", "R2"]) < min(at["out", "R1"], at["out", "R2"]), events
    assert at["in", "W"] > max(at["out", "R1"], at["out", "R2"]), events
    assert at["in", "R3"] > at["out", "W"], events


def test_four_contending_processes_overtake_a_waiter_at_most_once(tmp_path: Path) -> None:
    """Four processes loop on one file (hold 0.1 ms, no pause between holds; the
    measurement is ``bench/compare.py fair``'s, see bench/part_fair.py). With
    fair=True no waiter is overtaken more than once in a row by later arrivals (one:
    a later arrival may pass a waiter between its arrival and its ticket); with the
    kernel's order runs of hundreds are common. Preemption between the clock reading
    and the ticket makes a waiter arrive later than its stamp says: such waits are
    counted apart (and reported). Fair throughput is at least half the unfair one's."""
    path = str(tmp_path / "lock")
    unfair_rate, unfair_run = contended_round("unfair", path, 1.5)
    fair_rate, fair_run = contended_round("fair", path, 1.5)
    print(f"unfair: {unfair_rate:.0f}/s, longest overtake run {unfair_run}; fair: "
          f"{fair_rate:.0f}/s, longest run {fair_run}; throughput {fair_rate / unfair_rate:.2f}x")
    assert fair_run <= 1
    assert fair_rate >= 0.5 * unfair_rate


# ---------------------------------------------------------------------------
# Deaths, timeouts, cancels


def _waiter_process(path: str, out: Connection) -> None:
    lock = fair(path)
    lock.acquire(timeout=WAIT)
    out.send(time.monotonic_ns())
    lock.release()


def test_a_killed_waiter_does_not_block_the_queue(tmp_path: Path) -> None:
    """W1 and W2 queue behind a holder; W1 is SIGKILLed while it waits; when the holder
    releases, W2 is granted at once: within 10 ms (the best of three trials; every
    trial within a second), the kernel dropped W1's ticket with its descriptor."""
    path = str(tmp_path / "lock")
    latencies = []
    for _ in range(3):
        holder = fair(path)
        holder.acquire()
        first = FORK.Process(target=_waiter_process, args=(path, FORK.Pipe()[1]))
        first.start()
        poll_until(lambda h=holder: tickets(h) == 1, "W1 queued", WAIT)
        reader, writer = FORK.Pipe(duplex=False)
        second = FORK.Process(target=_waiter_process, args=(path, writer))
        second.start()
        poll_until(lambda h=holder: tickets(h) == 2, "W2 queued", WAIT)
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        first.join(WAIT)
        poll_until(lambda h=holder: tickets(h) == 1, "W1's ticket gone", WAIT)
        released = time.monotonic_ns()
        holder.release()
        assert reader.poll(WAIT), "W2 was never granted the lock"
        latencies.append((reader.recv() - released) / 1e9)
        join_all([second], WAIT)
    print(f"W2 granted {', '.join(f'{s * 1e3:.2f}' for s in latencies)} ms after the release")
    assert min(latencies) < 0.010
    assert max(latencies) < 1.0


class HeldElsewhere:
    """lock held by a thread of its own until release()."""

    def __init__(self, lock: FileLock) -> None:
        self.lock = lock
        self._got = threading.Event()
        self._leave = threading.Event()
        self._thread = threading.Thread(target=self._hold)
        self._thread.start()
        assert self._got.wait(WAIT)

    def _hold(self) -> None:
        with self.lock:
            self._got.set()
            self._leave.wait(WAIT)

    def release(self) -> None:
        self._leave.set()
        self._thread.join(WAIT)


def test_timeouts_cancels_and_busy_leave_no_ticket(tmp_path: Path) -> None:
    """A fair wait that times out, one cancelled, and a non-blocking try refused (there
    is a waiter queued: it must not overtake it) leave nothing in the queue file."""
    path = tmp_path / "lock"
    holder = HeldElsewhere(fair(path))
    with pytest.raises(LockTimeout):
        fair(path).acquire(timeout=0.05)
    assert tickets(holder.lock) == 0
    lock = fair(path)
    threading.Timer(0.1, lock.cancel).start()
    with pytest.raises(LockCancelled):
        lock.acquire(timeout=WAIT)
    assert tickets(holder.lock) == 0
    queued = fair(path)
    thread = threading.Thread(target=lambda: (queued.acquire(timeout=WAIT), queued.release()))
    thread.start()
    poll_until(lambda: tickets(holder.lock) == 1, "a waiter queued", WAIT)
    with pytest.raises(LockBusy, match="queued"):
        lock.acquire(blocking=False)
    holder.release()
    thread.join(WAIT)
    # Nobody holds or waits now: a non-blocking try succeeds.
    lock.acquire(blocking=False)
    lock.release()
    assert queue_locks(lock) == []


def test_a_non_blocking_try_does_not_overtake_a_queued_waiter(tmp_path: Path) -> None:
    """While a waiter is queued behind an unfair holder (which does not queue), a
    non-blocking fair try is refused (LockBusy): it must not pass the queued waiter
    when the holder lets go."""
    path = tmp_path / "lock"
    holder = HeldElsewhere(FileLock(str(path), lockfile=str(path)))  # unfair: not queued
    queued = fair(path)
    got = threading.Event()
    leave = threading.Event()

    def wait() -> None:
        queued.acquire(timeout=WAIT)
        got.set()
        leave.wait(WAIT)
        queued.release()

    thread = threading.Thread(target=wait)
    thread.start()
    poll_until(lambda: tickets(queued) == 1, "a waiter queued", WAIT)
    with pytest.raises(LockBusy, match="queued"):
        fair(path).acquire(blocking=False)
    holder.release()
    assert got.wait(WAIT)
    leave.set()
    thread.join(WAIT)


def _storm(tmp_path: Path, workers: int, kills: int, fair_of: Callable[[int], bool]) -> None:
    lockfile = str(tmp_path / "storm.lock")
    witness = Witness(tmp_path / "witness")
    pool = WorkerPool(tmp_path / "witness", lockfile, tmp_path / "workers.err")
    rng = random.Random(11)
    failures: list[str] = []
    statuses: list[str] = []
    serial = 0
    try:
        for _ in range(workers):
            pool.spawn(1, serial, fair_of(serial))
            serial += 1
        for k in range(kills):
            time.sleep(rng.random() * 0.006)  # not a wait for anything: when the next kill lands
            status = pool.kill(rng.choice(pool.running))
            if status != "signal9":
                failures.append(f"kill {k}: the worker ended with {status}, not by SIGKILL")
            pool.spawn(1, serial, fair_of(serial))
            serial += 1
        statuses = [pool.stop(tag) for tag in list(pool.running)]
    finally:
        pool.close()
        witness.close()
    if any(status != "0" for status in statuses) or pool.errors():
        failures.append(f"workers stopped with {statuses}; their errors:\n{pool.errors()}")
    report = check(tmp_path / "witness")
    assert report.clean and not failures, report.summary() + "\n" + "\n".join(failures)
    assert report.kills >= kills
    last = fair(lockfile)
    last.acquire(timeout=1.0)  # nothing stuck in the queue
    assert tickets(last) == 0
    last.release()
    print(report.summary())


def test_a_kill_storm_of_fair_waiters_and_holders(tmp_path: Path) -> None:
    """Eight processes loop on fair FileLocks of one file (waits, 2 ms timeouts,
    non-blocking tries, a quarter shared, some remove()s of the file and its queue),
    and 1,000 times a random one is SIGKILLed (holding, queued or between) and
    replaced: no two holders ever (the witness log), no waiter stuck (every wait is
    bounded and none reached its bound), nothing left in the queue afterwards."""
    _storm(tmp_path, 8, 1000, lambda _: True)


def test_fair_and_unfair_users_of_one_file_still_exclude_each_other(tmp_path: Path) -> None:
    """Four fair and four unfair processes on one file, 200 of them SIGKILLed: the
    unfair ones do not queue (they may overtake fair waiters), but nobody ever holds
    with anybody else, and nobody is stuck."""
    _storm(tmp_path, 8, 200, lambda n: n % 2 == 0)


def test_a_fair_lock_excludes_lockf_users_both_ways(tmp_path: Path) -> None:
    """The queue orders; the lock file's own lock still excludes classic POSIX users
    (lockf in another process) as an unfair lock does."""
    path = str(tmp_path / "lock")
    lock = fair(path)
    lock.acquire()
    assert fcntl_probe(path, "ex") == "busy"
    lock.release()
    assert fcntl_probe(path, "ex") == "free"


# ---------------------------------------------------------------------------
# The queue file


def test_remove_takes_the_queue_file_with_it_unless_someone_waits(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    lock = fair(path)
    assert lock.queuefile == f"{path}.~queue~"
    lock.acquire()
    assert os.path.exists(lock.queuefile)
    lock.remove()
    assert not os.path.exists(lock.queuefile) and not path.exists()
    # With a waiter queued, the queue stays (its ticket is there) and the waiter moves
    # on to the new lock file, keeping its place.
    lock.acquire()
    waiter = fair(path)
    thread = threading.Thread(target=lambda: (waiter.acquire(timeout=WAIT), waiter.release()))
    thread.start()
    poll_until(lambda: tickets(lock) == 1, "a waiter queued", WAIT)
    lock.remove()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert os.path.exists(lock.queuefile)


def test_a_queue_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    (tmp_path / "elsewhere").write_text("")
    os.symlink(tmp_path / "elsewhere", f"{path}.~queue~")
    with pytest.raises(OSError) as caught:
        fair(path).acquire(timeout=1)
    assert caught.value.errno == errno.ELOOP


def test_a_fork_child_does_not_keep_a_waiting_threads_ticket(tmp_path: Path) -> None:
    """A thread waits in the queue while another thread forks: the child closes its
    copy of the wait's queue descriptor at once, so the ticket goes when the parent's
    wait ends (here: its timeout), not when the child exits."""
    path = tmp_path / "lock"
    holder = HeldElsewhere(FileLock(str(path), lockfile=str(path)))
    lock = fair(path)
    timed_out = []

    def wait() -> None:
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.5)
        timed_out.append(True)

    waiting = threading.Thread(target=wait)
    waiting.start()
    poll_until(lambda: tickets(lock) == 1, "the thread queued", WAIT)
    queue = os.stat(f"{path}.~queue~")
    read, write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: does it have a descriptor of the queue file?
        try:
            os.close(go_write)
            found = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    st = os.stat(f"/proc/self/fd/{fd}")
                except OSError:
                    continue
                found += (st.st_dev, st.st_ino) == (queue.st_dev, queue.st_ino)
            os.write(write, bytes([found]))
            os.read(go_read, 1)  # lives on until the parent has looked
        finally:
            os._exit(0)
    os.close(write)
    os.close(go_read)
    try:
        found = os.read(read, 1)
        waiting.join(WAIT)
        assert found == b"\0", "the child inherited the queue descriptor"
        assert timed_out
        assert tickets(lock) == 0, "the ticket outlived the wait"
    finally:
        os.close(read)
        os.close(go_write)
        os.waitpid(pid, 0)
        holder.release()


# ---------------------------------------------------------------------------
# Lockspaces


def test_a_fair_lockspace_serves_owners_in_arrival_order(tmp_path: Path) -> None:
    """Owners waiting for one resource of a fair LockSpace are granted in arrival order;
    the resource's last release deletes its file and its queue file."""
    space = LockSpace(tmp_path / "space", fair=True)
    space.acquire("disk", owner="holder")
    order: list[int] = []
    threads = []
    probe = FileLock(str(tmp_path / "space" / "disk"), lockfile=str(tmp_path / "space" / "disk"),
                     fair=True)

    def waiter(i: int) -> None:
        space.acquire("disk", owner=i, wait=True, timeout=WAIT)
        order.append(i)
        space.release("disk", owner=i)

    for i in range(5):
        thread = threading.Thread(target=waiter, args=(i,))
        thread.start()
        threads.append(thread)
        poll_until(lambda n=i + 1: tickets(probe) == n, f"owner {i} queued", WAIT)
    space.release("disk", owner="holder")
    for thread in threads:
        thread.join(WAIT)
    assert order == list(range(5))
    assert sorted(os.listdir(tmp_path / "space")) == []
    with pytest.raises(ValueError, match="queue"):
        space.acquire("disk.~queue~")


# ---------------------------------------------------------------------------
# The command line


def test_latchwire_lock_fair_queues_in_order_and_locks_hides_the_queue(
        tmp_path: Path) -> None:
    """Two ``latchwire lock --fair`` commands queued one after the other behind a
    holder run in that order; ``latchwire locks DIR`` meanwhile lists the lock file's
    holder and not the queue file (whose tickets are no holds of a lock)."""
    path = tmp_path / "d" / "lock"
    path.parent.mkdir()
    out = tmp_path / "out"
    holder = HeldElsewhere(fair(path))
    commands = []
    for n in (1, 2):
        commands.append(subprocess.Popen(
            [*LATCHWIRE, "lock", "--fair", "--file", str(path), "--", "sh", "-c",
             f"echo {n} >> {out}"]))
        poll_until(lambda k=n: tickets(holder.lock) == k, f"command {n} queued", WAIT)
    listed = run_cli("locks", str(path.parent))
    holder.release()
    for command in commands:
        assert command.wait(WAIT) == 0
    assert out.read_text().split() == ["1", "2"]
    assert listed.returncode == 0, listed.stderr
    assert str(path) in listed.stdout and QUEUE_SUFFIX not in listed.stdout, listed.stdout


def test_acquire_async_of_a_fair_lock_queues_too(tmp_path: Path) -> None:
    """acquire_async() of a fair FileLock waits in the same queue: behind a waiter that
    queued first, it is granted second."""
    path = tmp_path / "lock"
    holder = HeldElsewhere(fair(path))
    order: list[str] = []
    first = fair(path)
    thread = threading.Thread(target=lambda: (first.acquire(timeout=WAIT), order.append("thread"),
                                              first.release()))
    thread.start()
    poll_until(lambda: tickets(holder.lock) == 1, "the thread queued", WAIT)

    async def main() -> None:
        lock = fair(path)
        waiting = asyncio.ensure_future(_async_take(lock, order))
        await asyncio.sleep(0)
        deadline = time.monotonic() + WAIT
        while tickets(holder.lock) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        holder.release()
        await asyncio.wait_for(waiting, WAIT)

    asyncio.run(main())
    thread.join(WAIT)
    assert order == ["thread", "task"]


async def _async_take(lock: FileLock, order: list[str]) -> None:
    async with lock.acquire_async(timeout=WAIT):
        order.append("task")


def test_locks_waiters_shows_a_fair_queue_in_ticket_order(tmp_path: Path) -> None:
    """``latchwire locks --waiters PATH`` lists a fair lock's waiters as one queue: the
    head, waiting for the lock file, then those waiting in the queue file (STATE
    queued), in the order they arrived."""
    path = tmp_path / "lock"
    holder = HeldElsewhere(fair(path))
    tids: list[int] = []

    def waiter() -> None:
        tids.append(threading.get_native_id())
        lock = fair(path)
        lock.acquire(timeout=WAIT)
        lock.release()

    threads = queue_threads(holder.lock, waiter, [(), (), ()])
    poll_until(lambda: len(tids) == 3, "three waiters", WAIT)
    listed = run_cli("locks", "--waiters", "--json", str(path))
    text = run_cli("locks", "--waiters", str(path))
    holder.release()
    for thread in threads:
        thread.join(WAIT)
    assert listed.returncode == 0, listed.stderr
    waiters = json.loads(listed.stdout)["waiters"]
    assert [(w["tid"], w["state"], w["queue"]) for w in waiters] == [
        (tids[0], "waits", 1), (tids[1], "queued", 2), (tids[2], "queued", 3)], waiters
    assert all(w["path"] == str(path) for w in waiters)
    assert text.stdout.count("\tqueued\t") == 2, text.stdout
