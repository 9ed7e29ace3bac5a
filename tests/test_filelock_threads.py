"""FileLock with threads: timeouts, cancellation, signals and in-process semantics.

Two kinds of wait are exercised throughout:

- a *kernel wait*: the holder is another process, so the waiting thread sleeps in
  ``F_OFD_SETLKW`` and is woken by a per-wait timer sending the wake signal;
- an *in-process wait*: the holder is another FileLock object of the same file in
  another thread of this process, so the waiter sleeps on the record's futex.

The other process is a small script using plain ``fcntl`` (an oracle independent
of latchwire), driven over pipes. Nothing waits with a bare ``time.sleep``: threads
hand over with events, other processes with pipe handshakes, and "the waiter is
now blocked" is observed in the kernel (a blocked entry in /proc/locks, or the
thread sitting in ``futex(FUTEX_WAIT)`` per /proc/self/task/TID/syscall). Every
wait is bounded, and the other process drops its locks and exits when left idle,
so a bug makes a test fail rather than hang.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from lwfcntl import OtherProcess, kernel_waiters, wait_in_kernel
from lwfcntl import fcntl_probe as probe
from lwlocks import assert_on_time
from lwtest import BOUND, WATCHDOG, new_lock
from lwthreads import Worker, in_futex_wait, poll_until, wait_in_futex

import latchwire
from latchwire import FileLock, LockBusy, LockCancelled, LockTimeout, waitgraph

# ---------------------------------------------------------------------------
# Limits (the requirements)

# A timed-out acquire returns within 5 ms after its timeout. This VM has
# scheduling hiccups of several ms (threading.Lock's own timed waits show them,
# p90 ~1.5 ms, max ~7 ms in 40 waits), so single waits are judged by the median
# of several, which is well inside the bound unless waits poll or oversleep,
# and the worst by a gross bound that any lost wake-up would break.
TIMEOUT_SLACK = 0.005
TIMEOUT_WORST = 0.050
PROMPT = 0.050  # cancel, wake-up on release: within 50 ms
IDLE_CPU = 0.020  # CPU a waiting thread may use during a 0.5 s wait

# ---------------------------------------------------------------------------
# Another thread holding a lock


class HolderThread:
    """Holds its own FileLock of a file in its own thread until ``release()``.

    The hold is bounded: after WATCHDOG seconds the thread releases anyway.
    """

    def __init__(self, lockfile: str, shared: bool = False) -> None:
        self.lock = FileLock(lockfile, lockfile=lockfile)
        self.shared = shared
        self.released_at = 0.0
        self._held = threading.Event()
        self._go = threading.Event()
        self._worker: Worker | None = None

    def _run(self) -> None:
        self.lock.acquire(timeout=BOUND, shared=self.shared)
        self._held.set()
        self._go.wait(WATCHDOG)
        # Before the call: once release() has begun, a waiter may have the lock (and,
        # with the GIL off, note it) before this thread runs again.
        self.released_at = time.monotonic()
        self.lock.release()

    def __enter__(self) -> HolderThread:
        self._worker = Worker(self._run)
        if not self._held.wait(BOUND):
            raise AssertionError(f"holder thread could not lock: {self._worker.error!r}")
        return self

    def release(self) -> None:
        assert self._worker is not None
        self._go.set()
        self._worker.join()
        assert self._worker.error is None, repr(self._worker.error)

    def __exit__(self, *exc: object) -> None:
        if not self._go.is_set():
            self.release()


def _timeout_overshoots(lock: FileLock, timeout: float, rounds: int) -> list[float]:
    """How long after `timeout` each of `rounds` timed-out acquires returned (negative: early)."""
    overshoots = []
    for _ in range(rounds):
        start = time.monotonic()
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=timeout)
        overshoots.append(time.monotonic() - start - timeout)
        assert not lock.locked
    return overshoots


def _assert_timely(overshoots: list[float], timeout: float) -> None:
    """No early return; median overshoot within TIMEOUT_SLACK, worst within TIMEOUT_WORST."""
    best = min(overshoots)
    report = ", ".join(f"{o * 1000:+.2f}" for o in overshoots)
    print(f"timeout={timeout}: overshoot ms {report}")
    assert best >= 0, f"returned {-best * 1000:.2f} ms before the timeout ({report} ms)"
    assert_on_time(overshoots, median=TIMEOUT_SLACK, worst=TIMEOUT_WORST)


# ---------------------------------------------------------------------------
# 1. Timeout accuracy


@pytest.mark.parametrize("timeout", [0.05, 0.2])
def test_timeout_accuracy_against_other_process(lockfile: str, other: OtherProcess,
                                                timeout: float) -> None:
    """A kernel wait times out no earlier than T and within 5 ms after it."""
    other.lock()
    lock = new_lock(lockfile)
    _assert_timely(_timeout_overshoots(lock, timeout, rounds=7), timeout)


@pytest.mark.parametrize("timeout", [0.05, 0.2])
def test_timeout_accuracy_in_process(lockfile: str, timeout: float) -> None:
    """An in-process (futex) wait times out no earlier than T and within 5 ms after it."""
    with HolderThread(lockfile):
        lock = new_lock(lockfile)
        _assert_timely(_timeout_overshoots(lock, timeout, rounds=7), timeout)


def test_upgrade_timeout_against_other_process_keeps_shared(lockfile: str,
                                                           other: OtherProcess) -> None:
    """upgrade(timeout=T) against another process's shared lock times out on time, still shared."""
    lock = new_lock(lockfile)
    lock.acquire(shared=True)
    other.lock("sh")
    overshoots = []
    for _ in range(5):
        start = time.monotonic()
        with pytest.raises(LockTimeout):
            lock.upgrade(timeout=0.05)
        overshoots.append(time.monotonic() - start - 0.05)
        assert lock.mode == "shared"
    _assert_timely(overshoots, 0.05)
    other.unlock()
    assert probe(lockfile, "ex") == "busy"
    lock.release()


