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

import faulthandler
import platform
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import latchwire
from latchwire import Mutex

BOUND = 5.0  # the bound on any handshake with another thread
GUARD = 120.0  # no test here may take longer: the watchdog then dumps the stacks and exits

LOCKS = [pytest.param(threading.Lock, id="threading.Lock"), pytest.param(Mutex, id="Mutex")]


# ---------------------------------------------------------------------------
# Local helpers


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """A hang (a lost wake-up, a wait that ignores its timeout) ends the run, not stalls it."""
    faulthandler.dump_traceback_later(GUARD, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def here() -> int:
    """The caller's current line number."""
    return sys._getframe(1).f_lineno


def site(line: int) -> str:
    """How latchwire names a place in this file."""
    return f"{__file__}:{line}"


class Worker:
    """A daemon thread running fn(*args), started at once; its outcome once done."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.tid = 0
        self.ident = 0
        self.ended = 0.0
        self.started = threading.Event()
        self.done = threading.Event()
        self._call = (fn, args)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        assert self.started.wait(BOUND), "the thread did not start"

    def _run(self) -> None:
        fn, args = self._call
        self.tid = threading.get_native_id()
        self.ident = threading.get_ident()
        self.started.set()
        try:
            self.result = fn(*args)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()
            self.done.set()

    def join(self, timeout: float = BOUND) -> Worker:
        """Wait (at most timeout) for fn to end; fail if it has not."""
        assert self.done.wait(timeout), "the thread is still blocked"
        self.thread.join(BOUND)
        return self

    def outcome(self, timeout: float = BOUND) -> Any:
        """fn's result once it ended (its exception re-raised)."""
        self.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


_FUTEX_NR = {"x86_64": "202", "aarch64": "98"}


def _futex_word(tid: int) -> str | None:
    """The futex word thread tid sleeps on in a lock wait, else None.

    A Mutex waits with FUTEX_WAIT; threading.Lock's untimed wait (sem_wait) with
    FUTEX_WAIT_BITSET and no timeout. The interpreter's GIL wait is a condition wait
    with a timeout (FUTEX_WAIT_BITSET, 5 ms), so it is never mistaken for one.
    """
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != _FUTEX_NR.get(platform.machine()):
        return None
    op = int(fields[2], 16) & 0x7F
    if op == 0 or (op == 9 and int(fields[4], 16) == 0):
        return fields[1]
    return None


def wait_until_blocked(tid: int, returned: threading.Event, timeout: float = BOUND) -> None:
    """Return once thread tid sleeps in a lock wait (seen on 3 polls in a row, so a brief
    pthread-mutex wait inside the interpreter does not count); fail if it returns first."""
    if platform.machine() not in _FUTEX_NR:
        pytest.skip(f"futex syscall number unknown on {platform.machine()}")
    deadline = time.monotonic() + timeout
    last, streak = None, 0
    while streak < 3:
        assert not returned.is_set(), "the call returned instead of blocking"
        assert time.monotonic() < deadline, "the thread never blocked on the lock"
        word = _futex_word(tid)
        streak = streak + 1 if word is not None and word == last else int(word is not None)
        last = word
        time.sleep(0.001)


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

    worker = Worker(hold, name="holder")
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
    wait_until_blocked(waiter.tid, waiter.done)
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


def _interrupted_in_main(call: Callable[[], Any], give_up: Callable[[], None]) -> str:
    """Call call() in the main thread while a helper sends it SIGINT (once it is seen
    blocked, then every 20 ms until call returns, for at most 5 s; then give_up() must
    end the wait). What happened: "KeyboardInterrupt", or "returned <value>"."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals go to the main thread only")
    main_tid, main_ident = threading.get_native_id(), threading.get_ident()
    returned = threading.Event()
    line = [0]

    def on_sigint(signo: int, frame: Any) -> None:
        # KeyboardInterrupt only from inside the call, never from the test's own code.
        if frame is not None and frame.f_code.co_filename == __file__ \
                and frame.f_lineno == line[0]:
            raise KeyboardInterrupt

    def interrupt() -> int:
        sent = 0
        try:
            wait_until_blocked(main_tid, returned)
            deadline = time.monotonic() + BOUND
            while not returned.is_set() and time.monotonic() < deadline:
                signal.pthread_kill(main_ident, signal.SIGINT)
                sent += 1
                returned.wait(0.02)
        finally:
            if not returned.is_set():  # never interrupted: let the call end (and fail)
                give_up()
        return sent

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        helper = Worker(interrupt, name="interrupter")
        try:
            line[0] = here() + 1
            outcome = f"returned {call()!r}"
        except KeyboardInterrupt:
            outcome = "KeyboardInterrupt"
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late repeat must not hit pytest
            returned.set()
            helper.join()
    finally:
        signal.signal(signal.SIGINT, old)
    assert helper.outcome() >= 1
    return outcome


def test_ctrl_c_interrupts_a_blocked_acquire() -> None:
    m = Mutex()
    release = threading.Event()
    holder = hold_in_thread(m, release)
    try:
        outcome = _interrupted_in_main(m.acquire, release.set)
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
    timeout = 0.05
    overshoots = []
    try:
        for _ in range(7):
            t0 = time.monotonic()
            got = m.acquire(timeout=timeout)
            elapsed = time.monotonic() - t0
            assert got is False
            assert elapsed >= timeout, f"returned after {elapsed:.6f} s, before the timeout"
            overshoots.append(elapsed - timeout)
    finally:
        release.set()
        holder.join()
    report = ", ".join(f"{x * 1000:.3f}" for x in overshoots)
    assert statistics.median(overshoots) <= 0.002, f"overshoots (ms): {report}"
    assert max(overshoots) <= 0.05, f"overshoots (ms): {report}"


def test_public_names() -> None:
    assert latchwire.Mutex is Mutex
    assert issubclass(latchwire.LockOrderError, RuntimeError)
