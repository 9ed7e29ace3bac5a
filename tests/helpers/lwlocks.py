"""For the in-process locks (Mutex, RWLock, the lock-order checker): ``timeout_overshoots`` and
``assert_on_time`` judge timed-out acquires; ``timed_out_waits`` and
``assert_timely_as_reference`` judge them against threading.Lock's timed waits
measured beside them, ``wake_latency`` and ``assert_woken_as_reference`` a
waiter's wake-up against threading.Lock's, and ``assert_at_once`` a call that must
not wait; ``pairs`` lists the orders the checker has seen."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from lwtest import BOUND, FREE_THREADED
from lwthreads import Worker, wait_until_blocked

from latchwire import lockorder

# The free-threaded 3.13 build makes code objects immortal once a second thread has
# run (it spares their reference counts the contention), so a test of how long a lock
# keeps its site's code object alive cannot see anything there.
CODE_LIFETIME_SEEN = pytest.mark.skipif(FREE_THREADED,
                                        reason="free-threaded CPython keeps code objects alive")

def timeout_overshoots(acquire: Callable[..., bool], timeout: float = 0.05,
                       rounds: int = 7) -> list[float]:
    """Call acquire(timeout=timeout) rounds times on a lock held elsewhere; how late each was.

    Each call must return False, and never before the timeout; the overshoots
    are in seconds.
    """
    overshoots = []
    for _ in range(rounds):
        t0 = time.monotonic()
        got = acquire(timeout=timeout)
        elapsed = time.monotonic() - t0
        assert got is False
        assert elapsed >= timeout, f"returned after {elapsed:.6f} s, before the timeout"
        overshoots.append(elapsed - timeout)
    return overshoots


def assert_on_time(overshoots: Sequence[float], median: float = 0.002,
                   worst: float = 0.05) -> None:
    """Fail unless the median overshoot is within median s and the largest within worst s.

    Judged by the median because this VM has multi-ms scheduling hiccups that
    threading.Lock's own timed waits show too; the worst bound still catches a
    lost wake-up or a polling wait.
    """
    report = ", ".join(f"{x * 1000:.3f}" for x in overshoots)
    assert statistics.median(overshoots) <= median, f"overshoots (ms): {report}"
    assert max(overshoots) <= worst, f"overshoots (ms): {report}"


def timed_out_waits(acquire: Callable[..., bool], timeout: float = 0.05,
                    rounds: int = 9) -> tuple[list[float], list[float]]:
    """Timed-out acquires, each round beside the same wait on threading.Lock: (overshoots,
    reference overshoots).

    Each round calls acquire(timeout=timeout) on a lock held elsewhere and
    ``threading.Lock.acquire(timeout=timeout)`` on a Lock this thread holds (the
    reference, which times out alike), in alternating order, so that both see the same
    load. Each call must return False, never before the timeout; the overshoots are in
    seconds.
    """
    reference = threading.Lock()
    reference.acquire()
    try:
        waits: tuple[list[float], list[float]] = ([], [])
        for i in range(rounds):
            for which in ((0, 1) if i % 2 else (1, 0)):
                waits[which].extend(timeout_overshoots(
                    acquire if which == 0 else reference.acquire, timeout, 1))
        return waits
    finally:
        reference.release()


def assert_timely_as_reference(overshoots: Sequence[float], reference: Sequence[float],
                               timeout: float) -> None:
    """Fail unless timed-out waits end about as promptly as threading.Lock's beside them.

    The median overshoot may be up to twice the reference's plus 2 ms, the worst up to
    the reference's worst plus 5 timeouts: a loaded machine delays both alike (the
    thread that timed out waits for a CPU and for the GIL), while a regression (a polling
    wait, a deadline misread, a wait that outlives its timeout) shows on its own.
    """
    report = (", ".join(f"{x * 1000:.3f}" for x in overshoots) + " ms; threading.Lock: "
              + ", ".join(f"{x * 1000:.3f}" for x in reference) + " ms")
    assert statistics.median(overshoots) <= 2 * statistics.median(reference) + 0.002, report
    assert max(overshoots) <= max(reference) + 5 * timeout, report


def wake_latency(lock: Any, *, sem_wait: bool = False) -> float:
    """Seconds from lock.release() here to a thread blocked in lock.acquire() running on.

    This thread takes lock, a Worker blocks acquiring it (seen in the kernel), this
    thread releases it; the Worker takes it, lets it go and ends.
    """
    assert lock.acquire(timeout=BOUND)

    def take() -> None:
        lock.acquire()  # untimed, as wait_until_blocked recognises it (a lost wake: a hang)
        lock.release()

    worker = Worker(take)
    try:
        wait_until_blocked(worker.tid, worker.done, sem_wait=sem_wait)
    finally:
        released = time.monotonic()
        lock.release()
    worker.outcome()
    return worker.ended - released


def assert_woken_as_reference(latency: float, reference: float) -> None:
    """Fail unless a waiter ran on after the release about as soon as threading.Lock's.

    ``reference`` is ``wake_latency(threading.Lock(), sem_wait=True)`` measured in the
    same test. The bound, 20 times the reference plus half a second, is what only a
    lost wake-up breaks (the waiter then sleeps until its own timeout, if any).
    """
    assert latency <= 20 * reference + 0.5, \
        f"woken {latency * 1000:.3f} ms after the release (threading.Lock: " \
        f"{reference * 1000:.3f} ms)"


def assert_at_once(elapsed: float, instead: float, what: str) -> None:
    """Fail unless a call that must not wait took well under the wait it would have made.

    ``instead`` is how long the call would have taken had it waited (its timeout, or
    how long the other thread holds the lock); the bound is a fifth of it. No reference
    is measured: the alternative is a wait of seconds, and a loaded machine's stalls are
    orders of magnitude shorter.
    """
    assert elapsed < instead / 5, f"{what} took {elapsed:.3f} s: it waited"


def pairs() -> set[tuple[str, str]]:
    """The orders the lock-order checker has seen, as (first class, then class)."""
    return {(order.first, order.then) for order in lockorder.orders()}