# ---------------------------------------------------------------------------
# 2. No polling while blocked


def _cpu_of_timed_out_wait(lock: FileLock) -> float:
    worker = Worker(lock.acquire, timeout=0.5).join()
    assert isinstance(worker.error, LockTimeout), repr(worker.error)
    print(f"CPU used by a 0.5 s wait: {worker.cpu * 1000:.3f} ms")
    return worker.cpu


def test_kernel_wait_uses_no_cpu(lockfile: str, other: OtherProcess) -> None:
    """A thread waiting 0.5 s on another process's lock burns < 20 ms of CPU: no polling."""
    other.lock()
    cpu = _cpu_of_timed_out_wait(new_lock(lockfile))
    assert cpu < IDLE_CPU, f"the waiting thread used {cpu * 1000:.1f} ms of CPU"


def test_in_process_wait_uses_no_cpu(lockfile: str) -> None:
    """A thread waiting 0.5 s on another thread's hold burns < 20 ms of CPU: no polling."""
    with HolderThread(lockfile):
        cpu = _cpu_of_timed_out_wait(new_lock(lockfile))
    assert cpu < IDLE_CPU, f"the waiting thread used {cpu * 1000:.1f} ms of CPU"


@pytest.mark.parametrize("where", ["kernel", "in-process"])
@pytest.mark.parametrize("timeout", [float("inf"), 1e20])
def test_huge_timeout_wait_uses_no_cpu(lockfile: str, where: str, timeout: float) -> None:
    """A timeout too long to matter (inf, 1e20 s) still sleeps without polling (or is refused)."""
    with contextlib.ExitStack() as stack:
        if where == "kernel":
            other = OtherProcess(lockfile)
            stack.callback(other.close)
            other.lock()
        else:
            stack.enter_context(HolderThread(lockfile))
        lock = new_lock(lockfile)
        start = time.monotonic()
        waiter = Worker(lock.acquire, timeout=timeout)
        time.sleep(0.3)  # the measuring window (nothing to wait for)
        lock.cancel()
        waiter.join()
    assert isinstance(waiter.error, (LockCancelled, ValueError, OverflowError)), repr(waiter.error)
    assert waiter.cpu < IDLE_CPU, (
        f"timeout={timeout}: the waiting thread used {waiter.cpu * 1000:.0f} ms of CPU "
        f"in {waiter.ended - start:.2f} s")


# ---------------------------------------------------------------------------
# 3. cancel()


def _cancel_and_check(lock: FileLock, waiter: Worker) -> float:
    """cancel() the lock, assert the waiter raised LockCancelled promptly; return the latency."""
    start = time.monotonic()
    lock.cancel()
    waiter.join()
    latency = waiter.ended - start
    assert isinstance(waiter.error, LockCancelled), repr(waiter.error)
    assert latency < PROMPT, f"cancel took {latency * 1000:.1f} ms to end the wait"
    assert not lock.locked
    print(f"cancel latency {latency * 1000:.3f} ms")
    return latency


def test_cancel_kernel_wait(lockfile: str, other: OtherProcess) -> None:
    """cancel() ends a kernel wait at once with LockCancelled; the object stays usable."""
    other.lock()
    lock = new_lock(lockfile)
    waiter = Worker(lock.acquire)
    wait_in_kernel(lockfile, timeout=BOUND)
    _cancel_and_check(lock, waiter)
    assert kernel_waiters(lockfile) == 0
    other.unlock()
    assert lock.acquire(timeout=BOUND)
    assert probe(lockfile, "sh") == "busy"
    lock.release()
    assert probe(lockfile) == "free"


