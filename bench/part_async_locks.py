"""The ``async-filelock`` part: FileLock.acquire_async() against asyncio.Lock in one
event loop.

Hand-off: two tasks pass one lock back and forth (each waits while the other holds),
in µs per hand-off. Drain: TASKS tasks queue behind a holder, then pass the lock one by
one, in ms for the whole queue, with the helper threads seen meanwhile. FileLock's
tasks each have a FileLock object of their own on one lock file; asyncio.Lock's share
the one lock (it has no other form). asyncio.Lock is the floor: it never leaves the
loop, while a FileLock hand-off also releases and takes the kernel lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from measure import Row, Section, Settings, add_guard, interleave

from latchwire import FileLock

TASKS = 1000
HANDOFFS = 2000
ASYNCIO_LOCK = "asyncio.Lock"
LW_ASYNC = "FileLock.acquire_async"


def helper_threads() -> int:
    return sum(t.name.startswith("latchwire-wait") for t in threading.enumerate())


async def ping_pong(hold: Callable[[int], AbstractAsyncContextManager[object]],
                    handoffs: int) -> float:
    """Seconds per hand-off: two tasks each take the lock, yield to the loop while holding
    it (so the other queues behind), and let go, over and over; each release hands the
    lock to the other task, both locks being first come, first served."""

    async def player(me: int) -> None:
        for _ in range(handoffs // 2):
            async with hold(me):
                await asyncio.sleep(0)

    begin = time.perf_counter()
    await asyncio.gather(player(0), player(1))
    return (time.perf_counter() - begin) / handoffs


async def drain(hold: Callable[[int], AbstractAsyncContextManager[object]],
                first: Callable[[], Awaitable[Callable[[], None]]]) -> tuple[float, int]:
    """(seconds for TASKS queued tasks to pass the lock once each, helper threads seen)."""
    release = await first()
    peak = 0

    async def task(who: int) -> None:
        nonlocal peak
        async with hold(who):
            peak = max(peak, helper_threads())

    tasks = [asyncio.ensure_future(task(who)) for who in range(TASKS)]
    for _ in range(3):
        await asyncio.sleep(0)  # every task has queued
    begin = time.perf_counter()
    release()
    await asyncio.gather(*tasks)
    return time.perf_counter() - begin, peak


def contenders(lockfile: str) -> dict[str, tuple[Callable[[int], AbstractAsyncContextManager[
        object]], Callable[[], Awaitable[Callable[[], None]]]]]:
    alock = asyncio.Lock()
    locks = [FileLock(lockfile, lockfile=lockfile) for _ in range(TASKS)]

    async def first_asyncio() -> Callable[[], None]:
        await alock.acquire()
        return alock.release

    async def first_filelock() -> Callable[[], None]:
        holder = FileLock(lockfile, lockfile=lockfile)
        await holder.acquire_async()
        return holder.release

    return {
        ASYNCIO_LOCK: (lambda who: alock, first_asyncio),
        LW_ASYNC: (lambda who: locks[who].acquire_async(), first_filelock),
    }


def async_filelock_part(s: Settings) -> list[Section]:
    lockfile = str(Path(s.workdir) / "async.lock")
    rounds = 3 if s.quick else 7

    def measure(name: str) -> tuple[float, float, int]:
        async def run() -> tuple[float, float, int]:
            hold, first = contenders(lockfile)[name]
            handoff = await ping_pong(hold, HANDOFFS // (4 if s.quick else 1))
            drained, peak = await drain(hold, first)
            return handoff, drained, peak
        return asyncio.run(run())

    names = [ASYNCIO_LOCK, LW_ASYNC]
    results = interleave(names, rounds, measure)
    by_name = {name: [r[i] for r in results] for i, name in enumerate(names)}
    handoff_rows = [Row(name, "floor" if name == ASYNCIO_LOCK else "latchwire",
                        [h * 1e6 for h, _, _ in by_name[name]]) for name in names]
    drain_rows = [Row(name, "floor" if name == ASYNCIO_LOCK else "latchwire",
                      [d * 1e3 for _, d, _ in by_name[name]],
                      {"helper threads": max(p for _, _, p in by_name[name])})
                  for name in names]
    handoff = Section("async-filelock", "hand-off between two tasks", "µs/hand-off",
                      handoff_rows, [ASYNCIO_LOCK])
    drained = Section("async-filelock", f"{TASKS} queued tasks pass once each", "ms",
                      drain_rows, [ASYNCIO_LOCK], columns=["helper threads"])
    lw_h, lw_d = handoff.row(LW_ASYNC), drained.row(LW_ASYNC)
    handoff.conclusions.append(
        f"a hand-off is {lw_h.median / handoff.row(ASYNCIO_LOCK).median:.1f}x asyncio.Lock's "
        "(target: at most 3x)")
    drained.conclusions.append(
        f"the queue drains in {lw_d.median / drained.row(ASYNCIO_LOCK).median:.1f}x "
        f"asyncio.Lock's time (target: at most 10x), with "
        f"{lw_d.details['helper threads']} helper threads")
    add_guard(handoff, f"{LW_ASYNC} hand-off / asyncio.Lock's",
              lw_h.median / handoff.row(ASYNCIO_LOCK).median, 15.0)
    add_guard(drained, f"{LW_ASYNC} drain / asyncio.Lock's",
              lw_d.median / drained.row(ASYNCIO_LOCK).median, 40.0)
    add_guard(drained, f"{LW_ASYNC} helper threads while tasks hand on",
              float(lw_d.details["helper threads"]), 0.0, unit="")
    return [handoff, drained]
