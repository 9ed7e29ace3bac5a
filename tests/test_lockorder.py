"""latchwire.lockorder: the lock-order checker (lockdep) over Mutex, RWLock, FileLock and
LockSpace leases.

The checker is global state: every test that needs it on asks for the ``checker``
fixture, which resets it, turns it on, and afterwards turns it off and resets it again.
Orders are judged by lock *class* (a lock's name, or where it was created), and an
inversion is reported the first time it is taken, whether or not the threads would have
deadlocked: so the threads here mostly run one after the other, and nothing can hang.
Every wait is bounded, and a watchdog ends the run if a test hangs anyway.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lwlocks import pairs
from lwtest import BOUND, here, site
from lwthreads import Worker, poll_until

from latchwire import FileLock, LockOrderError, LockSpace, Mutex, RWLock, lockorder

pytestmark = pytest.mark.usefixtures("watchdog")

SEED = 20240611  # the randomised tests are the same every run
STRESS_SECONDS = 1.5


# ---------------------------------------------------------------------------
# 1. Off by default, on with LATCHWIRE_LOCKDEP=1


_INVERT = """
import latchwire
from latchwire import Mutex, lockorder
a, b = Mutex("a"), Mutex("b")
with a:
    with b:
        pass
try:
    with b:
        with a:
            pass
    outcome = "no report"
except latchwire.LockOrderError:
    outcome = "LockOrderError"