def test_cancel_in_process_wait(lockfile: str) -> None:
    """cancel() ends an in-process wait at once with LockCancelled; the object stays usable."""
    lock = new_lock(lockfile)
    with HolderThread(lockfile) as holder:
        waiter = Worker(lock.acquire)
        wait_in_futex(waiter)
        _cancel_and_check(lock, waiter)
        holder.release()
    assert lock.acquire(timeout=BOUND)
    assert probe(lockfile, "sh") == "busy"
    lock.release()


def test_cancel_without_waiter_is_a_no_op(lockfile: str, other: OtherProcess) -> None:
    """cancel() with nothing waiting changes nothing: later waits are not cancelled."""
    lock = new_lock(lockfile)
    lock.cancel()
    assert lock.acquire(blocking=False)
    lock.cancel()
    assert lock.locked and probe(lockfile, "sh") == "busy"
    lock.release()
    lock.cancel()
    other.lock()
    with pytest.raises(LockTimeout):  # waits its full time: not LockCancelled
        lock.acquire(timeout=0.05)
    other.unlock()
    assert lock.acquire(timeout=BOUND)
    lock.release()


def test_cancel_ends_only_that_objects_waits(lockfile: str) -> None:
    """cancel() on one object ends both threads waiting through it, but not another object's."""
    lock, bystander = new_lock(lockfile), new_lock(lockfile)
    with HolderThread(lockfile) as holder:
        waiters = [Worker(lock.acquire, timeout=BOUND) for _ in range(2)]
        others = Worker(bystander.acquire, timeout=BOUND)
        for w in [*waiters, others]:
            wait_in_futex(w)
        lock.cancel()
        for w in waiters:
            assert isinstance(w.join().error, LockCancelled), repr(w.error)
        assert not others.done.is_set(), repr(others.error)
        holder.release()
    others.join()
    assert others.error is None and bystander.locked
    assert not lock.locked
    bystander.release()


def test_cancel_kernel_upgrade_keeps_shared_hold(lockfile: str, other: OtherProcess) -> None:
    """cancel() of an upgrade() waiting on another process's shared lock keeps our shared hold."""
    lock = new_lock(lockfile)
    lock.acquire(shared=True)
    other.lock("sh")
    waiter = Worker(lock.upgrade)
    wait_in_kernel(lockfile, timeout=BOUND)
    _cancel_and_check_upgrade(lock, waiter)
    other.unlock()
    assert probe(lockfile, "ex") == "busy"  # our shared lock is still in the kernel
    assert probe(lockfile, "sh") == "free"
    lock.upgrade(timeout=BOUND)
    assert lock.mode == "exclusive"
    lock.release()


def test_cancel_in_process_upgrade_keeps_shared_hold(lockfile: str) -> None:
    """cancel() of an upgrade() waiting on another object's shared hold keeps our shared hold."""
    lock = new_lock(lockfile)
    lock.acquire(shared=True)
    with HolderThread(lockfile, shared=True):
        waiter = Worker(lock.upgrade)
        wait_in_futex(waiter)
        _cancel_and_check_upgrade(lock, waiter)
    assert probe(lockfile, "ex") == "busy"
    assert probe(lockfile, "sh") == "free"
    lock.upgrade(blocking=False)
    assert lock.mode == "exclusive"
    lock.release()


def _cancel_and_check_upgrade(lock: FileLock, waiter: Worker) -> None:
    start = time.monotonic()
    lock.cancel()
    waiter.join()
    assert isinstance(waiter.error, LockCancelled), repr(waiter.error)
    assert waiter.ended - start < PROMPT
    assert lock.locked and lock.mode == "shared"


# ---------------------------------------------------------------------------
# 4. Wake-up on release


def test_waiter_wakes_when_other_process_releases(lockfile: str, other: OtherProcess) -> None:
    """A kernel waiter gets the lock < 50 ms after the holding process releases it."""
    lock = new_lock(lockfile)
    latencies = []
    for _ in range(5):
        other.lock()
        waiter = Worker(lock.acquire, timeout=BOUND)
        wait_in_kernel(lockfile, timeout=BOUND)
        released = other.unlock()
        waiter.join()
        assert waiter.error is None, repr(waiter.error)
        latencies.append(waiter.ended - released)
        lock.release()
    worst = max(latencies)
    report = ", ".join(f"{x * 1000:.3f}" for x in latencies)
    print(f"kernel wake latency ms: {report}")
    assert worst < PROMPT, f"woke {worst * 1000:.1f} ms after the release ({report} ms)"


