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
watchdog ends the run if a test hangs anyway. Timing is judged against threading.Lock
measured in the same test (timed-out waits, wake-ups, the GIL and CPU while waiting), by
medians, within bounds a loaded 2-CPU machine does not reach but a regression does.
"""

from __future__ import annotations

import gc
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from lwlocks import (
    CODE_LIFETIME_SEEN,
    assert_at_once,
    assert_timely_as_reference,
    assert_woken_as_reference,
    timed_out_waits,
    wake_latency,
)
from lwtest import BOUND, here, site
from lwthreads import Interrupted, Interrupter, Worker, interrupted_in_main, wait_until_blocked
from witness import MemoryWitness

import latchwire
from latchwire import Mutex

lock_tests = pytest.importorskip("test.lock_tests")

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
    assert_at_once(time.monotonic() - t0, 4 * BOUND, "three non-blocking acquires")
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
    try:
        overshoots, reference = timed_out_waits(lock.acquire, timeout=0.05, rounds=3)
        assert lock.locked(), "the holder lost the lock"
    finally:
        release.set()
    holder.outcome()
    assert not lock.locked()
    assert_timely_as_reference(overshoots, reference, 0.05)


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
    assert_woken_as_reference(waiter.ended - released_at,
                              wake_latency(threading.Lock(), sem_wait=True))
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
    assert_at_once(elapsed, BOUND, "three re-acquires by the holder")
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


def made_function(body: str, name: str = "take") -> tuple[Callable[..., Any], weakref.ref[Any]]:
    """A function compiled from body (its own code object, freed with it), and a weak
    reference to that code object."""
    namespace: dict[str, Any] = {}
    exec(compile(f"def {name}(lock):\n    {body}\n", f"<made {name}>", "exec"), namespace)
    fn = namespace[name]
    return fn, weakref.ref(fn.__code__)


@CODE_LIFETIME_SEEN
def test_a_site_keeps_its_code_object_until_the_next_holder_comes_from_elsewhere() -> None:
    """The Mutex keeps a reference to where it was last taken, and drops it as soon as a
    holder takes it at another code object: a dynamically made function's code is freed
    then, not leaked (nor freed while a reader could still be reading it)."""
    m = Mutex()
    take, code = made_function("lock.acquire()")
    take(m)
    assert m.site == "<made take>:2"
    m.release()
    del take
    gc.collect()
    assert code() is not None, "released: still the last site, kept"
    with m:
        assert m.site is not None and m.site.startswith(__file__)
    assert code() is None, "the site moved on: its old code object was leaked"
    take, code = made_function("lock.acquire()")
    take(m)
    m.release()
    del take, m
    gc.collect()
    assert code() is None, "a Mutex dropped without being taken again leaked its last site"


def test_owner_site_and_repr_read_while_holders_come_and_go() -> None:
    """4 threads take one Mutex over and over, each from a function of its own (a code
    object and a line of its own); 2 threads read owner, site and repr meanwhile. Every
    reading names a real holder with its own site, never one thread's ident with another's
    site (the owner is read as one snapshot), and nothing crashes while the site's code
    object keeps changing."""
    m = Mutex("come-and-go")
    takers = [made_function("return lock.acquire()", f"take_{i}")[0] for i in range(4)]
    stop = threading.Event()
    sites: dict[int, str] = {}

    def hold(index: int) -> int:
        take = takers[index]
        sites[threading.get_ident()] = f"<made take_{index}>:2"
        rounds = 0
        while not stop.is_set():
            if take(m):
                time.sleep(0)  # let the readers in while it is held
                m.release()
                rounds += 1
        return rounds

    def read() -> int:
        seen = 0
        while not stop.is_set():
            owner, site_, text = m.owner, m.site, repr(m)
            for reading in (owner, (None, site_)):
                if reading is not None and reading[1] is not None:
                    assert reading[1] in sites.values(), reading
            if owner is not None:
                assert sites[owner[0]] == owner[1], (owner, sites)
                seen += 1
            assert "held by thread" in text or "unlocked" in text, text
        return seen

    holders = [Worker(hold, i) for i in range(4)]
    readers = [Worker(read) for _ in range(2)]
    time.sleep(1)  # the test's duration, not a handshake
    stop.set()
    assert all(w.outcome() for w in holders)
    assert sum(w.outcome() for w in readers) > 0, "no reader ever saw a holder"


# ---------------------------------------------------------------------------
# 3. How a Mutex waits: without the GIL, without CPU, interruptibly, on time


def waiting_costs(lock: Any, wait: float) -> tuple[bool, float, float, int, float]:
    """A Worker's timed acquire of lock (held by the caller), beside another Worker running
    Python code meanwhile: (got, waited, CPU the waiter used, loop iterations the other
    ran, its longest gap between two iterations)."""
    waiting = threading.Event()

    def take() -> tuple[bool, float, float]:
        cpu = time.thread_time()
        waiting.set()
        t0 = time.monotonic()
        got = lock.acquire(timeout=wait)
        return got, time.monotonic() - t0, time.thread_time() - cpu

    def count(waiter: Worker) -> tuple[int, float]:
        assert waiting.wait(BOUND)
        iterations, longest = 0, 0.0
        last = time.monotonic()
        while not waiter.done.is_set():
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now
            iterations += 1
        return iterations, longest

    waiter = Worker(take)
    counter = Worker(count, waiter)
    got, waited, cpu = waiter.outcome()
    return (got, waited, cpu, *counter.outcome())


def test_a_waiter_holds_no_gil_and_burns_no_cpu() -> None:
    """While a Mutex waiter waits 0.3 s, Python code in another thread runs about as
    much, with no longer stalls, and the waiter uses about as little CPU, as beside a
    threading.Lock waiter measured the same way in between (a waiter holding the GIL
    would stall the other thread for the whole wait; a polling one would use CPU)."""
    wait = 0.3
    m, reference = Mutex(), threading.Lock()
    assert m.acquire()  # both held here throughout: the waiters time out
    assert reference.acquire()
    try:
        runs = [waiting_costs(lock, wait) for lock in (reference, m, reference, m)]
    finally:
        m.release()
        reference.release()
    ref_runs, runs = runs[0::2], runs[1::2]
    report = f"Mutex: {runs}; threading.Lock: {ref_runs}"
    assert all(not got and waited >= wait for got, waited, *_ in runs), report
    ref_iterations = min(r[3] for r in ref_runs)
    ref_longest = max(r[4] for r in ref_runs)
    ref_cpu = max(r[2] for r in ref_runs)
    for _, _, cpu, iterations, longest in runs:
        assert iterations > ref_iterations / 4, f"Python code hardly ran: {report}"
        assert longest <= ref_longest + wait / 2, f"Python code stalled: {report}"
        assert cpu <= 2 * ref_cpu + wait / 6, f"the waiter used CPU: {report}"


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
    """Never early, and as prompt as threading.Lock's timed waits beside it over 9 rounds
    (this VM has multi-ms scheduling hiccups, which both show alike)."""
    m = Mutex()
    release = threading.Event()
    holder = hold_in_thread(m, release)
    try:
        overshoots, reference = timed_out_waits(m.acquire, timeout=0.05, rounds=9)
    finally:
        release.set()
        holder.join()
    assert_timely_as_reference(overshoots, reference, 0.05)


# ---------------------------------------------------------------------------
# 4. Adversarial: many threads at once, random timeouts and interrupts, a witness

STRESS_SECONDS = 1.5


def mutex_section(m: Mutex, index: int, witness: MemoryWitness, counters: list[int],
                  rng: random.Random) -> None:
    """A critical section of lock index: recorded in the witness, the holder checked, its
    counter bumped by a read, a pause and a write (a lost update if two were inside)."""
    witness.enter(index, "x")
    owner = m.owner
    assert owner is not None and owner[0] == threading.get_ident(), owner
    value = counters[index]
    if rng.random() < 0.5:
        time.sleep(0)  # another thread may run here
    counters[index] = value + 1
    witness.exit(index, "x")


def mutex_attempt(m: Mutex, rng: random.Random) -> bool:
    """One way of taking m, picked at random: whether it was taken."""
    how = rng.random()
    if how < 0.2:
        return m.acquire(blocking=False)
    if how < 0.6:
        return m.acquire(timeout=rng.choice([0.0, rng.uniform(0, 0.003)]))
    return m.acquire()


def test_adversarial_mutexes() -> None:
    """8 threads (the main one interrupted by signals in its waits) take 3 Mutexes at
    random, with random timeouts, non-blocking tries, with-statements and untimed waits,
    for 1.5 s. A witness log shows no two holders of one lock at once, every lock's
    counter equals the sections entered, no untimed wait hangs (a lost wake-up would),
    and every lock ends free and usable."""
    locks = [Mutex(f"stress-{i}") for i in range(3)]
    counters = [0] * len(locks)
    witness = MemoryWitness()
    stop = threading.Event()
    start = threading.Barrier(8)

    def run(seed: int) -> list[int]:
        rng = random.Random(seed)
        taken = [0] * len(locks)
        start.wait(BOUND)
        while not stop.is_set():
            index = rng.randrange(len(locks))
            m = locks[index]
            if rng.random() < 0.25:
                with m:
                    mutex_section(m, index, witness, counters, rng)
            elif mutex_attempt(m, rng):
                try:
                    mutex_section(m, index, witness, counters, rng)
                finally:
                    m.release()
            else:
                continue
            taken[index] += 1
        return taken

    workers = [Worker(run, seed) for seed in range(1, 8)]
    rng = random.Random(0)
    mine = [0] * len(locks)
    me = threading.get_ident()
    with Interrupter() as interrupter:
        start.wait(BOUND)
        deadline = time.monotonic() + STRESS_SECONDS
        while time.monotonic() < deadline:
            index = rng.randrange(len(locks))
            m = locks[index]
            try:
                interrupter.armed = True
                got = m.acquire(timeout=rng.uniform(0, 0.003)) if rng.random() < 0.5 \
                    else m.acquire()
                interrupter.armed = False
            except Interrupted:
                owner = m.owner
                got = owner is not None and owner[0] == me  # interrupted after it got it?
            if got:
                try:
                    mutex_section(m, index, witness, counters, rng)
                finally:
                    m.release()
                mine[index] += 1
        stop.set()
        taken = [w.outcome(timeout=4 * BOUND) for w in workers]
    taken.append(mine)
    sections = witness.check()
    assert sections == sum(map(sum, taken))
    assert counters == [sum(t[i] for t in taken) for i in range(len(locks))], \
        "a counter lost an update: two threads were inside"
    assert all(sum(t) > 0 for t in taken), f"a thread never got a lock: {taken}"
    assert interrupter.sent > 0
    for m in locks:
        assert not m.locked() and m.owner is None
        assert m.acquire(blocking=False), "a lock was left unusable"
        m.release()


def test_adversarial_mutex_handoffs_under_timeouts() -> None:
    """A release that lands among waiters' deadlines must still reach a waiter that stays.

    Episodes of one Mutex: this thread holds it while 6 threads wait once each with a
    timeout of 0.5-3 ms and a seventh waits without one; it lets go at a random moment
    in that range, so the one waiter a release wakes is often just timing out. Either
    that waiter takes the lock (and its release wakes the next) or the wake-up passes
    on; if a waiter that gives up swallowed it, the untimed waiter would sleep on with
    the lock free, and the episode's closing barrier would break. 150 episodes."""
    m = Mutex("handoffs")
    witness = MemoryWitness()
    counters = [0]
    episodes, waiters = 300, 7
    begin = threading.Barrier(waiters + 1)
    end = threading.Barrier(waiters + 1)

    def run(seed: int, untimed: bool) -> int:
        rng = random.Random(seed)
        timed_out = 0
        for _ in range(episodes):
            begin.wait(BOUND)
            if m.acquire() if untimed else m.acquire(timeout=rng.uniform(0.0005, 0.003)):
                try:
                    mutex_section(m, 0, witness, counters, rng)
                finally:
                    m.release()
            else:
                timed_out += 1
            end.wait(BOUND)  # broken, in every thread, if the untimed waiter never woke
        return timed_out

    workers = [Worker(run, seed, seed == 0) for seed in range(waiters)]
    rng = random.Random(waiters)
    for _ in range(episodes):
        assert m.acquire(timeout=BOUND)
        begin.wait(BOUND)
        time.sleep(rng.uniform(0, 0.003))  # let go at a random moment among the deadlines
        m.release()
        end.wait(BOUND)
    timed_out = sum(w.outcome() for w in workers)
    assert counters == [witness.check()]
    assert timed_out > 0, "no waiter ever timed out: the test proved nothing"
    assert not m.locked()


