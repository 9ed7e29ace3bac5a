"""FileLock.acquire_async(): waiting without blocking the event loop, timeouts, cancellation.

Each test runs its own event loop with ``asyncio.run``. The lock is held by another
process (a small script using plain ``fcntl``, driven over pipes), so the async
acquire has to wait in the kernel through latchwire's helper thread. "The helper
waits" is observed as a blocked request in /proc/locks; every wait is bounded,
and the other process drops its locks and exits when left idle, so a bug fails a
test rather than hanging it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from lwfcntl import OtherProcess, kernel_waiters
from lwfcntl import fcntl_probe as probe
from lwtest import BOUND, new_lock

from latchwire import FileLock, LockTimeout

RACE_ROUNDS = 100

# ---------------------------------------------------------------------------
# Waiting in the event loop


async def until(condition: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    """Return once condition() holds, checked every millisecond of the loop; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.001)


def join_helpers() -> None:
    """Wait until every acquire_async helper thread has ended; fail after BOUND."""
    for thread in helper_threads():
        thread.join(BOUND)
        assert not thread.is_alive(), "an acquire_async helper thread is still waiting"


async def settle() -> None:
    """Let every acquire_async helper thread finish and the loop run what they handed it."""
    join_helpers()
    for _ in range(3):
        await asyncio.sleep(0)


def helper_threads() -> list[threading.Thread]:
    """latchwire's acquire_async helper threads, found by the name it gives them."""
    return [t for t in threading.enumerate() if t.name.startswith("latchwire-wait")]


# ---------------------------------------------------------------------------
# 1. A free lock


def test_async_with_acquires_and_releases(lockfile: str) -> None:
    """`async with lock.acquire_async():` holds the lock exclusively for the block, then not."""
    lock = new_lock(lockfile)

    async def main() -> tuple[bool, str | None, str]:
        async with lock.acquire_async() as held:
            assert held is lock
            return lock.locked, lock.mode, probe(lockfile, "sh")

    assert asyncio.run(main()) == (True, "exclusive", "busy")
    assert not lock.locked
    assert probe(lockfile) == "free"


def test_await_acquire_then_release(lockfile: str) -> None:
    """`await lock.acquire_async()` returns the lock held (by no thread); release() drops it."""
    lock = new_lock(lockfile)

    async def main() -> None:
        assert await lock.acquire_async() is lock
        assert lock.locked and lock.owner_thread is None
        assert probe(lockfile, "sh") == "busy"
        lock.release()

    asyncio.run(main())
    assert not lock.locked
    assert probe(lockfile) == "free"


# ---------------------------------------------------------------------------
# 2. Waiting on another process


def test_loop_keeps_running_while_waiting(lockfile: str, other: OtherProcess) -> None:
    """While the acquire waits for another process, the loop runs other tasks; once that
    process releases, the acquire completes."""
    other.lock()
    lock = new_lock(lockfile)

    async def main() -> dict[str, Any]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.ensure_future(ticker())
        acquiring = asyncio.ensure_future(lock.acquire_async())
        await until(lambda: kernel_waiters(lockfile) > 0, "the acquire waits in the kernel")
        start = ticks
        await until(lambda: ticks >= start + 200 or acquiring.done(), "the loop ticks on")
        pending = not acquiring.done()
        ticks_while_waiting = ticks
        other.unlock()
        await asyncio.wait_for(acquiring, BOUND)
        stop.set()
        await ticking
        return {"pending": pending, "ticks": ticks_while_waiting, "locked": lock.locked}

    result = asyncio.run(main())
    assert result["pending"], "the acquire finished before the other process released"
    assert result["ticks"] >= 200, f"the loop ran only {result['ticks']} times while waiting"
    assert result["locked"]
    assert probe(lockfile, "sh") == "busy"
    lock.release()