def test_waiter_wakes_when_other_thread_releases(lockfile: str) -> None:
    """An in-process waiter gets the lock < 50 ms after the holding object is released."""
    lock = new_lock(lockfile)
    latencies = []
    for _ in range(5):
        with HolderThread(lockfile) as holder:
            waiter = Worker(lock.acquire, timeout=BOUND)
            wait_in_futex(waiter)
            holder.release()
        waiter.join()
        assert waiter.error is None, repr(waiter.error)
        latencies.append(waiter.ended - holder.released_at)
        lock.release()
    report = ", ".join(f"{x * 1000:.3f}" for x in latencies)
    median = statistics.median(latencies)
    print(f"in-process wake latency ms: {report} (median {median * 1000:.3f})")
    assert max(latencies) < PROMPT, f"woke too late after the release ({report} ms)"


# ---------------------------------------------------------------------------
# 5. Signals: Ctrl-C and handlers that raise


class _Custom(Exception):
    pass


def _raise_custom(signo: int, frame: object) -> None:
    raise _Custom(signo)


def _interrupt_main(signo: int, blocked: Callable[[], bool], returned: threading.Event) -> None:
    """Once the main thread is blocked, send it signo (again every 100 ms, bounded)."""
    main = threading.main_thread().ident
    assert main is not None
    poll_until(blocked, "the main thread blocks")
    deadline = time.monotonic() + BOUND
    while not returned.is_set() and time.monotonic() < deadline:
        signal.pthread_kill(main, signo)
        returned.wait(0.1)


def _acquire_interrupted(lock: FileLock, signo: int, handler: Any, expected: type[BaseException],
                         blocked: Callable[[], bool]) -> None:
    """In the main thread, acquire() until interrupted by signo with handler; expect `expected`."""
    assert threading.current_thread() is threading.main_thread()
    returned = threading.Event()
    old = signal.signal(signo, handler)
    try:
        helper = Worker(_interrupt_main, signo, blocked, returned)
        try:
            with pytest.raises(expected):
                lock.acquire()
        finally:
            signal.signal(signo, signal.SIG_IGN)  # a late repeat must not hit the test
            returned.set()
            helper.join()
    finally:
        signal.signal(signo, old)
    assert helper.error is None, repr(helper.error)
    assert not lock.locked


def test_ctrl_c_interrupts_kernel_wait(lockfile: str, other: OtherProcess) -> None:
    """SIGINT to the main thread blocked on another process's lock raises KeyboardInterrupt."""
    other.lock()
    lock = new_lock(lockfile)
    _acquire_interrupted(lock, signal.SIGINT, signal.default_int_handler, KeyboardInterrupt,
                         lambda: kernel_waiters(lockfile) > 0)
    assert kernel_waiters(lockfile) == 0
    other.unlock()
    assert lock.acquire(timeout=BOUND)
    assert probe(lockfile, "sh") == "busy"
    lock.release()


def _waits_on_record(tid: int) -> bool:
    """Whether thread tid of this process is in its wait on a lock file record: its wait
    is on the board (written just before the futex wait, with the GIL held) and it is
    in a futex wait. The futex alone could be any other wait, the helper thread's start
    among them: a signal sent then would land outside acquire()."""
    waits = waitgraph.board_waiters().get(os.getpid(), [])
    return any(w.wait.tid == tid for w in waits) and in_futex_wait(tid)


def test_ctrl_c_interrupts_in_process_wait(lockfile: str) -> None:
    """SIGINT to the main thread blocked on another thread's hold raises KeyboardInterrupt."""
    main_tid = threading.get_native_id()
    lock = new_lock(lockfile)
    with HolderThread(lockfile):
        _acquire_interrupted(lock, signal.SIGINT, signal.default_int_handler, KeyboardInterrupt,
                             lambda: _waits_on_record(main_tid))
    assert lock.acquire(blocking=False)
    lock.release()


def test_signal_handler_exception_propagates_from_kernel_wait(lockfile: str,
                                                               other: OtherProcess) -> None:
    """An exception raised by a Python signal handler comes out of a blocked acquire()."""
    other.lock()
    lock = new_lock(lockfile)
    _acquire_interrupted(lock, signal.SIGUSR1, _raise_custom, _Custom,
                         lambda: kernel_waiters(lockfile) > 0)
    other.unlock()
    assert lock.acquire(blocking=False)
    lock.release()


# ---------------------------------------------------------------------------
# 6. In-process semantics


