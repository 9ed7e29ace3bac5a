"""FileLock.acquire_async() with many tasks: they queue on the event loop in arrival
order, hand the lock on without threads, and use at most one helper thread per lock
file and loop while the lock is held elsewhere; random cancellations and timeouts leave
nothing held, queued, open or running.

Each task has a FileLock object of its own on one fresh file (they share the process's
record of it), and every section is checked against the others in the loop (an in-loop
witness) and, where it says so, against another process (plain fcntl).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable

import pytest
from lwasync import open_fds
from lwfcntl import OtherProcess, kernel_waiters
from lwfcntl import fcntl_probe as probe
from lwtest import BOUND, WAIT, new_lock

from latchwire import FileLock, LockCancelled, LockTimeout

TASKS = 1000


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("latchwire-wait")]


def gates_left() -> int:
    """The gates left, of any event loop, and the locks still linked to one: a gate is
    forgotten once nothing is queued on it, held through it or waited for by its helper
    thread, and a lock is unlinked once it is neither."""
    from latchwire import _asynclock
    return sum(len(gates) for gates in _asynclock._gates.values()) + len(_asynclock._gate_of)


class Section:
    """The in-loop witness: who is inside, in which mode; every breach recorded."""

    def __init__(self) -> None:
        self.exclusive = 0
        self.shared = 0
        self.breaches: list[str] = []
        self.order: list[int] = []
        self.peak_shared = 0
        self.peak_helpers = 0

    def enter(self, who: int, shared: bool) -> None:
        if self.exclusive or (not shared and self.shared):
            self.breaches.append(f"{who} ({'shared' if shared else 'exclusive'}) entered beside "
                                 f"{self.exclusive} exclusive and {self.shared} shared")
        if shared:
            self.shared += 1
            self.peak_shared = max(self.peak_shared, self.shared)
        else:
            self.exclusive += 1
        self.order.append(who)
        self.peak_helpers = max(self.peak_helpers, len(helper_threads()))

    def leave(self, shared: bool) -> None:
        if shared:
            self.shared -= 1
        else:
            self.exclusive -= 1


async def until(condition: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


def test_a_thousand_tasks_pass_one_at_a_time_in_arrival_order_without_threads(
        lockfile: str) -> None:
    """1,000 tasks, each with its own FileLock, queue for a lock one of them holds: each
    gets it alone, in the order it asked, and no helper thread ever runs (every hand-off is
    a release callback in the loop); afterwards no gate, thread or descriptor is left."""
    fds = open_fds(settle=True)
    section = Section()

    async def task(who: int, lock: FileLock, started: asyncio.Event) -> None:
        acquiring = lock.acquire_async(timeout=WAIT)
        started.set()
        async with acquiring:
            section.enter(who, False)
            await asyncio.sleep(0)
            section.leave(False)

    async def main() -> float:
        first = new_lock(lockfile)
        await first.acquire_async()
        locks = [new_lock(lockfile) for _ in range(TASKS)]
        tasks = []
        for who, lock in enumerate(locks):
            started = asyncio.Event()
            tasks.append(asyncio.ensure_future(task(who, lock, started)))
            await started.wait()
            await asyncio.sleep(0)  # the task has queued before the next one asks
        begin = time.perf_counter()
        first.release()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        return time.perf_counter() - begin

    drained = asyncio.run(main())
    print(f"\n{TASKS} tasks drained in {drained * 1e3:.1f} ms, peak helper threads "
          f"{section.peak_helpers}")
    assert not section.breaches, section.breaches[:5]
    assert section.order == list(range(TASKS)), "the tasks were not served in arrival order"
    assert section.peak_helpers == 0, "a hand-off between tasks used a helper thread"
    assert gates_left() == 0 and not helper_threads()
    assert open_fds() <= fds, "a descriptor was left open"
    assert probe(lockfile) == "free"


def test_tasks_queued_behind_another_process_use_one_helper_thread(
        lockfile: str, other: OtherProcess) -> None:
    """While another process holds the file, 200 queued tasks keep one helper thread at
    most waiting in the kernel (one kernel waiter); once it lets go they all pass, one at a
    time, and another process sees the lock held inside every section."""
    other.lock()
    section = Section()
    peak_waiters = 0

    async def task(who: int) -> None:
        async with new_lock(lockfile).acquire_async(timeout=WAIT):
            section.enter(who, False)
            if who % 50 == 0:
                assert probe(lockfile) == "busy", f"task {who} held nothing in the kernel"
            await asyncio.sleep(0)
            section.leave(False)

    async def main() -> None:
        nonlocal peak_waiters
        tasks = [asyncio.ensure_future(task(who)) for who in range(200)]
        await until(lambda: kernel_waiters(lockfile) > 0, "the head waits in the kernel")
        for _ in range(20):
            await asyncio.sleep(0.002)
            peak_waiters = max(peak_waiters, kernel_waiters(lockfile))
            section.peak_helpers = max(section.peak_helpers, len(helper_threads()))
        other.unlock()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    asyncio.run(main())
    assert not section.breaches, section.breaches[:5]
    assert sorted(section.order) == list(range(200))
    assert section.peak_helpers == 1, f"{section.peak_helpers} helper threads at once"
    assert peak_waiters == 1, f"{peak_waiters} requests waited in the kernel at once"
    assert gates_left() == 0
    assert probe(lockfile) == "free"


def test_shared_neighbours_are_granted_together_and_a_writer_keeps_later_readers_out(
        lockfile: str) -> None:
    """Behind an exclusive holder: S1 and S2 (shared) then X3 (exclusive) then S4. The
    release lets S1 and S2 in together; X3 waits for both and S4 for X3 (a waiting writer
    keeps later readers out, in this loop)."""
    order: list[str] = []
    inside: set[str] = set()
    breaches: list[str] = []

    async def task(name: str, shared: bool, go: asyncio.Event) -> None:
        async with new_lock(lockfile).acquire_async(shared=shared, timeout=WAIT):
            if (not shared and inside) or any(not n.startswith("S") for n in inside):
                breaches.append(f"{name} entered beside {sorted(inside)}")
            inside.add(name)
            order.append(name)
            await go.wait()
            inside.discard(name)

    async def main() -> None:
        holder = new_lock(lockfile)
        await holder.acquire_async()
        go = asyncio.Event()
        tasks = []
        for name, shared in (("S1", True), ("S2", True), ("X3", False), ("S4", True)):
            tasks.append(asyncio.ensure_future(task(name, shared, go)))
            await asyncio.sleep(0)
        holder.release()
        await until(lambda: inside == {"S1", "S2"}, "S1 and S2 hold together")
        for _ in range(5):
            await asyncio.sleep(0)
        assert inside == {"S1", "S2"}, f"{sorted(inside)} inside: X3 or S4 got in too"
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    asyncio.run(main())
    assert not breaches, breaches
    assert order[:2] in (["S1", "S2"], ["S2", "S1"]) and order[2:] == ["X3", "S4"], order


def test_a_release_or_downgrade_in_another_thread_hands_the_lock_on(lockfile: str) -> None:
    """A task's hold released by another thread (holds belong to no thread) hands the lock
    to the next task; a downgrade lets queued shared tasks in at once."""

    async def main() -> None:
        first = new_lock(lockfile)
        await first.acquire_async()
        second = asyncio.ensure_future(new_lock(lockfile).acquire_async(timeout=WAIT))
        await asyncio.sleep(0.01)
        assert not second.done()
        threading.Thread(target=first.release).start()
        got = await asyncio.wait_for(second, WAIT)
        assert got.locked
        readers = [asyncio.ensure_future(new_lock(lockfile).acquire_async(shared=True,
                                                                          timeout=WAIT))
                   for _ in range(3)]
        await asyncio.sleep(0.01)
        assert not any(r.done() for r in readers)
        got.downgrade()
        held = await asyncio.wait_for(asyncio.gather(*readers), WAIT)
        assert all(lock.mode == "shared" for lock in held)
        for lock in [got, *held]:
            lock.release()

    asyncio.run(main())
    assert gates_left() == 0
    assert probe(lockfile) == "free"


def test_random_cancels_and_timeouts_leave_nothing_behind(lockfile: str,
                                                          other: OtherProcess) -> None:
    """1,000 tasks on one file, each with its own FileLock, shared or exclusive, with
    random timeouts, while the loop cancels random tasks at random moments and another
    process takes the file now and then: every task ends held-and-released, cancelled or
    timed out; nobody is inside beside a writer; at the end nothing is held, queued,
    waiting in a thread or in the kernel, and no descriptor is left open."""
    fds = open_fds(settle=True)
    section = Section()
    rng = random.Random(14)
    outcomes: dict[str, int] = {}
    locks = [new_lock(lockfile) for _ in range(TASKS)]

    async def task(who: int) -> None:
        shared = rng.random() < 0.3
        timeout = rng.choice([None, rng.uniform(0, 0.02)])
        try:
            async with locks[who].acquire_async(timeout=timeout, shared=shared):
                section.enter(who, shared)
                try:
                    await asyncio.sleep(rng.choice([0, 0, 0.0005]))
                finally:  # a cancel inside the section leaves it too
                    section.leave(shared)
            outcome = "held"
        except LockTimeout:
            outcome = "timeout"
        except asyncio.CancelledError:
            outcome = "cancelled"
        except LockCancelled:
            outcome = "wait cancelled"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    sent = 0

    async def main() -> None:
        nonlocal sent
        tasks: list[asyncio.Task[None]] = []
        for who in range(TASKS):
            tasks.append(asyncio.ensure_future(task(who)))
            if rng.random() < 0.3:
                rng.choice(tasks).cancel()
            if who % 100 == 50:  # the other process takes the file if it is free
                other.send("lock ex")
                sent += 1
            if who % 100 == 70:
                other.send("unlock")
                sent += 1
            if rng.random() < 0.5:
                await asyncio.sleep(0)
            if rng.random() < 0.05:
                await asyncio.sleep(0.001)
        ended = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True),
                                       WAIT * 3)
        # A task cancelled before its first step never ran its body.
        unstarted = sum(isinstance(e, asyncio.CancelledError) for e in ended)
        outcomes["cancelled before it ran"] = unstarted

    asyncio.run(main())
    for _ in range(sent):
        other.reply()
    print(f"\noutcomes: {outcomes}, peak helper threads {section.peak_helpers}")
    assert not section.breaches, section.breaches[:5]
    assert sum(outcomes.values()) == TASKS
    assert outcomes.get("held", 0) > 0 and outcomes.get("cancelled", 0) > 0
    assert not any(lock.locked for lock in locks), "a lock is still held"
    deadline = time.monotonic() + BOUND
    while helper_threads() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not helper_threads(), "a helper thread still runs"
    assert kernel_waiters(lockfile) == 0
    assert gates_left() == 0
    locks.clear()
    assert open_fds() <= fds, "a descriptor was left open (or kept by a reference cycle)"
    assert probe(lockfile) == "free"


@pytest.mark.parametrize("tasks", [2, 100])
def test_a_task_timing_out_behind_the_queue_does_not_stall_it(lockfile: str,
                                                              tasks: int) -> None:
    """Tasks with short timeouts queued behind a holder time out on time and leave the
    queue; the ones without a timeout are served once the holder lets go."""

    async def main() -> tuple[int, int]:
        holder = new_lock(lockfile)
        await holder.acquire_async()
        patient = [asyncio.ensure_future(new_lock(lockfile).acquire_async(timeout=WAIT))
                   for _ in range(tasks)]
        hasty = [asyncio.ensure_future(new_lock(lockfile).acquire_async(timeout=0.01))
                 for _ in range(tasks)]
        done = await asyncio.gather(*hasty, return_exceptions=True)
        timed_out = sum(isinstance(d, LockTimeout) for d in done)
        holder.release()
        served = 0
        for waiter in patient:
            lock = await asyncio.wait_for(waiter, WAIT)
            served += 1
            lock.release()
        return timed_out, served

    assert asyncio.run(main()) == (tasks, tasks)
    assert gates_left() == 0


def test_cancel_ends_a_queued_wait_at_once(lockfile: str) -> None:
    """FileLock.cancel(), from another thread, ends that object's queued acquire_async()
    with LockCancelled at once (the head of the queue and one behind it), and leaves the
    rest of the queue waiting its turn."""

    async def main() -> None:
        holder = new_lock(lockfile)
        await holder.acquire_async()
        locks = [new_lock(lockfile) for _ in range(3)]
        waits = [asyncio.ensure_future(lock.acquire_async(timeout=WAIT)) for lock in locks]
        await asyncio.sleep(0.01)
        for index in (0, 1):
            threading.Thread(target=locks[index].cancel).start()
            with pytest.raises(LockCancelled):
                await asyncio.wait_for(waits[index], BOUND)
        assert not waits[2].done()
        holder.release()
        assert (await asyncio.wait_for(waits[2], WAIT)) is locks[2]
        locks[2].release()

    asyncio.run(main())
    assert gates_left() == 0
    assert probe(lockfile) == "free"


def test_anyio_on_asyncio_queues_and_trio_gets_a_clear_error(lockfile: str) -> None:
    """Under anyio's asyncio backend, acquire_async() queues as under plain asyncio; under
    trio (anyio's trio backend) it raises a RuntimeError that says what to do instead."""
    anyio = pytest.importorskip("anyio")
    order: list[int] = []

    async def on_asyncio() -> None:
        holder = new_lock(lockfile)
        await holder.acquire_async()

        async def task(who: int) -> None:
            async with new_lock(lockfile).acquire_async(timeout=WAIT):
                order.append(who)

        async with anyio.create_task_group() as group:
            for who in range(20):
                group.start_soon(task, who)
                await anyio.sleep(0)
            holder.release()

    async def on_trio() -> str:
        with pytest.raises(RuntimeError, match="asyncio event loop") as refused:
            await new_lock(lockfile).acquire_async()
        return str(refused.value)

    anyio.run(on_asyncio, backend="asyncio")
    assert order == list(range(20))
    assert "trio.to_thread.run_sync" in anyio.run(on_trio, backend="trio")
    assert gates_left() == 0
    assert probe(lockfile) == "free"
