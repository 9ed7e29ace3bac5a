"""LockSpace.acquire_async() for local lockspaces: leases awaited without blocking the
event loop, queued in arrival order like FileLock's, ended by release_owner() and by
cancellation, and the same leases as the blocking acquire(wait=True) gives."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest
from lwasync import open_fds
from lwfcntl import OtherProcess, kernel_waiters
from lwtest import BOUND, WAIT

from latchwire import LockCancelled, LockSpace, LockTimeout, _asynclock

pytestmark = pytest.mark.usefixtures("ofd_in_this_process")

TASKS = 1000


def helper_threads() -> int:
    return sum(t.name.startswith("latchwire-wait") for t in threading.enumerate())


def left_behind() -> int:
    return sum(len(g) for g in _asynclock._gates.values()) + len(_asynclock._gate_of)


def test_awaited_leases_are_the_blocking_ones(tmp_path: Path) -> None:
    """acquire_async gives the lease acquire(wait=True) gives: exclusive, shared joins,
    held() lists it with its owners, release() ends it and deletes the autocreated file."""
    space = LockSpace(tmp_path)

    async def main() -> None:
        await space.acquire_async("vm1", owner="a")
        assert space.held() == [("vm1", "exclusive", ("a",))]
        space.release("vm1", owner="a")
        await space.acquire_async("disk", owner="a", shared=True)
        await space.acquire_async("disk", owner="b", shared=True)
        assert space.held() == [("disk", "shared", ("a", "b"))]
        with pytest.raises(RuntimeError, match="already holds or awaits"):
            await space.acquire_async("disk", owner="a", shared=True)
        space.release("disk", owner="a")
        space.release("disk", owner="b")

    asyncio.run(main())
    assert space.held() == []
    assert not list(tmp_path.iterdir()), "an autocreated resource file was left"
    assert left_behind() == 0


def test_a_thousand_owners_pass_one_lease_in_order_without_threads(tmp_path: Path) -> None:
    """1,000 owners await one lease an owner holds: each gets it alone, in the order
    asked, with no helper thread; afterwards the lockspace holds and awaits nothing."""
    space = LockSpace(tmp_path)
    order: list[int] = []
    inside = [0]
    breaches: list[int] = []
    peak_threads = [0]

    async def owner(who: int) -> None:
        await space.acquire_async("r", owner=who, timeout=WAIT)
        if inside[0]:
            breaches.append(who)
        inside[0] += 1
        order.append(who)
        peak_threads[0] = max(peak_threads[0], helper_threads())
        await asyncio.sleep(0)
        inside[0] -= 1
        space.release("r", owner=who)

    async def main() -> float:
        await space.acquire_async("r", owner="first")
        tasks = []
        for who in range(TASKS):
            tasks.append(asyncio.ensure_future(owner(who)))
            await asyncio.sleep(0)
        begin = time.perf_counter()
        space.release("r", owner="first")
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT * 3)
        return time.perf_counter() - begin

    drained = asyncio.run(main())
    print(f"\n{TASKS} owners passed one lease in {drained * 1e3:.1f} ms, "
          f"peak helper threads {peak_threads[0]}")
    assert not breaches, f"owners {breaches[:5]} held the lease beside another"
    assert order == list(range(TASKS))
    assert peak_threads[0] == 0
    assert space.held() == [] and left_behind() == 0


def test_release_owner_ends_an_awaited_lease_with_lock_cancelled(tmp_path: Path) -> None:
    """release_owner(owner) ends owner's queued wait at once with LockCancelled, from
    another thread too; the next owner in line is still served."""
    space = LockSpace(tmp_path)

    async def main() -> None:
        await space.acquire_async("r", owner="holder")
        doomed = asyncio.ensure_future(space.acquire_async("r", owner="doomed",
                                                           timeout=WAIT))
        patient = asyncio.ensure_future(space.acquire_async("r", owner="patient",
                                                            timeout=WAIT))
        await asyncio.sleep(0.01)
        threading.Thread(target=space.release_owner, args=("doomed",)).start()
        with pytest.raises(LockCancelled):
            await asyncio.wait_for(doomed, BOUND)
        assert not patient.done()
        space.release("r", owner="holder")
        await asyncio.wait_for(patient, WAIT)
        assert space.held() == [("r", "exclusive", ("patient",))]
        space.release("r", owner="patient")

    asyncio.run(main())
    assert space.held() == [] and left_behind() == 0


def test_a_lease_held_by_another_process_is_awaited_by_one_helper(tmp_path: Path) -> None:
    """While another process holds the resource file, 50 owners wait with one helper
    thread (one kernel waiter); a timeout ends on time; all are served once it lets go."""
    space = LockSpace(tmp_path)
    space.create("r")
    path = space.path("r")
    other = OtherProcess(path)
    try:
        other.lock()

        async def main() -> int:
            with pytest.raises(LockTimeout):
                await space.acquire_async("r", owner="hasty", timeout=0.05)
            tasks = [asyncio.ensure_future(space.acquire_async("r", owner=who,
                                                               timeout=WAIT))
                     for who in range(50)]
            deadline = time.monotonic() + BOUND
            while kernel_waiters(path) == 0:
                assert time.monotonic() < deadline, "no wait in the kernel"
                await asyncio.sleep(0.001)
            peak = 0
            for _ in range(10):
                await asyncio.sleep(0.002)
                peak = max(peak, helper_threads(), kernel_waiters(path))
            other.unlock()
            for who, task in enumerate(tasks):
                await asyncio.wait_for(task, WAIT)
                space.release("r", owner=who)
            return peak

        assert asyncio.run(main()) == 1
    finally:
        other.close()
    assert space.held() == [] and left_behind() == 0


def test_random_cancels_leave_no_wait_and_no_lease(tmp_path: Path) -> None:
    """1,000 owners await three leases, shared or not, with random timeouts, while the
    loop cancels random tasks: afterwards every owner can ask again (no wait registered),
    the lockspace holds nothing, no helper thread runs and no descriptor is left open."""
    fds = open_fds(settle=True)
    space = LockSpace(tmp_path)
    rng = random.Random(19)
    ended: dict[str, int] = {}

    async def owner(who: int) -> None:
        name = rng.choice("abc")
        shared = rng.random() < 0.3
        try:
            await space.acquire_async(name, owner=who, shared=shared,
                                      timeout=rng.choice([None, rng.uniform(0, 0.01)]))
        except LockTimeout:
            ended["timeout"] = ended.get("timeout", 0) + 1
            return
        try:
            await asyncio.sleep(rng.choice([0, 0.0005]))
        finally:
            space.release(name, owner=who)
        ended["held"] = ended.get("held", 0) + 1

    async def main() -> None:
        tasks: list[asyncio.Task[None]] = []
        for who in range(TASKS):
            tasks.append(asyncio.ensure_future(owner(who)))
            if rng.random() < 0.3:
                rng.choice(tasks).cancel()
            if rng.random() < 0.5:
                await asyncio.sleep(0)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True),
                                         WAIT * 3)
        ended["cancelled"] = sum(isinstance(r, asyncio.CancelledError) for r in results)
        for who in range(TASKS):  # nobody still counts as awaiting
            await space.acquire_async("a", owner=who, timeout=WAIT)
            space.release("a", owner=who)

    asyncio.run(main())
    print(f"\nended: {ended}")
    assert ended.get("held", 0) > 0 and ended["cancelled"] > 0
    assert space.held() == []
    assert helper_threads() == 0
    assert left_behind() == 0
    assert open_fds() <= fds, "a descriptor was left open"