def test_two_objects_exclude_each_other_across_threads(lockfile: str) -> None:
    """A second object gets LockBusy, or waits and gets the lock only after the first releases."""
    first, second = new_lock(lockfile), new_lock(lockfile)
    assert first.lockfile == second.lockfile == lockfile
    with HolderThread(lockfile) as holder:
        with pytest.raises(LockBusy):
            second.acquire(blocking=False)
        with pytest.raises(LockBusy):
            first.acquire(blocking=False, shared=True)
        waiter = Worker(second.acquire, timeout=BOUND)
        wait_in_futex(waiter)
        assert not second.locked
        holder.release()
    waiter.join()
    assert waiter.error is None, repr(waiter.error)
    assert waiter.ended >= holder.released_at, "acquired before the holder released"
    assert second.locked and second.mode == "exclusive"
    second.release()


def test_shared_holds_coexist_in_process(lockfile: str) -> None:
    """Two objects in two threads hold shared at once; other processes may share, not write."""
    lock = new_lock(lockfile)
    with HolderThread(lockfile, shared=True):
        assert lock.acquire(blocking=False, shared=True)
        assert lock.mode == "shared"
        assert probe(lockfile, "sh") == "free"
        assert probe(lockfile, "ex") == "busy"
        with pytest.raises(LockBusy):
            new_lock(lockfile).acquire(blocking=False)
    assert probe(lockfile, "ex") == "busy"  # ours is still held
    lock.release()
    assert probe(lockfile, "ex") == "free"


def test_exclusive_waiter_gets_lock_after_shared_holder_releases(lockfile: str) -> None:
    """An exclusive waiter in one thread gets the lock once another thread's shared hold ends."""
    lock = new_lock(lockfile)
    with HolderThread(lockfile, shared=True) as holder:
        waiter = Worker(lock.acquire, timeout=BOUND)
        wait_in_futex(waiter)
        holder.release()
    waiter.join()
    assert waiter.error is None, repr(waiter.error)
    assert waiter.ended >= holder.released_at
    assert lock.mode == "exclusive" and probe(lockfile, "sh") == "busy"
    lock.release()


def test_release_from_another_thread(lockfile: str) -> None:
    """The hold belongs to the object: a thread other than the acquirer may release it."""
    lock = new_lock(lockfile)
    acquirer = Worker(lock.acquire).join()
    assert acquirer.error is None and lock.locked
    assert lock.owner_thread == acquirer.ident
    lock.release()
    assert not lock.locked and lock.owner_thread is None
    assert probe(lockfile) == "free"


def test_hold_of_exited_thread_is_waited_for(lockfile: str) -> None:
    """A hold taken by a thread that has since exited is waited for by other threads, which
    may reuse its thread ident: they are not told they would deadlock with themselves."""
    first, second = new_lock(lockfile), new_lock(lockfile)
    assert Worker(first.acquire).join().error is None  # that thread is gone; the hold stays
    for _ in range(3):
        waiter = Worker(second.acquire, timeout=0.05).join()
        assert isinstance(waiter.error, LockTimeout), repr(waiter.error)
    waiter = Worker(second.acquire, timeout=BOUND)
    wait_in_futex(waiter)
    first.release()
    assert waiter.join().error is None, repr(waiter.error)
    assert second.locked
    second.release()


def test_reacquire_of_held_object_raises(lockfile: str) -> None:
    """Acquiring an object that already holds raises RuntimeError at once (not reentrant)."""
    lock = new_lock(lockfile)
    lock.acquire()
    for kwargs in [{}, {"blocking": False}, {"timeout": 1.0}, {"shared": True}]:
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="not reentrant"):
            lock.acquire(**kwargs)
        assert time.monotonic() - start < 0.1
    assert lock.mode == "exclusive"
    lock.release()


@pytest.mark.parametrize(("held_shared", "want_shared"),
                         [(False, False), (False, True), (True, False)])
def test_same_thread_second_object_does_not_deadlock(lockfile: str, held_shared: bool,
                                                     want_shared: bool) -> None:
    """A blocking acquire through a second object, conflicting with this thread's own hold,
    raises RuntimeError at once; with blocking=False it is LockBusy."""

    def body() -> float:
        first, second = new_lock(lockfile), new_lock(lockfile)
        first.acquire(shared=held_shared)
        try:
            with pytest.raises(LockBusy):
                second.acquire(blocking=False, shared=want_shared)
            start = time.monotonic()
            with pytest.raises(RuntimeError, match="deadlock"):
                second.acquire(shared=want_shared)
            with pytest.raises(RuntimeError, match="deadlock"):
                second.acquire(timeout=BOUND, shared=want_shared)
            assert not second.locked
            return time.monotonic() - start
        finally:
            first.release()

    worker = Worker(body).join()  # in a thread, so a hang fails instead of hanging
    assert worker.error is None, repr(worker.error)
    assert worker.result < 0.1