# ---------------------------------------------------------------------------
# 5. CPython's own lock tests


class MutexLockTests(lock_tests.LockTests):  # type: ignore[misc]
    """Lib/test/lock_tests.py's LockTests (the non-reentrant lock's suite) run on Mutex.

    Where a Mutex differs on purpose, the case is replaced by one asserting what it
    does instead: being error-checking, only the holder releases and the holder
    re-acquiring raises at once; its repr names the holder; it has no private
    _at_fork_reinit() (a fork child gets a fresh state from the fork generation).
    test_state_after_timeout times out in another thread, for the same reason.
    """

    locktype = staticmethod(Mutex)

    def test_repr(self) -> None:
        self.assertIn("unlocked", repr(self.locktype()))

    def test_locked_repr(self) -> None:
        lock = self.locktype()
        lock.acquire()
        self.assertIn(f"held by thread {threading.get_ident()}", repr(lock))
        lock.release()

    def test_reacquire(self) -> None:
        lock = self.locktype()
        lock.acquire()
        with self.assertRaises(RuntimeError):
            lock.acquire()
        self.assertFalse(lock.acquire(blocking=False))
        lock.release()

    def test_different_thread(self) -> None:
        lock = self.locktype()
        lock.acquire()
        with self.assertRaises(RuntimeError):
            Worker(lock.release).outcome()
        self.assertTrue(lock.locked())
        lock.release()

    def test_at_fork_reinit(self) -> None:
        self.assertFalse(hasattr(self.locktype(), "_at_fork_reinit"))

    def test_state_after_timeout(self) -> None:
        """Issue #11618's check with the timed-out acquire made by another thread: the
        holder's own would raise at once (a Mutex is error-checking)."""
        lock = self.locktype()
        lock.acquire()
        self.assertFalse(Worker(lambda: lock.acquire(timeout=0.01)).outcome())
        lock.release()
        self.assertFalse(lock.locked())
        self.assertTrue(lock.acquire(blocking=False))
        lock.release()


def test_public_names() -> None:
    assert latchwire.Mutex is Mutex
    assert issubclass(latchwire.LockOrderError, RuntimeError)
