"""Mutual exclusion under concurrency: threads and processes, each with lock objects of its own.

Every test here runs an adversarial load and then asks a witness: each critical
section writes a line to a shared log when it begins (after the grant) and when
it ends (before the release), and bumps an exact counter kept in a file, so
that ``witness.check()`` can report every two sections open at once on one
resource (one of them exclusive) and every count lost or duplicated
(``tests/helpers/witness.py``). Each test asserts 0 overlaps and an exact counter.

The shapes are those of issue 14, each of which broke exclusion in a
multi-threaded process when the per-process record acted on a check made before
it released the GIL around ``open()``:

- *thrashing*: 8 threads, each with a new FileLock of a lock file no descriptor
  of this process has open, acquire at one moment (a barrier); a fresh file per
  trial, or one file whose FileLocks are all collected between trials; shared
  and exclusive mixed; ``blocking=False``, timeouts and other threads'
  ``cancel()`` mixed in; and a plain-``fcntl`` process probing the file from
  inside every section, which must always be refused;
- *the README's pattern*, ``with latchwire.FileLock(path): ...`` per use in 8 threads;
- *lockspaces*: owners in threads, ``wait=True`` with timeouts, ``release_owner``
  from another thread, one LockSpace or two of the same directory;
- *the kill storm*: threads here plus worker processes on their own FileLocks
  of one file, cancels and timeouts, workers SIGKILLed at random and respawned.

The lock files live in a directory where another process holds half of the
opens for 0.1-1 ms (``tests/helpers/slowopen.py``, as a slow filesystem would):
a race across the GIL released around ``open()`` is then lost on any load, not
only when the scheduler happens to oblige.

Sizes scale with ``LATCHWIRE_STORM_SCALE`` (default 1: the whole file takes well
under a minute on two loaded CPUs; 20 gives thousands of trials and thousands of
kills). Nothing waits on a bare sleep: threads meet at barriers and events,
processes answer on pipes, every wait and join is bounded, and the watchdog here
scales with the size. A "blocking" acquisition waits up to LONG (30 s), which only
a lost wake-up or a deadlock reaches, so a failure means two holders, a lost or
duplicated count, or a hang; never a slow machine.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import gc
import os
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lwfcntl import Prober
from lwtest import GUARD, REQUIRE_KERNEL
from slowopen import SlowOpens
from storm_worker import LONG, WorkerPool, attempt, churn
from witness import Report, Witness, check

import latchwire
from latchwire import FileLock, LockBusy, LockCancelled, LockSpace, LockTimeout, _core

SCALE = float(os.environ.get("LATCHWIRE_STORM_SCALE", "1"))
THREADS = 8
MEET = LONG + 30.0  # the bound on a barrier: one trial's slowest thread may wait up to LONG
PERTURB = os.environ.get("LATCHWIRE_PERTURB", "") not in ("", "0")


def scaled(n: int) -> int:
    return max(1, round(n * SCALE))


@pytest.fixture(autouse=True)
def storm_watchdog() -> Iterator[None]:
    """conftest's watchdog, with the guard scaled with the run's size: a hang ends the
    run with every thread's stack, instead of stalling it."""
    faulthandler.dump_traceback_later(GUARD * max(1.0, SCALE), exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def locks(tmp_path: Path) -> Iterator[Path]:
    """The directory for the test's lock files, with opens of them slowed: another
    process holds half of them for 0.1-1 ms (``SlowOpens``, fanotify, root only), as a
    slow filesystem would, so that a thread that releases the GIL around open() is
    overtaken there on any load. Without fanotify the test runs unslowed (a failure
    under LATCHWIRE_REQUIRE_KERNEL=1)."""
    directory = tmp_path / "locks"
    directory.mkdir()
    slow = SlowOpens(directory)
    if slow.refused and REQUIRE_KERNEL:
        pytest.fail(f"LATCHWIRE_REQUIRE_KERNEL=1 but opens cannot be slowed: {slow.refused}")
    try:
        yield directory
    finally:
        slow.close()


@pytest.fixture(params=["ofd", "posix"])
def lock_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """FileLocks made in this process during the test use OFD or classic POSIX locks;
    afterwards, what the environment (LATCHWIRE_LOCKS) asks for again."""
    kind: str = request.param
    _core._use_posix_locks(kind == "posix")
    try:
        yield kind
    finally:
        _core._use_posix_locks(os.environ.get("LATCHWIRE_LOCKS") == "posix")


class Crew:
    """count threads, each running target(i), started together. ``join(timeout)``
    waits for them all within timeout and says what went wrong: each thread that
    raised (its traceback) or was still running."""

    def __init__(self, count: int, target: Callable[[int], Any], name: str = "storm") -> None:
        self._target = target
        self._failures: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"{name}-{i}") for i in range(count)]
        for thread in self._threads:
            thread.start()

    def _run(self, i: int) -> None:
        try:
            self._target(i)
        except BaseException:
            self._failures.append(f"{threading.current_thread().name}: {traceback.format_exc()}")

    def join(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self._failures + [f"{thread.name} still running after {timeout:.0f} s"
                                 for thread in self._threads if thread.is_alive()]


def assert_exclusive(what: str, report: Report, failures: list[str] | None = None,
                     probes: list[str] | None = None, extra: str = "") -> None:
    """Print one RACES line of what the witness found, then fail (with the details)
    unless it found no overlap, no counter mismatch, no bad log, no probe granted
    while held and no other failure."""
    failures = failures or []
    probes = probes or []
    print(f"\nRACES {what}: overlaps={len(report.overlaps)} "
          f"counter={len(report.counter_errors)} probes={len(probes)} "
          f"log={len(report.problems)} failures={len(failures)} sections={report.sections} "
          f"kills={report.kills} cut={report.cut} perturb={int(_core.perturbing())} {extra}")
    if not (report.clean and not probes and not failures):
        pytest.fail(f"{what}: {len(report.overlaps)} overlaps, {len(report.counter_errors)} "
                    f"counter mismatches, {len(probes)} probes granted while held, "
                    f"{len(report.problems)} log problems, {len(failures)} other failures\n"
                    f"{report.summary()}\n" + "\n".join(probes[:8] + failures[:8]),
                    pytrace=False)


def test_perturbation_switch_follows_the_environment() -> None:
    """LATCHWIRE_PERTURB=1 (as the CI step sets it) turns schedule perturbation on."""
    assert _core.perturbing() is PERTURB


# ---------------------------------------------------------------------------
# 1. Thrashing: 8 threads, a new FileLock each, one barrier, first use of the file


class Thrash:
    """8 threads that meet for each trial: the main thread picks the trial's lock
    file (in locks); each thread makes its own FileLock of it and waits at a barrier;
    all go at once, each acquiring as ``plan`` says (if granted: a witnessed section,
    probed from another process with ``prober``, or else held up to 0.5 ms); the main
    thread meanwhile may ``cancel()`` locks of the trial; then all drop their
    FileLocks and meet again, and ``between(path)`` runs before the next trial.
    """

    def __init__(self, tmp_path: Path, locks: Path, trials: int, *, fresh: bool = True,
                 plan: Callable[[random.Random], tuple[str, bool]] = lambda rng: ("wait", False),
                 cancels: bool = False, prober: Prober | None = None,
                 between: Callable[[str], None] | None = None) -> None:
        self.tmp_path = tmp_path
        self.locks_dir = locks
        self.trials = trials
        self.fresh = fresh
        self.plan = plan
        self.cancels = cancels
        self.prober = prober
        self.between = between
        self.witness = Witness(tmp_path / "witness")
        self.barrier = threading.Barrier(THREADS + 1, timeout=MEET)
        self.path = ""
        self.locks: list[FileLock | None] = [None] * THREADS
        self._outcomes = [collections.Counter[str]() for _ in range(THREADS)]
        self.probes: list[str] = []
        self.failures: list[str] = []

    def _thread(self, i: int) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # run() reports it
            self._trials(i)

    def _trials(self, i: int) -> None:
        rng = random.Random(i)
        writer = self.witness.writer()
        for trial in range(self.trials):
            self.barrier.wait()  # the trial's file is chosen
            path = self.path
            lock = FileLock(path, lockfile=path)
            self.locks[i] = lock
            how, shared = self.plan(rng)
            self.barrier.wait()  # every thread has its FileLock: go
            try:
                outcome = attempt(lock, how, shared, rng)
                if outcome == "held":
                    try:
                        with writer.section(os.path.basename(path), lock, shared):
                            if self.prober is None:
                                time.sleep(rng.random() * 0.0005)  # the work done inside
                            elif (seen := self.prober.probe(path, "ex" if shared else "sh")
                                  ) != "busy":
                                self.probes.append(f"trial {trial}, thread {i}: the probe "
                                                   f"found the file {seen} while held")
                    finally:
                        lock.release()
                self._outcomes[i][outcome] += 1
            except Exception:
                self.failures.append(f"trial {trial}, thread {i}: {traceback.format_exc()}")
            self.locks[i] = None
            del lock
            self.barrier.wait()  # the trial is over

    @property
    def outcomes(self) -> collections.Counter[str]:
        """How the threads' attempts ended: "held", "busy", "timeout", "cancelled"."""
        return sum(self._outcomes, collections.Counter[str]())

    def run(self) -> Report:
        rng = random.Random(12345)
        threads = [threading.Thread(target=self._thread, args=(i,), daemon=True)
                   for i in range(THREADS)]
        for thread in threads:
            thread.start()
        try:
            for trial in range(self.trials):
                name = f"trial-{trial}.lock" if self.fresh else "thrash.lock"
                self.path = str(self.locks_dir / name)
                self.barrier.wait()
                self.barrier.wait()
                if self.cancels:
                    for _ in range(rng.randint(1, 4)):
                        lock = self.locks[rng.randrange(THREADS)]
                        if lock is not None:
                            lock.cancel()
                        if rng.random() < 0.5:
                            time.sleep(rng.random() * 0.0002)
                self.barrier.wait()
                if self.between is not None:
                    self.between(self.path)
        except threading.BrokenBarrierError:
            self.failures.append("a barrier broke: a thread hung or died")
        finally:
            self.barrier.abort()
            for thread in threads:
                thread.join(MEET)
            self.failures += ["a thread still runs" for t in threads if t.is_alive()]
            self.witness.close()
        return check(self.tmp_path / "witness")


@pytest.fixture
def prober() -> Iterator[Prober]:
    proc = Prober()
    yield proc
    proc.close()


def test_thrash_new_file_each_trial(tmp_path: Path, locks: Path, lock_kind: str,
                                    prober: Prober) -> None:
    """Issue 14's first reproduction: each trial on a lock file not yet open here, 8
    threads with a FileLock each acquire at once. Never two inside; and another
    process probing with plain F_OFD_SETLK from inside every section is always refused."""
    thrash = Thrash(tmp_path, locks, scaled(250), prober=prober)
    report = thrash.run()
    assert_exclusive(f"thrash-new-file[{lock_kind}]", report, thrash.failures, thrash.probes,
                     f"outcomes={dict(thrash.outcomes)}")
    assert thrash.outcomes["held"] == THREADS * thrash.trials


def _descriptors_of(path: str) -> list[int]:
    """This process's descriptors open on the file at path."""
    st = os.stat(path)
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            other = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor, or one closed meanwhile
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            found.append(int(name))
    return found


def test_thrash_record_recreated_after_collection(tmp_path: Path, locks: Path) -> None:
    """One lock file; between trials every FileLock of it is dropped and collected,
    so the process has no descriptor of it left and the next trial makes the record anew."""
    left_open: list[str] = []

    def collect(path: str) -> None:
        gc.collect(0)  # FileLocks are not in cycles: the youngest generation is enough
        if fds := _descriptors_of(path):
            left_open.append(f"descriptors {fds} still open on {path} with no FileLock left")

    thrash = Thrash(tmp_path, locks, scaled(300), fresh=False, between=collect)
    report = thrash.run()
    assert_exclusive("thrash-collected", report, thrash.failures + left_open)
    assert thrash.outcomes["held"] == THREADS * thrash.trials


def test_thrash_shared_and_exclusive(tmp_path: Path, locks: Path, prober: Prober) -> None:
    """Fresh files, each thread shared or exclusive at random: shared holders may meet,
    nothing meets an exclusive one (the probe asks for the mode the thread holds in
    the other: it must be refused an exclusive lock while a shared one is held too)."""
    thrash = Thrash(tmp_path, locks, scaled(250), plan=lambda rng: ("wait", rng.random() < 0.5),
                    prober=prober)
    report = thrash.run()
    assert_exclusive("thrash-shared", report, thrash.failures, thrash.probes)
    assert thrash.outcomes["held"] == THREADS * thrash.trials


def test_thrash_with_nonblocking_timeouts_and_cancel(tmp_path: Path, locks: Path) -> None:
    """Fresh files; each thread waits, waits up to 2 ms, or does not wait, a quarter
    of them shared; the main thread cancel()s random FileLocks of the trial meanwhile."""
    def plan(rng: random.Random) -> tuple[str, bool]:
        return rng.choice(["wait", "wait", "timeout", "nonblocking"]), rng.random() < 0.25

    thrash = Thrash(tmp_path, locks, scaled(400), plan=plan, cancels=True)
    report = thrash.run()
    assert_exclusive("thrash-interrupted", report, thrash.failures,
                     extra=f"outcomes={dict(thrash.outcomes)}")
    assert thrash.outcomes["held"] >= thrash.trials  # someone gets each trial's lock


# ---------------------------------------------------------------------------
# 2. The README's pattern


def test_readme_pattern_filelock_per_use_in_threads(tmp_path: Path, locks: Path) -> None:
    """``with latchwire.FileLock(path): ...``, a new FileLock per use, in 8 threads with
    short random pauses between uses (so at times no FileLock of the path exists and
    the next use opens the file again)."""
    path = locks / "app.conf"
    uses = scaled(1500)
    witness = Witness(tmp_path / "witness")

    def worker(i: int) -> None:
        rng = random.Random(i)
        writer = witness.writer()
        for _ in range(uses):
            with latchwire.FileLock(path) as lock, writer.section("app.conf", lock):
                pass
            del lock  # as after the README's `with latchwire.FileLock(path):`, nothing keeps it
            time.sleep(rng.random() * 0.001)

    failures = Crew(THREADS, worker).join(60 * max(1.0, SCALE))
    witness.close()
    report = check(tmp_path / "witness")
    assert_exclusive("readme-pattern", report, failures)
    assert report.completed == THREADS * uses


# ---------------------------------------------------------------------------
# 3. Lockspaces: owners in threads, one lockspace or two of one directory


class Owner:
    """A lease owner played by one thread. ``guard`` is held over each of its
    critical sections and by whoever calls ``release_owner`` on it, and ``reaped``
    is set then: a reaped owner is gone (as a dead VM is), so its thread enters no
    more sections under that name and carries on as a new owner."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.guard = threading.Lock()
        self.reaped = False


@pytest.mark.parametrize("spaces", [1, 2])
def test_lockspace_owners_in_threads(tmp_path: Path, locks: Path, spaces: int) -> None:
    """8 owner threads on 3 auto-created names of one directory, through one LockSpace
    or two (each thread keeps to one); exclusive or shared, waiting (up to 5 ms, or
    LONG) or not; a reaper thread release_owner()s random owners. A lease never goes
    to two owners at once, except shared to shared."""
    lockspaces = [LockSpace(locks) for _ in range(spaces)]
    names = ["disk-a", "disk-b", "net"]
    ops = scaled(1000)
    witness = Witness(tmp_path / "witness")
    owners = [Owner(f"o{i}.0") for i in range(THREADS)]
    outcomes = [collections.Counter[str]() for _ in range(THREADS + 1)]  # the reaper's last
    done = threading.Event()

    def worker(i: int) -> None:
        space = lockspaces[i % spaces]
        rng = random.Random(i)
        writer = witness.writer()
        seen = outcomes[i]
        for op in range(ops):
            owner = owners[i]
            if owner.reaped:
                owner = owners[i] = Owner(f"o{i}.{op}")
            name = rng.choice(names)
            shared = rng.random() < 0.3
            wait = rng.random() < 0.5
            timeout = None if not wait else rng.random() * 0.005 if rng.random() < 0.9 else LONG
            try:
                space.acquire(name, owner=owner.name, shared=shared, wait=wait, timeout=timeout)
            except LockBusy:
                seen["busy"] += 1
                continue
            except LockTimeout:
                assert timeout != LONG, f"a wait of {LONG} s timed out"
                seen["timeout"] += 1
                continue
            except LockCancelled:
                assert owner.reaped, f"{owner.name}'s wait was cancelled, but it was not reaped"
                seen["cancelled"] += 1
                continue
            with owner.guard:
                if not owner.reaped:
                    with writer.section(name, space, shared, label=owner.name):
                        if rng.random() < 0.3:
                            time.sleep(rng.random() * 0.0005)
            try:
                space.release(name, owner.name)
                seen["held"] += 1
            except RuntimeError:
                assert owner.reaped, f"{owner.name} lost {name} without being reaped"
                seen["reaped while holding"] += 1
            if rng.random() < 0.5:
                time.sleep(rng.random() * 0.0002)

    def reaper(_: int) -> None:
        rng = random.Random(99)
        while not done.wait(rng.random() * 0.003):
            i = rng.randrange(THREADS)
            owner = owners[i]
            with owner.guard:
                owner.reaped = True
                lockspaces[i % spaces].release_owner(owner.name)
            outcomes[THREADS]["reaps"] += 1

    reaping = Crew(1, reaper, "reaper")
    try:
        failures = Crew(THREADS, worker).join(60 * max(1.0, SCALE))
    finally:
        done.set()
        failures_reaping = reaping.join(MEET)
    witness.close()
    report = check(tmp_path / "witness")
    failures += failures_reaping
    left = [lease for space in lockspaces for lease in space.held()]
    if left:
        failures.append(f"leases left held after every owner released or was reaped: {left}")
    assert_exclusive(f"lockspace[{spaces}]", report, failures,
                     extra=f"outcomes={dict(sum(outcomes, collections.Counter[str]()))}")


# ---------------------------------------------------------------------------
# 4. The kill storm: threads here, worker processes there, SIGKILLs


def test_kill_storm_threads_and_processes(tmp_path: Path, locks: Path, lock_kind: str) -> None:
    """8 threads here and 4 worker processes (2 threads each) loop on FileLocks of one
    file (a new object for most uses; waits, 2 ms timeouts, non-blocking tries; a
    quarter shared); a thread here cancel()s random locks of the others; a random
    worker is SIGKILLed every 0-80 ms and a new one forked. The witness log closes a
    killed worker's open section where the kill was sent (see witness.py)."""
    lockfile = str(locks / "storm.lock")
    resource = os.path.basename(lockfile)
    kills = scaled(120)
    rng = random.Random(7)
    witness = Witness(tmp_path / "witness")
    pool = WorkerPool(tmp_path / "witness", lockfile, tmp_path / "workers.err",
                      posix=lock_kind == "posix")
    stop = threading.Event()
    slots: list[list[FileLock | None]] = [[None] for _ in range(THREADS)]
    outcomes = [collections.Counter[str]() for _ in range(THREADS)]
    statuses: list[str] = []
    failures: list[str] = []
    errors: list[str] = []  # the churning threads' here
    bound = MEET * max(1.0, SCALE)
    try:
        assert FileLock(lockfile, lockfile=lockfile).lock_kind == lock_kind
        for seed in range(4):
            pool.spawn(2, seed)

        def thread(i: int) -> None:
            outcomes[i] = churn(witness.writer(), lockfile, resource, random.Random(100 + i),
                                stop, errors, slots[i])

        def canceller(_: int) -> None:
            crng = random.Random(5)
            while not stop.wait(crng.random() * 0.002):
                lock = slots[crng.randrange(THREADS)][0]
                if lock is not None:
                    lock.cancel()

        churning = Crew(THREADS, thread)
        cancelling = Crew(1, canceller, "canceller")
        try:
            for k in range(kills):
                time.sleep(rng.random() * 0.08)  # not a wait for anything: when the next kill lands
                status = pool.kill(rng.choice(pool.running))
                if status != "signal9":
                    failures.append(f"kill {k}: the worker ended with {status}, not by SIGKILL")
                pool.spawn(2, 10 + k)
        finally:
            stop.set()
            failures += churning.join(bound) + cancelling.join(bound)
        statuses = [pool.stop(tag) for tag in list(pool.running)]
    finally:
        stop.set()
        pool.close()
        witness.close()
    failures += errors
    if any(status != "0" for status in statuses) or pool.errors():
        failures.append(f"workers stopped with {statuses}; their errors:\n{pool.errors()}")
    report = check(tmp_path / "witness")
    assert_exclusive(f"kill-storm[{lock_kind}]", report, failures,
                     extra=f"outcomes={dict(sum(outcomes, collections.Counter[str]()))}")
    assert report.kills >= kills


def test_a_record_dying_in_one_thread_never_drops_a_lock_taken_in_another(
        lock_kind: str, tmp_path: Path) -> None:
    """Two threads make and drop FileLocks of one file as fast as they can, so the
    file's record dies again and again, in whichever thread dropped it last, while a
    third takes the file through a FileLock of its own each time and asks another
    process (plain fcntl) whether it is held. Under POSIX locks, a dying record's
    close() drops every lock the process has on the inode: a record made while
    another was still closing its descriptor would lose its lock at once."""
    path = str(tmp_path / "lock")
    stop = threading.Event()
    lost: list[int] = []
    holds = [0]

    def churn_records(_: int) -> None:
        while not stop.is_set():
            FileLock(path)

    def hold() -> None:
        prober = Prober()
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                lock = FileLock(path)
                lock.acquire(timeout=GUARD)
                try:
                    if prober.probe(lock.lockfile) != "busy":
                        lost.append(holds[0])
                    holds[0] += 1
                finally:
                    lock.release()
                del lock
        finally:
            prober.close()

    churners = Crew(2, churn_records, name="churn")
    try:
        hold()
    finally:
        stop.set()
        failures = churners.join(GUARD)
    assert not failures, "\n".join(failures)
    assert holds[0] > 50, f"only {holds[0]} holds in 1.5 s"
    assert not lost, (f"{lock_kind}: {len(lost)} of {holds[0]} holds were not held in the "
                      f"kernel (another process got the file): holds {lost[:10]}")