def test_same_thread_shared_objects_coexist(lockfile: str) -> None:
    """One thread may hold shared through two objects: shared holds do not conflict."""
    first, second = new_lock(lockfile), new_lock(lockfile)
    first.acquire(shared=True)
    assert second.acquire(timeout=1.0, shared=True)
    first.release()
    second.release()
    assert probe(lockfile) == "free"


def test_release_of_unheld_raises(lockfile: str) -> None:
    """release() of an object holding nothing raises RuntimeError, even while another holds."""
    lock = new_lock(lockfile)
    with pytest.raises(RuntimeError):
        lock.release()
    with HolderThread(lockfile):
        with pytest.raises(RuntimeError):
            lock.release()
        assert probe(lockfile, "sh") == "busy"


def test_site_names_the_acquiring_line(lockfile: str) -> None:
    """`site` is this file and the line of the acquire() call (or of the with statement)."""
    lock = new_lock(lockfile)
    line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
    lock.acquire()
    assert lock.site == f"{__file__}:{line}"
    lock.release()
    assert lock.site is None
    line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
    with lock:
        assert lock.site == f"{__file__}:{line}"


def test_site_of_shared_context_names_the_caller(lockfile: str) -> None:
    """`with lock.shared():` records the with statement as the site, not latchwire's own code."""
    lock = new_lock(lockfile)
    line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
    with lock.shared():
        assert lock.site == f"{__file__}:{line}"


def test_owner_thread_is_the_acquirer(lockfile: str) -> None:
    """`owner_thread` is threading.get_ident() of the thread that acquired."""
    lock = new_lock(lockfile)
    assert lock.owner_thread is None
    lock.acquire()
    assert lock.owner_thread == threading.get_ident()
    lock.release()
    worker = Worker(lambda: (lock.acquire(shared=True), lock.owner_thread)).join()
    assert worker.error is None
    assert worker.result[1] == worker.ident != threading.get_ident()
    assert lock.owner_thread == worker.ident
    lock.release()


def test_deleted_held_lock_stays_held(lockfile: str) -> None:
    """Dropping the last reference to a held FileLock keeps the lock held, here and for others."""
    lock = new_lock(lockfile)
    lock.acquire()
    del lock
    gc.collect()
    try:
        assert probe(lockfile, "sh") == "busy"
        fresh = new_lock(lockfile)
        with pytest.raises(LockBusy):
            fresh.acquire(blocking=False, shared=True)
        waiter = Worker(fresh.acquire, timeout=0.05).join()  # another thread: waits, times out
        assert isinstance(waiter.error, LockTimeout), repr(waiter.error)
    finally:  # find the orphan and let go, so the process is left clean
        for obj in gc.get_objects():
            if isinstance(obj, FileLock) and obj.lockfile == lockfile and obj.locked:
                obj.release()
    assert probe(lockfile) == "free"


# ---------------------------------------------------------------------------
# 7. upgrade() and downgrade() in-process


def test_upgrade_waits_for_other_shared_holder(lockfile: str) -> None:
    """upgrade() is LockBusy, or waits, while another object shares; then it is exclusive."""
    lock = new_lock(lockfile)
    lock.acquire(shared=True)
    with HolderThread(lockfile, shared=True) as holder:
        with pytest.raises(LockBusy):
            lock.upgrade(blocking=False)
        assert lock.mode == "shared"
        waiter = Worker(lock.upgrade, timeout=BOUND)
        wait_in_futex(waiter)
        assert lock.mode == "shared"
        holder.release()
    waiter.join()
    assert waiter.error is None, repr(waiter.error)
    assert waiter.ended >= holder.released_at
    assert lock.mode == "exclusive"
    assert probe(lockfile, "sh") == "busy"
    lock.release()
    assert probe(lockfile) == "free"


def test_downgrade_admits_waiting_shared(lockfile: str) -> None:
    """downgrade() lets another object's waiting shared acquire in; both then share."""
    lock, reader = new_lock(lockfile), new_lock(lockfile)
    lock.acquire()
    waiter = Worker(reader.acquire, timeout=BOUND, shared=True)
    wait_in_futex(waiter)
    lock.downgrade()
    waiter.join()
    assert waiter.error is None, repr(waiter.error)
    assert lock.mode == reader.mode == "shared"
    assert probe(lockfile, "sh") == "free"
    assert probe(lockfile, "ex") == "busy"
    reader.release()
    lock.release()