print(lockorder.enabled(), outcome)
"""


@pytest.mark.parametrize(("value", "expected"), [(None, "False no report"),
                                                 ("0", "False no report"),
                                                 ("1", "True LockOrderError")],
                         ids=["unset", "0", "1"])
def test_off_by_default_and_on_with_the_environment(value: str | None, expected: str) -> None:
    env = dict(os.environ)
    env.pop("LATCHWIRE_LOCKDEP", None)
    if value is not None:
        env["LATCHWIRE_LOCKDEP"] = value
    done = subprocess.run([sys.executable, "-c", _INVERT], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_enable_disable_reset(checker: None) -> None:
    a, b = Mutex("toggle-a"), Mutex("toggle-b")
    assert lockorder.enabled() is True
    with a, b:
        pass
    assert ("toggle-a", "toggle-b") in pairs()
    lockorder.disable()
    assert lockorder.enabled() is False
    with b, a:  # off: not checked, not recorded
        pass
    assert ("toggle-b", "toggle-a") not in pairs()
    assert ("toggle-a", "toggle-b") in pairs(), "disable() forgot what was learnt"
    lockorder.enable()
    with b, pytest.raises(LockOrderError):
        a.acquire()
    assert not a.locked()
    lockorder.reset()
    assert lockorder.orders() == []
    with b, a:  # forgotten: this order is now the first one seen
        pass
    assert pairs() == {("toggle-b", "toggle-a")}


# ---------------------------------------------------------------------------
# 2. The seed: libvirt's nwfilter deadlock


def test_nwfilter_inversion_is_reported(checker: None) -> None:
    """Thread 1 (a filter rebuild) takes nwfilter-driver, virt-driver, nwfilter-update,
    domain; thread 2 (a domain start) takes virt-driver, domain, then nwfilter-update:
    the inversion nwfilter-update/domain is reported when thread 2 takes nwfilter-update,
    naming both classes, both threads and the sites of both orders."""
    nwfilter_driver = Mutex("nwfilter-driver")
    virt_driver = Mutex("virt-driver")
    update = Mutex("nwfilter-update")
    domain = Mutex("domain")
    lines: dict[str, int] = {}

    def rebuild() -> None:
        with nwfilter_driver, virt_driver, update:
            lines["t1 update"] = here() - 1
            with domain:
                lines["t1 domain"] = here() - 1
        lockorder.assert_none_held()

    def start_domain() -> str:
        with virt_driver, domain:
            lines["t2 domain"] = here() - 1
            t0 = time.monotonic()
            with pytest.raises(LockOrderError) as info:
                lines["t2 update"] = here() + 1
                update.acquire()
            assert time.monotonic() - t0 < 1.0
            assert not update.locked(), "the refused acquisition took the lock"
            assert [h[0] for h in lockorder.held()] == [virt_driver, domain]
        lockorder.assert_none_held()
        return str(info.value)

    Worker(rebuild, thread_name="nwfilter-rebuild").outcome()
    assert not pairs() & {("domain", "nwfilter-update")}
    message = Worker(start_domain, thread_name="domain-start").outcome()

    assert "'nwfilter-update'" in message and "'domain'" in message, message
    assert "nwfilter-rebuild" in message and "domain-start" in message, message
    for where in ("t2 update", "t2 domain", "t1 update", "t1 domain"):
        assert site(lines[where]) in message, f"{where} site missing from:\n{message}"
    assert ("nwfilter-update", "domain") in pairs()
    assert ("domain", "nwfilter-update") not in pairs(), "the refused order was recorded"
    for lock in (nwfilter_driver, virt_driver, update, domain):
        assert not lock.locked()


@pytest.mark.parametrize("threads", [2, 4])
def test_fixed_nwfilter_orders_report_nothing(checker: None, threads: int) -> None:
    """The fix: nwfilter-update is an RWLock taken first (written by a rebuild, read by a
    domain start). 10,000 randomised interleavings of both paths: no report, no deadlock."""
    update = RWLock("nwfilter-update")
    nwfilter_driver = Mutex("nwfilter-driver")
    virt_driver = Mutex("virt-driver")
    domains = [Mutex("domain") for _ in range(3)]
    iterations = 10_000 // threads

    def work(index: int) -> int:
        rng = random.Random(SEED + index)
        rebuilds = 0
        for _ in range(iterations):
            domain = rng.choice(domains)
            if rng.random() < 0.3:
                rebuilds += 1
                with update.write(), nwfilter_driver, virt_driver, domain:
                    for _ in range(rng.randrange(3)):
                        time.sleep(0)
            else:
                with update.read(), virt_driver, domain:
                    for _ in range(rng.randrange(3)):
                        time.sleep(0)
        lockorder.assert_none_held()
        return rebuilds

    workers = [Worker(work, i, thread_name=f"worker-{i}") for i in range(threads)]
    rebuilds = [w.outcome(timeout=60) for w in workers]
    assert all(rebuilds), rebuilds
    assert pairs() == {
        ("nwfilter-update", "nwfilter-driver"), ("nwfilter-update", "virt-driver"),
        ("nwfilter-update", "domain"), ("nwfilter-driver", "virt-driver"),
        ("nwfilter-driver", "domain"), ("virt-driver", "domain"),
    }


# ---------------------------------------------------------------------------
# 3. Longer cycles, and no false reports


def test_three_class_cycle_is_reported_before_blocking(checker: None) -> None:
    a, b, c = Mutex("cycle-A"), Mutex("cycle-B"), Mutex("cycle-C")

    def nest(first: Mutex, then: Mutex) -> None:
        with first, then:
            pass

    Worker(nest, a, b, thread_name="t-ab").outcome()
    Worker(nest, b, c, thread_name="t-bc").outcome()
    # Another thread holds A: taking it while holding C would block (and, with the
    # orders above, could deadlock); the checker reports instead of waiting.
    leave = threading.Event()
    held = threading.Event()

    def hold_a() -> None:
        with a:
            held.set()
            assert leave.wait(BOUND)

    holder = Worker(hold_a, thread_name="t-hold-a")
    assert held.wait(BOUND)
    try:
        with c:
            t0 = time.monotonic()
            with pytest.raises(LockOrderError) as info:
                a.acquire()
            assert time.monotonic() - t0 < 1.0, "the checker reported only after waiting"
    finally:
        leave.set()
    holder.outcome()
    message = str(info.value)
    for name in ("'cycle-A'", "'cycle-B'", "'cycle-C'"):
        assert name in message, message
    assert "t-ab" in message and "t-bc" in message, message
    assert not a.locked()


def test_consistent_orders_over_50_classes_report_nothing(checker: None) -> None:
    """Random nested subsets of 50 classes (two locks each), always in ascending class
    order, in 4 threads: no report, and every order recorded ascends."""
    classes = [[Mutex(f"class-{i:02d}") for _ in range(2)] for i in range(50)]

    def work(index: int) -> None:
        rng = random.Random(SEED + index)
        for _ in range(500):
            chosen = sorted(rng.sample(range(50), rng.randint(1, 6)))
            with contextlib.ExitStack() as stack:
                for i in chosen:
                    stack.enter_context(rng.choice(classes[i]))
                if rng.random() < 0.5:
                    time.sleep(0)
        lockorder.assert_none_held()

    workers = [Worker(work, i, thread_name=f"worker-{i}") for i in range(4)]
    for worker in workers:
        worker.outcome(timeout=60)
    seen = pairs()
    assert len(seen) > 300, f"only {len(seen)} orders seen: the test checked little"
    assert all(first < then for first, then in seen)


def test_orders_are_per_thread(checker: None) -> None:
    """A lock another thread holds is no order for this one."""
    a, b = Mutex("per-thread-a"), Mutex("per-thread-b")
    leave, held = threading.Event(), threading.Event()

    def hold_a() -> list[Any]:
        with a:
            held.set()
            assert leave.wait(BOUND)
            return lockorder.held()

    holder = Worker(hold_a)
    assert held.wait(BOUND)
    try:
        with b:
            assert [h[0] for h in lockorder.held()] == [b]
    finally:
        leave.set()
    assert [h[0] for h in holder.outcome()] == [a]
    assert pairs() == set()


# ---------------------------------------------------------------------------
# 4. Recursive reads


def test_recursive_read_of_a_writer_preferring_rwlock_is_reported(checker: None) -> None:
    rw = RWLock("recursive-read")
    with rw.read():
        line = here() - 1
        with pytest.raises(LockOrderError) as info:
            again = here() + 1
            rw.acquire_read()
        assert [depth for _, _, depth in rw.readers] == [1], "the refused read counted"
        with pytest.raises(LockOrderError), rw.read():
            pass
    message = str(info.value)
    assert "'recursive-read'" in message, message
    assert site(line) in message and site(again) in message, message
    assert rw.readers == []


def test_recursive_read_without_writer_preference_is_not_reported(checker: None) -> None:
    rw = RWLock("relaxed-read", prefer_writers=False)
    with rw.read(), rw.read():
        assert rw.acquire_read()
        assert [depth for _, _, depth in rw.readers] == [3]
        rw.release_read()
    assert rw.readers == []


# ---------------------------------------------------------------------------
# 5. FileLock and LockSpace take part


def test_filelock_and_mutex_inversion(checker: None, tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "app.conf")
    m = Mutex("config-cache")
    assert lock.lockclass == lock.lockfile

    def file_then_mutex() -> list[Any]:
        with lock, m:
            return [h[0] for h in lockorder.held()]

    assert Worker(file_then_mutex, thread_name="config-writer").outcome() == [lock, m]
    assert (lock.lockfile, "config-cache") in pairs()
    with m:
        with pytest.raises(LockOrderError) as info:
            lock.acquire()
        assert not lock.locked, "the refused acquisition took the file lock"
    message = str(info.value)
    assert repr(lock.lockfile) in message and "'config-cache'" in message, message
    assert "config-writer" in message, message


def test_filelock_nonblocking_acquire_is_not_checked(checker: None, tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "app.conf")
    m = Mutex("config-cache-2")
    with lock, m:
        pass
    with m:
        assert lock.acquire(blocking=False)  # a try-lock cannot deadlock
        assert [h[0] for h in lockorder.held()] == [m, lock]
        lock.release()


def test_lockspace_wait_records_the_order(checker: None, tmp_path: Path) -> None:
    """acquire(wait=True) is checked under class "LockSpace <dir>": holding a Mutex, it
    records mutex -> lockspace. A lease belongs to an owner, not a thread: it is never on
    the thread's held list, so it starts no order itself. acquire(wait=False) cannot
    block and is not checked."""
    space = LockSpace(tmp_path / "leases")
    lease_class = f"LockSpace {space.directory}"
    m = Mutex("domain-start")
    with m:
        line = here() - 1
        space.acquire("disk.img", wait=True)
        assert [h[0] for h in lockorder.held()] == [m]
    orders = [o for o in lockorder.orders() if o.then == lease_class]
    assert [(o.first, o.first_site) for o in orders] == [("domain-start", site(line))]
    with Mutex("after-lease"):
        pass  # the lease is held, but by its owner, not by this thread
    assert not any(first == lease_class for first, _ in pairs())
    space.release("disk.img")

    probe = Mutex("probe")
    with probe:
        space.acquire("other.img")  # wait=False
    space.release("other.img")
    assert ("probe", lease_class) not in pairs()
    lockorder.assert_none_held()


def test_lockspace_leases_share_one_class(checker: None, tmp_path: Path) -> None:
    space = LockSpace(tmp_path / "leases")
    m = Mutex("lease-user")
    with m:
        for name in ("a.img", "b.img", "c.img"):
            space.acquire(name, wait=True)
    for name in ("a.img", "b.img", "c.img"):
        space.release(name)
    assert pairs() == {("lease-user", f"LockSpace {space.directory}")}


# ---------------------------------------------------------------------------
# 6. held(), assert_held(), assert_none_held(), try-locks


def test_held_lists_this_threads_locks_in_order(checker: None) -> None:
    outer, middle, inner = Mutex("held-outer"), RWLock("held-middle"), Mutex("held-inner")
    assert lockorder.held() == []
    lockorder.assert_none_held()
    with outer:
        l1 = here() - 1
        with middle.read():
            l2 = here() - 1
            with inner:
                l3 = here() - 1
                assert lockorder.held() == [(outer, "exclusive", site(l1)),
                                            (middle, "read", site(l2)),
                                            (inner, "exclusive", site(l3))]
                for lock in (outer, middle, inner):
                    lockorder.assert_held(lock)
                with pytest.raises(AssertionError):
                    lockorder.assert_none_held()
                assert Worker(lockorder.held).outcome() == []
                with pytest.raises(AssertionError):
                    Worker(lockorder.assert_held, outer).outcome()
                Worker(lockorder.assert_none_held).outcome()
        assert lockorder.held() == [(outer, "exclusive", site(l1))]
    assert lockorder.held() == []
    lockorder.assert_none_held()


def test_held_after_release_out_of_order_and_write_holds(checker: None) -> None:
    a, rw, b = Mutex("ooo-a"), RWLock("ooo-rw"), Mutex("ooo-b")
    a.acquire()
    rw.acquire_write()
    line = here() - 1
    b.acquire()
    a.release()
    assert [(h[0], h[1]) for h in lockorder.held()] == [(rw, "exclusive"), (b, "exclusive")]
    assert lockorder.held()[0][2] == site(line)
    with pytest.raises(AssertionError):
        lockorder.assert_held(a)
    b.release()
    rw.release_write()
    lockorder.assert_none_held()


def test_held_after_downgrade_keeps_the_hold_in_place(checker: None) -> None:
    """downgrade() turns the write hold into a read hold without letting go: held() still
    lists it first (oldest first), now for reading, taken where it was taken (as
    RWLock.readers says)."""
    rw, m = RWLock("downgraded"), Mutex("after-downgraded")
    rw.acquire_write()
    line = here() - 1
    m.acquire()
    try:
        rw.downgrade()
        assert rw.readers == [(threading.get_ident(), site(line), 1)]
        assert [(h[0], h[1]) for h in lockorder.held()] == [(rw, "read"), (m, "exclusive")]
        assert lockorder.held()[0][2] == site(line)
    finally:
        m.release()
        rw.release_read()
    lockorder.assert_none_held()


def test_assert_held_fails_for_a_lock_not_held(checker: None) -> None:
    m, other = Mutex("assert-m"), Mutex("assert-other")
    with pytest.raises(AssertionError):
        lockorder.assert_held(m)
    with m:
        lockorder.assert_held(m)
        with pytest.raises(AssertionError):
            lockorder.assert_held(other)
    with pytest.raises(AssertionError):
        lockorder.assert_held(m)


@pytest.mark.parametrize("kind", ["Mutex", "RWLock-read", "RWLock-write"])
def test_try_locks_are_not_checked_but_count_as_held(checker: None, kind: str) -> None:
    if kind == "Mutex":
        x: Any = Mutex("try-x")
        try_take, take, drop = (lambda: x.acquire(blocking=False), x.acquire, x.release)
    else:
        x = RWLock("try-x")
        if kind == "RWLock-read":
            try_take, take, drop = (lambda: x.acquire_read(blocking=False), x.acquire_read,
                                    x.release_read)
        else:
            try_take, take, drop = (lambda: x.acquire_write(blocking=False), x.acquire_write,
                                    x.release_write)
    y = Mutex("try-y")

    # A try-lock taken held: what is taken next is ordered after it.
    assert try_take()
    assert [h[0] for h in lockorder.held()] == [x]
    lockorder.assert_held(x)
    with y:
        pass
    drop()
    assert pairs() == {("try-x", "try-y")}

    with y:
        # The inverse order as a try-lock: it cannot deadlock, so it is not reported...
        assert try_take()
        assert [h[0] for h in lockorder.held()] == [y, x]
        drop()
        # ...as a blocking acquisition it is.
        with pytest.raises(LockOrderError):
            take()
    assert ("try-y", "try-x") not in pairs()
    lockorder.assert_none_held()


# ---------------------------------------------------------------------------
# 7. Classes of unnamed locks


def test_unnamed_locks_are_classed_by_creation_site(checker: None) -> None:
    twins = [Mutex() for _ in range(2)]
    line = here() - 1
    looped = []
    for _ in range(2):
        looped.append(RWLock())
    loop_line = here() - 1
    a = Mutex()
    a_line = here() - 1
    b = Mutex()
    b_line = here() - 1
    assert twins[0].lockclass == twins[1].lockclass == site(line)
    assert looped[0].lockclass == looped[1].lockclass == site(loop_line)
    assert (a.lockclass, b.lockclass) == (site(a_line), site(b_line))

    # One class: either order of the twins is no inversion (nor is it for the loop's).
    with twins[0], twins[1]:
        pass
    with twins[1], twins[0]:
        pass
    with looped[0].write(), looped[1].write():
        pass
    with looped[1].write(), looped[0].write():
        pass
    assert pairs() == set()

    # Two classes: it is.
    with a, b:
        pass
    with b, pytest.raises(LockOrderError) as info:
        a.acquire()
    assert a.lockclass in str(info.value) and b.lockclass in str(info.value)
    assert not a.locked()


def test_locks_of_one_name_are_one_class(checker: None) -> None:
    first, second = Mutex("same-name"), Mutex("same-name")
    other = Mutex("other-name")
    with first, other:
        pass
    with other, pytest.raises(LockOrderError):
        second.acquire()  # a different lock, but the same class as first
    assert not second.locked()


# ---------------------------------------------------------------------------
# Adversarial: held lists changed by two threads at once


def test_held_lists_stay_exact_with_releases_from_other_threads(checker: None,
                                                                 tmp_path: Path) -> None:
    """4 threads each take a FileLock on a fresh file of their own every round, then a
    Mutex and an RWLock read or write hold nested inside it, and hand the FileLock
    to one of 2 releaser threads, which releases it (popping it from the acquirer's held
    list) while the acquirer goes on taking, checking and releasing: its list is changed
    by two threads at once. After every step the acquirer's held list is exactly what it
    holds, in order (FileLocks not yet let go of in front); at the end every list is
    empty, every FileLock was released once, and no order was reported."""
    m, rw = Mutex("exact-m"), RWLock("exact-rw")
    handed: list[FileLock | None] = []
    cond = threading.Condition()
    stop = threading.Event()

    def hand(lock: FileLock | None) -> None:
        with cond:
            handed.append(lock)
            cond.notify()

    def releaser() -> int:
        count = 0
        while True:
            with cond:
                assert cond.wait_for(lambda: handed, BOUND)
                lock = handed.pop(0)
            if lock is None:
                return count
            lock.release()
            count += 1

    def mine(expected: list[Any], current: FileLock | None = None) -> None:
        """This thread's held list is: FileLocks it took (each once, current last if not
        yet handed over) that no releaser has let go of yet, then expected."""
        held = [h[0] for h in lockorder.held()]
        files = 0
        while files < len(held) and isinstance(held[files], FileLock):
            files += 1
        assert len(set(map(id, held[:files]))) == files, held
        if current is not None:
            assert held[files - 1:files] == [current], held
        assert held[files:] == expected, (held, expected)

    def acquirer(index: int) -> int:
        rng = random.Random(SEED + index)
        rounds = 0
        mine_handed: list[FileLock] = []
        while not stop.is_set():
            path = tmp_path / f"exact-{index}-{rounds}.lock"
            fl = FileLock(path, lockfile=path)
            fl.acquire(blocking=False)
            mine_handed.append(fl)
            mine([], fl)
            write = rng.random() < 0.3
            with m:
                mine([m], fl)
                assert (rw.acquire_write if write else rw.acquire_read)(timeout=BOUND)
                hand(fl)  # from here a releaser pops fl from this thread's list
                mine([m, rw])
                if rng.random() < 0.5:
                    time.sleep(0)
                if write and rng.random() < 0.5:
                    rw.downgrade()
                    write = False
                mine([m, rw])
                (rw.release_write if write else rw.release_read)()
                mine([m])
            mine([])
            rounds += 1
        poll_until(lambda: not any(f.locked for f in mine_handed), "the releasers let go")
        assert lockorder.held() == []
        return rounds

    releasers = [Worker(releaser) for _ in range(2)]
    acquirers = [Worker(acquirer, i) for i in range(4)]
    time.sleep(STRESS_SECONDS)  # the test's duration, not a handshake
    stop.set()
    rounds = [w.outcome(timeout=4 * BOUND) for w in acquirers]
    for _ in releasers:
        hand(None)
    assert sum(w.outcome() for w in releasers) == sum(rounds)
    assert all(rounds), rounds
    assert lockorder.held() == []
    assert Worker(lockorder.held).outcome() == []
    assert not m.locked() and rw.writer is None and rw.readers == []