def test_wakes_promptly_when_other_process_releases(lockfile: str, other: OtherProcess) -> None:
    """The awaiting task resumes < 50 ms after the other process releases."""
    other.lock()
    lock = new_lock(lockfile)

    async def main() -> float:
        acquiring = asyncio.ensure_future(lock.acquire_async())
        await until(lambda: kernel_waiters(lockfile) > 0, "the acquire waits in the kernel")
        released = other.unlock()
        await asyncio.wait_for(acquiring, BOUND)
        return time.monotonic() - released

    latency = asyncio.run(main())
    print(f"async wake latency {latency * 1000:.3f} ms")
    assert latency < 0.05, f"resumed {latency * 1000:.1f} ms after the release"
    lock.release()


# ---------------------------------------------------------------------------
# 3. Timeout


def test_timeout_raises_lock_timeout_on_time(lockfile: str, other: OtherProcess) -> None:
    """acquire_async(timeout=0.1) against a held lock raises LockTimeout after 100-150 ms."""
    other.lock()
    lock = new_lock(lockfile)

    async def main() -> list[float]:
        elapsed = []
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(LockTimeout):
                await lock.acquire_async(timeout=0.1)
            elapsed.append(time.monotonic() - start)
            assert not lock.locked
        return elapsed

    elapsed = asyncio.run(main())
    print("async timeout elapsed ms:", ", ".join(f"{e * 1000:.2f}" for e in elapsed))
    assert min(elapsed) >= 0.1 and max(elapsed) <= 0.15, elapsed


def test_negative_timeout_is_value_error(lockfile: str) -> None:
    """acquire_async(timeout=-1) is a ValueError, as acquire(timeout=-1) is, even on a free lock."""
    lock = new_lock(lockfile)

    async def main() -> None:
        with pytest.raises(ValueError):
            await lock.acquire_async(timeout=-1)

    try:
        asyncio.run(main())
    finally:
        if lock.locked:
            lock.release()


# ---------------------------------------------------------------------------
# 4. Cancellation


def test_wait_for_timeout_does_not_leak(lockfile: str, other: OtherProcess) -> None:
    """asyncio.wait_for(acquire_async(), 0.1) raises TimeoutError, ends the wait, holds nothing;
    when the other process releases, a third process can take the lock."""
    other.lock()
    lock = new_lock(lockfile)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lock.acquire_async(), 0.1)
        assert not lock.locked
        await until(lambda: kernel_waiters(lockfile) == 0, "the cancelled wait ends")
        await settle()

    asyncio.run(main())
    assert not lock.locked
    other.unlock()
    assert probe(lockfile) == "free"
    assert lock.acquire(blocking=False)
    lock.release()


def test_cancel_after_grant_reached_loop_does_not_leak(lockfile: str,
                                                        other: OtherProcess) -> None:
    """A task cancelled after its lock was granted and handed to the loop, but before the task
    itself resumed, does not leave the lock held (deterministic form of the race below)."""
    other.lock()
    lock = new_lock(lockfile)

    async def main() -> str:
        task = asyncio.ensure_future(lock.acquire_async())
        await until(lambda: kernel_waiters(lockfile) > 0, "the acquire waits in the kernel")
        other.unlock()
        join_helpers()  # granted; the result is on its way to the loop
        await asyncio.sleep(0)  # the loop takes the result in; the task has not resumed yet
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "acquired"

    outcome = asyncio.run(main())
    leaked = outcome == "cancelled" and lock.locked
    if lock.locked:
        lock.release()
    assert not leaked, "the task was cancelled but its lock stayed held, with nobody to release it"
    assert probe(lockfile) == "free"


async def _acquire_cancelled_at_release(lock: FileLock, lockfile: str, other: OtherProcess,
                                        spin: int) -> str:
    """One round: the other process holds; the task waits; the other process is told to
    release and the task is cancelled `spin` loop turns later. "cancelled" or "acquired"."""
    other.lock()
    task = asyncio.ensure_future(lock.acquire_async())
    await until(lambda: kernel_waiters(lockfile) > 0, "the acquire waits in the kernel")
    other.send("unlock")
    for _ in range(spin):
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        outcome = "cancelled"
    else:
        outcome = "acquired"
    other.reply()
    return outcome