def test_second_concurrent_upgrade_raises(lockfile: str) -> None:
    """While one object waits to upgrade, another object's upgrade raises RuntimeError at once."""
    lock = new_lock(lockfile)
    lock.acquire(shared=True)
    with HolderThread(lockfile, shared=True) as holder:
        reader = holder.lock

        def second_upgrade() -> float:
            start = time.monotonic()
            with pytest.raises(RuntimeError):
                reader.upgrade()
            return time.monotonic() - start

        waiter = Worker(lock.upgrade, timeout=BOUND)
        wait_in_futex(waiter)
        second = Worker(second_upgrade).join()
        assert second.error is None, repr(second.error)
        assert second.result < 0.1
        assert reader.mode == "shared"
        holder.release()
    waiter.join()
    assert waiter.error is None, repr(waiter.error)
    assert lock.mode == "exclusive"
    lock.release()


def test_upgrade_and_downgrade_need_the_right_hold(lockfile: str) -> None:
    """upgrade() needs a shared hold, downgrade() an exclusive one; otherwise RuntimeError."""
    lock = new_lock(lockfile)
    with pytest.raises(RuntimeError):
        lock.upgrade()
    with pytest.raises(RuntimeError):
        lock.downgrade()
    lock.acquire()
    with pytest.raises(RuntimeError):
        lock.upgrade()
    lock.downgrade()
    with pytest.raises(RuntimeError):
        lock.downgrade()
    assert lock.mode == "shared"
    lock.release()


# ---------------------------------------------------------------------------
# 8. Bad arguments


def test_bad_timeouts_raise_value_error(lockfile: str) -> None:
    """A negative timeout, or a timeout with blocking=False, is a ValueError; nothing is taken."""
    lock = new_lock(lockfile)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-1)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-0.001, shared=True)
    with pytest.raises(ValueError):
        lock.acquire(blocking=False, timeout=1.0)
    with pytest.raises(ValueError), lock.shared(timeout=-1):
        pass
    assert not lock.locked
    lock.acquire(shared=True)
    with pytest.raises(ValueError):
        lock.upgrade(timeout=-1)
    with pytest.raises(ValueError):
        lock.upgrade(blocking=False, timeout=1.0)
    assert lock.mode == "shared"
    lock.release()
    assert probe(lockfile) == "free"


# ---------------------------------------------------------------------------
# 9. Classic POSIX locks (LATCHWIRE_LOCKS=posix)

_POSIX_CHECKS = r"""
import json, os, sys, threading, time
import latchwire
from latchwire import FileLock, LockBusy, LockCancelled, LockTimeout

held_elsewhere, free_here = sys.argv[1], sys.argv[2]
out = {}

# In-process exclusion between two objects in two threads.
a = FileLock(free_here, lockfile=free_here)
b = FileLock(free_here, lockfile=free_here)
out["kind"] = [a.lock_kind, FileLock(held_elsewhere, lockfile=held_elsewhere).lock_kind]
a.acquire()
res = {}
def contender():
    try:
        b.acquire(blocking=False)
        res["nonblocking"] = "acquired"
    except LockBusy:
        res["nonblocking"] = "busy"
    try:
        b.acquire(timeout=0.05)
        res["timed"] = "acquired"
    except LockTimeout:
        res["timed"] = "timeout"
        waiting.set()
    b.acquire(timeout=5)
    res["got_at"] = time.monotonic()
waiting = threading.Event()
t = threading.Thread(target=contender, daemon=True)
t.start()
waiting.wait(5)
released_at = time.monotonic()
a.release()
t.join(5)
res["after_release"] = res.get("got_at", 0) >= released_at
res.pop("got_at", None)
res["b_locked"] = b.locked
b.release()
out["exclusion"] = res

# Timeout accuracy against another process's hold (a kernel wait).
lock = FileLock(held_elsewhere, lockfile=held_elsewhere)
overshoots = []
for timeout in (0.05, 0.2, 0.05, 0.2, 0.05, 0.2):
    start = time.monotonic()
    try:
        lock.acquire(timeout=timeout)
        overshoots.append(None)
    except LockTimeout:
        overshoots.append(time.monotonic() - start - timeout)
out["overshoots"] = overshoots

# cancel() of a kernel wait.
res = {}
def waiter():
    try:
        lock.acquire()
        res["outcome"] = "acquired"
    except LockCancelled:
        res["outcome"] = "cancelled"
    res["ended"] = time.monotonic()
t = threading.Thread(target=waiter, daemon=True)
t.start()
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    with open("/proc/locks") as f:
        if any(" -> " in line and line.split()[5] == str(os.getpid()) for line in f):
            break
    time.sleep(0.0005)
start = time.monotonic()
lock.cancel()
t.join(5)
out["cancel"] = {"outcome": res.get("outcome"), "latency": res.get("ended", 1e9) - start,
                 "locked": lock.locked}
print(json.dumps(out))
"""


