"""latchwire.Mutex: threading.Lock's behaviour, where it knowingly differs, and its waits.

The first part is one suite run against both ``threading.Lock`` and ``latchwire.Mutex``:
whatever it asserts, the standard lock does too. The rest covers what only a Mutex
promises: it knows its owner (so only the holder may release it and a blocking
re-acquire by the holder fails at once instead of hanging), it says where it was taken,
its waiters sleep without the GIL and without CPU, Ctrl-C ends a wait, and timeouts
are kept accurately.

Nothing here waits with a bare sleep: threads hand over with events and barriers, and
"this thread is now blocked on the lock" is observed in the kernel (the thread sits in
``futex(FUTEX_WAIT)`` per /proc/self/task/TID/syscall). Every wait is bounded, and a
watchdog ends the run if a test hangs anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from lwtest import (
    BOUND,
    Worker,
    assert_on_time,
    here,
    interrupted_in_main,
    site,
    timeout_overshoots,
    wait_until_blocked,
)

import latchwire
from latchwire import Mutex

pytestmark = pytest.mark.usefixtures("watchdog")

LOCKS = [pytest.param(threading.Lock, id="threading.Lock"), pytest.param(Mutex, id="Mutex")]


# ---------------------------------------------------------------------------
# Local helpers


def hold_in_thread(lock: Any, release: threading.Event) -> Worker:
    """A thread that takes lock, holds it until release is set, then releases it."""
    held = threading.Event()

    def hold() -> str | None:
        assert lock.acquire(timeout=BOUND)
        line = here() - 1
        held.set()
        try:
            assert release.wait(4 * BOUND), "never told to release"
        finally:
            lock.release()
        return site(line)

    worker = Worker(hold, thread_name="holder")
    assert held.wait(BOUND), f"the holder could not take the lock: {worker.error!r}"
    return worker


# ---------------------------------------------------------------------------
# 1. The shared suite: threading.Lock and Mutex alike


@pytest.mark.parametrize("make", LOCKS)
def test_acquire_release_locked(make: Callable[[], Any]) -> None:
    lock = make()
    assert lock.locked() is False
    assert lock.acquire() is True
    assert lock.locked() is True
    lock.release()
    assert lock.locked() is False
    assert lock.acquire(True, -1) is True
    lock.release()
    assert lock.acquire(timeout=BOUND) is True
    lock.release()
    assert lock.locked() is False


@pytest.mark.parametrize("make", LOCKS)
def test_nonblocking_acquire_of_a_held_lock_returns_false(make: Callable[[], Any]) -> None:
    lock = make()
    release = threading.Event()
    holder = hold_in_thread(lock, release)
    t0 = time.monotonic()
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(False) is False
    assert lock.acquire(timeout=0) is False
    assert time.monotonic() - t0 < 0.5, "a non-blocking acquire waited"
    assert lock.locked()
    release.set()
    holder.outcome()
    assert lock.acquire(blocking=False) is True
    # Held by this very thread: still False, never an error nor a hang.
    assert lock.acquire(blocking=False) is False
    lock.release()
    assert not lock.locked()


@pytest.mark.parametrize("make", LOCKS)
def test_timed_acquire_of_a_lock_held_elsewhere_times_out(make: Callable[[], Any]) -> None:
    lock = make()
    release = threading.Event()
    holder = hold_in_thread(lock, release)
    t0 = time.monotonic()
    got = lock.acquire(timeout=0.05)
    elapsed = time.monotonic() - t0
    assert got is False
    assert 0.05 <= elapsed < 1.0, f"waited {elapsed:.4f} s for a 0.05 s timeout"
    assert lock.locked(), "the holder lost the lock"
    release.set()
    holder.outcome()
    assert not lock.locked()


@pytest.mark.parametrize("make", LOCKS)
def test_context_manager(make: Callable[[], Any]) -> None:
    lock = make()
    with lock as entered:
        assert entered is True
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(ZeroDivisionError), lock:
        assert lock.locked()
        1 / 0  # noqa: B018
    assert not lock.locked(), "an exception in the block left the lock held"


@pytest.mark.parametrize("make", LOCKS)
@pytest.mark.parametrize("kwargs", [
    pytest.param({"blocking": False, "timeout": 0.05}, id="timeout-without-blocking"),
    pytest.param({"blocking": False, "timeout": 0}, id="zero-timeout-without-blocking"),
    pytest.param({"timeout": -0.5}, id="negative"),
    pytest.param({"timeout": -2}, id="minus-two"),
])
def test_bad_timeouts_raise_valueerror(make: Callable[[], Any], kwargs: dict[str, Any]) -> None:
    lock = make()
    with pytest.raises(ValueError):
        lock.acquire(**kwargs)
    assert not lock.locked(), "a refused acquire took the lock"


@pytest.mark.parametrize("make", LOCKS)
def test_nan_timeout_raises_valueerror(make: Callable[[], Any]) -> None:
    """threading.Lock refuses a NaN timeout; a lock meant to match it must too (not wait
    forever on a held lock, nor take a free one)."""
    lock = make()
    with pytest.raises(ValueError):
        lock.acquire(timeout=float("nan"))
    assert not lock.locked(), "a refused acquire took the lock"


@pytest.mark.parametrize("make", LOCKS)
@pytest.mark.parametrize("timeout", [threading.TIMEOUT_MAX * 2, float("inf")],
                         ids=["twice-TIMEOUT_MAX", "inf"])
def test_huge_timeout_raises_overflowerror(make: Callable[[], Any], timeout: float) -> None:
    lock = make()
    with pytest.raises(OverflowError):
        lock.acquire(timeout=timeout)
    assert not lock.locked(), "a refused acquire took the lock"


@pytest.mark.parametrize("make", LOCKS)
def test_release_of_an_unlocked_lock_raises_runtimeerror(make: Callable[[], Any]) -> None:
    lock = make()
    with pytest.raises(RuntimeError):
        lock.release()
    lock.acquire()
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    assert not lock.locked()


@pytest.mark.parametrize("make", LOCKS)
def test_release_wakes_a_blocked_waiter(make: Callable[[], Any]) -> None:
    lock = make()
    assert lock.acquire()

    def take() -> tuple[bool, bool]:
        got = lock.acquire()  # no timeout: only the release can end this wait
        try:
            return got, lock.locked()
        finally:
            lock.release()

    waiter = Worker(take)
    wait_until_blocked(waiter.tid, waiter.done, sem_wait=True)
    released_at = time.monotonic()
    lock.release()
    assert waiter.outcome() == (True, True)
    assert waiter.ended - released_at < 1.0, "the waiter was not woken by the release"
    assert not lock.locked()


@pytest.mark.parametrize("make", LOCKS)
def test_mutual_exclusion_under_contention(make: Callable[[], Any]) -> None:
    """4 threads x 10,000 read-yield-write increments under the lock: not one lost."""
    lock = make()
    threads, rounds = 4, 10_000
    counter = [0]
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait(BOUND)
        for _ in range(rounds):
            with lock:
                value = counter[0]
                time.sleep(0)  # give every other thread the chance to run in the window
                counter[0] = value + 1

    workers = [Worker(work) for _ in range(threads)]
    for worker in workers:
        worker.outcome(timeout=60)
    assert counter[0] == threads * rounds
    assert not lock.locked()


# ---------------------------------------------------------------------------
# 2. Where a Mutex knowingly differs: it has an owner


def test_release_by_another_thread_names_the_holder() -> None:
    m = Mutex("differs")
    release = threading.Event()
    holder = hold_in_thread(m, release)
    where = m.site
    assert where is not None
    with pytest.raises(RuntimeError) as info:
        m.release()
    message = str(info.value)
    assert str(holder.ident) in message, message
    assert where in message, message
    assert m.owner == (holder.ident, where), "a refused release changed the owner"
    release.set()
    assert holder.outcome() == where
    assert not m.locked()


def test_blocking_reacquire_by_the_holder_raises_at_once() -> None:
    m = Mutex()

    def reacquire() -> tuple[list[str], float]:
        assert m.acquire()
        line = here() - 1
        messages = []
        t0 = time.monotonic()
        try:
            for call in (m.acquire, lambda: m.acquire(timeout=BOUND), lambda: m.acquire(True)):
                with pytest.raises(RuntimeError) as info:
                    call()
                messages.append(str(info.value))
            assert m.owner == (threading.get_ident(), site(line))
            return messages, time.monotonic() - t0
        finally:
            m.release()

    messages, elapsed = Worker(reacquire).outcome()
    assert elapsed < 1.0, f"the re-acquires took {elapsed:.3f} s: they waited"
    assert all("already held by this thread" in message for message in messages), messages
    assert not m.locked()


def test_nonblocking_reacquire_by_the_holder_returns_false() -> None:
    m = Mutex()
    assert m.acquire()
    try:
        assert m.acquire(blocking=False) is False
        assert m.acquire(False) is False
        assert m.owner is not None
        assert m.owner[0] == threading.get_ident()
    finally:
        m.release()
    assert not m.locked(), "a Mutex is not reentrant: one release frees it"


def test_owner_site_name_and_lockclass() -> None:
    unnamed = Mutex()
    made = here() - 1
    named = Mutex(name="nwfilter-driver")
    assert unnamed.name is None
    assert unnamed.lockclass == site(made)
    assert named.name == "nwfilter-driver"
    assert named.lockclass == "nwfilter-driver"
    assert unnamed.owner is None and unnamed.site is None

    got, line = unnamed.acquire(), here()
    assert got
    assert unnamed.owner == (threading.get_ident(), site(line))
    assert unnamed.site == site(line)
    unnamed.release()
    assert unnamed.owner is None and unnamed.site is None

    with named:
        line = here() - 1
        assert named.owner == (threading.get_ident(), site(line))
    assert named.owner is None

    release = threading.Event()
    holder = hold_in_thread(named, release)
    try:
        owner, where = named.owner, named.site
    finally:
        release.set()
    assert owner == (holder.ident, where)
    assert holder.ident != threading.get_ident()
    assert where == holder.outcome(), "the site is not where the holder took it"
    assert named.owner is None and named.site is None


# ---------------------------------------------------------------------------
# 3. How a Mutex waits: without the GIL, without CPU, interruptibly, on time


def test_a_waiter_holds_no_gil_and_burns_no_cpu() -> None:
    m = Mutex()
    assert m.acquire()  # held here throughout: the waiter times out
    waiting = threading.Event()

    def wait() -> tuple[bool, float, float]:
        cpu = time.thread_time()
        waiting.set()
        t0 = time.monotonic()
        got = m.acquire(timeout=0.3)
        return got, time.monotonic() - t0, time.thread_time() - cpu

    def count(waiter: Worker) -> tuple[int, float]:
        """Loop iterations of Python code while the waiter waits, and the longest gap."""
        assert waiting.wait(BOUND)
        iterations, longest = 0, 0.0
        last = time.monotonic()
        while not waiter.done.is_set():
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now
            iterations += 1
        return iterations, longest

    try:
        waiter = Worker(wait)
        counter = Worker(count, waiter)
        got, waited, cpu = waiter.outcome()
        iterations, longest = counter.outcome()
    finally:
        m.release()
    assert got is False
    assert waited >= 0.3
    assert iterations > 10_000, f"only {iterations} iterations ran during a 0.3 s wait"
    assert longest < 0.15, f"Python code stalled for {longest:.3f} s: the waiter held the GIL"
    assert cpu < 0.02, f"the waiter used {cpu * 1000:.1f} ms of CPU in a 0.3 s wait"


def test_ctrl_c_interrupts_a_blocked_acquire() -> None:
    m = Mutex()
    release = threading.Event()
    holder = hold_in_thread(m, release)
    try:
        outcome = interrupted_in_main(m.acquire, release.set, sem_wait=True)
        assert outcome == "KeyboardInterrupt"
        assert m.owner is not None and m.owner[0] == holder.ident, \
            f"the interrupted acquire left the lock to {m.owner}"
    finally:
        release.set()
        holder.join()
        if m.owner is not None and m.owner[0] == threading.get_ident():
            m.release()
    assert not m.locked()
    assert m.acquire(timeout=BOUND), "the interrupted wait left the lock unusable"
    m.release()


def test_timed_out_acquire_is_on_time() -> None:
    """Never early; median overshoot <= 2 ms over 7 rounds, worst <= 50 ms (this VM has
    multi-ms scheduling hiccups that threading.Lock's timed waits show too)."""
    m = Mutex()
    release = threading.Event()
    holder = hold_in_thread(m, release)
    try:
        overshoots = timeout_overshoots(m.acquire, timeout=0.05, rounds=7)
    finally:
        release.set()
        holder.join()
    assert_on_time(overshoots, median=0.002, worst=0.05)


def test_public_names() -> None:
    assert latchwire.Mutex is Mutex
    assert issubclass(latchwire.LockOrderError, RuntimeError)