def test_cancel_racing_release_never_leaks(lockfile: str, other: OtherProcess) -> None:
    """Cancelling the task just as the other process releases, many times: once the wait has
    wound down the lock is held only if the task got it, and in the end another process can
    take it."""
    lock = new_lock(lockfile)

    async def main() -> Counter[str]:
        outcomes: Counter[str] = Counter()
        for i in range(RACE_ROUNDS):
            outcome = await _acquire_cancelled_at_release(lock, lockfile, other, i % 20)
            await settle()
            outcomes[outcome] += 1
            if outcome == "acquired":
                assert lock.locked, f"round {i}: the acquire returned without the lock"
                lock.release()
            assert not lock.locked, f"round {i}: a cancelled acquire left the lock held"
        return outcomes

    try:
        outcomes = asyncio.run(main())
    finally:
        if lock.locked:
            lock.release()
    print(f"race outcomes: {dict(outcomes)}")
    assert probe(lockfile) == "free"


def test_cancelled_acquire_leaves_object_free_at_once(lockfile: str,
                                                      other: OtherProcess) -> None:
    """Right after a cancelled acquire_async() has finished, even one cancelled just as the lock
    was granted, the object holds nothing and may be acquired again (no "already held")."""
    lock = new_lock(lockfile)

    async def main() -> list[str]:
        problems = []
        for i in range(RACE_ROUNDS):
            outcome = await _acquire_cancelled_at_release(lock, lockfile, other, i % 5)
            if outcome == "cancelled" and lock.locked:
                problems.append(f"round {i}: locked right after the cancelled acquire")
            if outcome == "acquired":
                lock.release()
            try:
                await asyncio.wait_for(lock.acquire_async(), BOUND)
            except RuntimeError as exc:
                problems.append(f"round {i}: acquiring again raised {exc!r}")
            else:
                lock.release()
            await settle()
            if lock.locked:
                lock.release()
            if problems:
                break
        return problems

    problems = asyncio.run(main())
    assert not problems, problems
    assert probe(lockfile) == "free"


def test_cancel_racing_release_then_loop_closes_never_leaks(lockfile: str,
                                                            other: OtherProcess) -> None:
    """Cancelling just as the other process releases, then leaving asyncio.run (the loop
    closes): once latchwire's waiting thread is done, the lock is not left held."""
    lock = new_lock(lockfile)

    try:
        for i in range(30):
            outcome = asyncio.run(_acquire_cancelled_at_release(lock, lockfile, other, i % 5))
            join_helpers()
            if outcome == "acquired":
                assert lock.locked
                lock.release()
            assert not lock.locked, f"round {i}: the lock granted to a cancelled acquire leaked"
    finally:
        if lock.locked:
            lock.release()
    assert probe(lockfile) == "free"


# ---------------------------------------------------------------------------
# 5. Shared


def test_async_shared_holders_coexist(lockfile: str) -> None:
    """Two objects acquire shared asynchronously at once; other processes may share, not write."""
    first, second = new_lock(lockfile), new_lock(lockfile)

    async def main() -> None:
        await first.acquire_async(shared=True)
        await asyncio.wait_for(second.acquire_async(shared=True), BOUND)
        assert first.mode == second.mode == "shared"
        assert probe(lockfile, "sh") == "free"
        assert probe(lockfile, "ex") == "busy"
        first.release()
        assert probe(lockfile, "ex") == "busy"
        second.release()

    asyncio.run(main())
    assert probe(lockfile) == "free"


def test_async_shared_joins_other_process_shared(lockfile: str, other: OtherProcess) -> None:
    """A shared async acquire does not wait for another process's shared lock; exclusive does."""
    other.lock("sh")
    lock, writer = new_lock(lockfile), new_lock(lockfile)

    async def main() -> None:
        await asyncio.wait_for(lock.acquire_async(shared=True), BOUND)
        assert lock.mode == "shared"
        with pytest.raises(LockTimeout):
            await writer.acquire_async(timeout=0.05)
        lock.release()

    asyncio.run(main())
    assert not lock.locked and not writer.locked