def test_posix_lock_mode(tmp_path: Any) -> None:
    """With LATCHWIRE_LOCKS=posix: exclusion between objects, timeouts and cancel still work."""
    held, free = str(tmp_path / "held.lock"), str(tmp_path / "free.lock")
    holder = new_lock(held)
    holder.acquire()
    assert holder.lock_kind == "ofd"
    try:
        env = {**os.environ, "LATCHWIRE_LOCKS": "posix"}
        run = subprocess.run([sys.executable, "-c", _POSIX_CHECKS, held, free], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    finally:
        holder.release()
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    print(out)
    assert out["kind"] == ["posix", "posix"]
    assert out["exclusion"] == {"nonblocking": "busy", "timed": "timeout",
                                "after_release": True, "b_locked": True}
    overshoots = out["overshoots"]
    assert None not in overshoots, f"acquired a lock held by another process: {overshoots}"
    _assert_timely(overshoots, 0.05)
    assert out["cancel"]["outcome"] == "cancelled", out["cancel"]
    assert out["cancel"]["latency"] < PROMPT and not out["cancel"]["locked"], out["cancel"]


# ---------------------------------------------------------------------------
# 10. The wake signal

_SIGNAL_CHECK = r"""
import json, sys, latchwire
from latchwire import LockTimeout

path = sys.argv[1]
lock = latchwire.FileLock(path, lockfile=path)
out = {}
try:
    lock.acquire(timeout=0.05)
    out["wait"] = "acquired"
except LockTimeout:
    out["wait"] = "timeout"
except ValueError as exc:
    out["wait"] = "ValueError: " + str(exc)
try:
    out["signal"] = latchwire.wake_signal()
except ValueError:
    out["signal"] = "ValueError"
with open("/proc/self/status") as f:
    caught = next(int(l.split()[1], 16) for l in f if l.startswith("SigCgt:"))
out["caught"] = [n for n in range(1, 65) if caught >> (n - 1) & 1]
print(json.dumps(out))
"""


def _signal_check(lockfile: str, value: str) -> dict[str, Any]:
    """In a child with LATCHWIRE_SIGNAL=value: a timed wait on a lock we hold, wake_signal()."""
    env = {**os.environ, "LATCHWIRE_SIGNAL": value}
    run = subprocess.run([sys.executable, "-c", _SIGNAL_CHECK, lockfile], env=env,
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_wake_signal_is_a_stable_realtime_signal() -> None:
    """wake_signal() is a real-time signal, the same on every call."""
    signo = latchwire.wake_signal()
    assert isinstance(signo, int)
    assert signal.SIGRTMIN <= signo <= signal.SIGRTMAX
    assert all(latchwire.wake_signal() == signo for _ in range(3))


def test_wake_signal_from_environment(lockfile: str) -> None:
    """LATCHWIRE_SIGNAL=N picks N: waits time out through it and its handler is installed."""
    holder = new_lock(lockfile)
    holder.acquire()
    try:
        chosen = signal.SIGRTMIN + 3
        out = _signal_check(lockfile, str(chosen))
    finally:
        holder.release()
    assert out["wait"] == "timeout"
    assert out["signal"] == chosen
    assert chosen in out["caught"]
    assert signal.SIGRTMAX not in out["caught"]  # the default choice was not made as well


@pytest.mark.parametrize("value", ["5", "65", str(signal.SIGRTMIN - 1)])
def test_wake_signal_out_of_range(lockfile: str, value: str) -> None:
    """A LATCHWIRE_SIGNAL that is not a real-time signal is a ValueError on the first wait."""
    holder = new_lock(lockfile)
    holder.acquire()
    try:
        out = _signal_check(lockfile, value)
    finally:
        holder.release()
    assert out["wait"].startswith("ValueError"), out
    assert out["signal"] == "ValueError"
    assert int(value) not in out["caught"]


def test_wake_signal_not_needed_without_waiting(lockfile: str) -> None:
    """An out-of-range LATCHWIRE_SIGNAL does not break uncontended locking (no wait, no signal)."""
    env = {**os.environ, "LATCHWIRE_SIGNAL": "5"}
    code = ("import sys, latchwire; l = latchwire.FileLock(sys.argv[1], lockfile=sys.argv[1]); "
            "l.acquire(); l.release(); l.acquire(timeout=1, shared=True); print('ok')")
    run = subprocess.run([sys.executable, "-c", code, lockfile], env=env,
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr

