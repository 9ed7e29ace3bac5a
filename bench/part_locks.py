"""The ``rwlock`` part (``mutex`` is another name for it): the in-process locks,
latchwire.Mutex and latchwire.RWLock, against threading.Lock and the readers-writer
locks of readerwriterlock and fasteners.

It times them uncontended against threading.Lock (their floor) and
threading.RLock, in ns/op with the cost of the empty Python loop around them
stated, both with explicit calls and with the with-statement; the lock-order
checker never enabled, off and on; and RW_THREADS threads contending for one
lock in this process (90% reads, 10% writes), where the ratio to
threading.Lock is of throughput and every critical section checks reader/writer
exclusion. The issue's targets are printed beside the figures they concern;
nothing fails on them, only on the guards.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from measure import (
    BARRIER_TIMEOUT,
    Op,
    Row,
    Section,
    Settings,
    Timed,
    add_guard,
    compare_sentence,
    fmt,
    interleave,
    optional_import,
    pair_loop,
    per_op_samples,
    percentile,
    verdict,
    with_loop,
)

import latchwire
from latchwire import lockorder

# The regression guards' limits (see measure.Guard).
MUTEX_GUARD = 3.0  # Mutex acquire+release, at most this times threading.Lock's
RW_READ_GUARD = 3.0  # RWLock read acquire+release, at most this times threading.Lock's
CHECKER_GUARD = 2000.0  # ns the checker on may add per acquisition

LOCK_FLOOR = "floor: threading.Lock"
MUTEX = "latchwire Mutex"
RW_READ = "latchwire RWLock read"
RW_WRITE = "latchwire RWLock write"
RWL_VARIANTS = ("RWLockRead", "RWLockWrite", "RWLockFair")
RWL_READS = tuple(f"readerwriterlock {v} read" for v in RWL_VARIANTS)
# The targets: printed beside what was measured, never failed on.
MUTEX_TARGET = 0.8  # Mutex acquire+release, at most this times threading.Lock's
RW_READ_TARGET = 1.0  # RWLock read, at most this times threading.Lock's
RW_READ_PEER_TARGET = 15.0  # RWLock read, at least this many times faster than readerwriterlock
CHECKER_TARGET = 1000.0  # ns the checker on may add per acquisition of an order already seen
WRITER_P99_TARGET = 500.0  # µs, contended writer wait p99


def empty_loop(n: int) -> float:
    """What the loop around every other contender costs alone: n empty iterations; seconds."""
    start = time.perf_counter()
    for _ in range(n):
        pass
    return time.perf_counter() - start


def with_call_loop(enter: Callable[[], AbstractContextManager[object]]) -> Callable[[int], float]:
    """run(n): n ``with enter(): pass``, as ``with rw.read():`` is written; seconds."""
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            with enter():
                pass
        return time.perf_counter() - start
    return run


@dataclass(frozen=True)
class InProcess:
    """An uncontended in-process lock, both ways: explicit calls and the with-statement."""

    name: str
    role: str
    call: Callable[[int], float]
    with_: Callable[[int], float]


def in_process_contenders(notes: list[str]) -> Iterator[InProcess]:
    """Every in-process lock, each made once; for readers-writer locks, read and write."""
    lock = threading.Lock()
    yield InProcess(LOCK_FLOOR, "floor", pair_loop(lock.acquire, lock.release), with_loop(lock))
    rlock = threading.RLock()
    yield InProcess("threading.RLock", "peer", pair_loop(rlock.acquire, rlock.release),
                    with_loop(rlock))
    mutex = latchwire.Mutex("bench.mutex")
    yield InProcess(MUTEX, "latchwire", pair_loop(mutex.acquire, mutex.release),
                    with_loop(mutex))
    rw = latchwire.RWLock("bench.rwlock")
    yield InProcess(RW_READ, "latchwire", pair_loop(rw.acquire_read, rw.release_read),
                    with_call_loop(rw.read))
    yield InProcess(RW_WRITE, "latchwire", pair_loop(rw.acquire_write, rw.release_write),
                    with_call_loop(rw.write))
    if rwlock := optional_import("readerwriterlock.rwlock", notes):
        for variant in RWL_VARIANTS:
            rwl = getattr(rwlock, variant)()
            reader, writer = rwl.gen_rlock(), rwl.gen_wlock()
            yield InProcess(f"readerwriterlock {variant} read", "peer",
                            pair_loop(reader.acquire, reader.release), with_loop(reader))
            yield InProcess(f"readerwriterlock {variant} write", "peer",
                            pair_loop(writer.acquire, writer.release), with_loop(writer))
    if fasteners := optional_import("fasteners", notes):
        frw = fasteners.ReaderWriterLock()
        yield InProcess("fasteners ReaderWriterLock read", "peer",
                        pair_loop(frw.acquire_read_lock, frw.release_read_lock),
                        with_call_loop(frw.read_lock))
        yield InProcess("fasteners ReaderWriterLock write", "peer",
                        pair_loop(frw.acquire_write_lock, frw.release_write_lock),
                        with_call_loop(frw.write_lock))


def in_process_conclusions(section: Section, loop: float) -> None:
    """The issue's targets for Mutex and RWLock read, and how RWLock read compares."""
    floor = section.row(LOCK_FLOOR)

    def against_floor(name: str, limit: float) -> str:
        row = section.row(name)
        ratio = section.ratios(row)[LOCK_FLOOR]
        net = (row.median - loop) / (floor.median - loop)
        return (f"{name}: {ratio:.2f}x threading.Lock ({net:.2f}x net of the loop); "
                f"target ≤ {limit:.2f}x: {verdict(ratio, limit, at_most=True)}")

    section.conclusions += [against_floor(MUTEX, MUTEX_TARGET),
                            against_floor(RW_READ, RW_READ_TARGET)]
    write = section.row(RW_WRITE)
    section.conclusions.append(f"{RW_WRITE}: {section.ratios(write)[LOCK_FLOOR]:.2f}x "
                               f"threading.Lock (no target)")
    read = section.row(RW_READ)
    names = {r.name for r in section.rows}
    for name in RWL_READS:
        if name in names:
            speedup = section.row(name).median / read.median
            section.conclusions.append(
                f"{RW_READ} is {speedup:.1f}x faster than {name}; target ≥ "
                f"{RW_READ_PEER_TARGET:g}x: {verdict(speedup, RW_READ_PEER_TARGET, at_most=False)}")
    section.conclusions += [compare_sentence(read, r) for r in section.rows
                            if r.name.startswith("fasteners") and r.name.endswith("read")]


def in_process_uncontended(s: Settings, notes: list[str]) -> list[Section]:
    """Two sections, explicit calls and with-statement, measured in the same rounds."""
    contenders = list(in_process_contenders(notes))
    timed = [*(Timed(c.name, c.role, c.call) for c in contenders),
             *(Timed(c.name, c.role, c.with_) for c in contenders),
             Timed("empty loop", "reference", empty_loop)]
    samples = per_op_samples(timed, s, 1e9)
    loop = statistics.median(samples[-1])
    count = len(contenders)
    sections = []
    for title, chunk, how in [
        ("explicit calls", samples[:count],
         "Explicit calls: acquire()/release(); latchwire RWLock acquire_read()/release_read() "
         "and acquire_write()/release_write(); readerwriterlock acquire()/release() of the "
         "gen_rlock()/gen_wlock() objects; fasteners acquire_read_lock()/release_read_lock() "
         "and acquire_write_lock()/release_write_lock()."),
        ("with-statement", samples[count:2 * count],
         "With-statement: `with lock:` for threading, Mutex and the readerwriterlock "
         "gen_rlock()/gen_wlock() objects; `with rw.read():`/`with rw.write():` for latchwire "
         "RWLock and `with rw.read_lock():`/`with rw.write_lock():` for fasteners, called "
         "on every entry as they are written (fasteners' are generator context managers, "
         "made on each call)."),
    ]:
        rows = [Row(c.name, c.role, per_op) for c, per_op in zip(contenders, chunk, strict=True)]
        for row in rows:
            row.details["net ns"] = row.median - loop
        section = Section("rwlock", f"uncontended acquire+release, {title}", "ns/op", rows,
                          [LOCK_FLOOR], columns=["net ns"], notes=list(notes))
        in_process_conclusions(section, loop)
        if title == "explicit calls":
            for name, limit in ((MUTEX, MUTEX_GUARD), (RW_READ, RW_READ_GUARD)):
                add_guard(section, f"{name} / threading.Lock",
                          section.ratios(section.row(name))[LOCK_FLOOR], limit)
        section.notes += [
            how,
            "Each lock is made once and used by this one thread. Targets are the issue's, "
            "printed beside the figure, never failed on.",
            f"Every contender runs in a Python loop; the empty loop costs {loop:.1f} ns per "
            f"iteration, measured in the same rounds. 'net ns' is the median less that, and "
            f"'net of the loop' ratios divide net by net.",
            f"Batches of about {s.batch * 1e3:.0f} ms, {s.rounds} rounds; explicit calls and "
            f"with-statement interleaved together.",
        ]
        sections.append(section)
    return sections


def nested_loop(outer: latchwire.Mutex, inner: latchwire.Mutex) -> Callable[[int], float]:
    """run(n): n cycles of outer then inner taken and released, innermost first.

    A cycle is two acquire+release pairs, so half its time is what n pairs take.
    """
    def run(n: int) -> float:
        take_outer, drop_outer = outer.acquire, outer.release
        take_inner, drop_inner = inner.acquire, inner.release
        start = time.perf_counter()
        for _ in range(n):
            take_outer()
            take_inner()
            drop_inner()
            drop_outer()
        return (time.perf_counter() - start) / 2
    return run


def checker_set(on: bool, run: Callable[[int], float]) -> Callable[[int], float]:
    """run, with the lock-order checker turned on or off before each batch."""
    def switched(n: int) -> float:
        if on:
            lockorder.enable()
        else:
            lockorder.disable()
        return run(n)
    return switched


CHECKER_NEVER = "Mutex, checker never enabled"
CHECKER_OFF = "Mutex, checker off (enabled, then disabled)"
NESTED_NEVER = "2 nested Mutexes, checker never enabled"
NESTED_OFF = "2 nested Mutexes, checker off (enabled, then disabled)"
NESTED_ON = "2 nested Mutexes, checker on"
FLOOR_BEFORE = "floor: threading.Lock, before"
FLOOR_AFTER = "floor: threading.Lock, after"
PER_FLOOR = "/ threading.Lock"


def checker_section(s: Settings, notes: list[str]) -> Section:
    """Mutex with the lock-order checker never enabled, then on and off, interleaved."""
    lock = threading.Lock()
    floor = pair_loop(lock.acquire, lock.release)
    mutex = latchwire.Mutex("bench.checker")
    outer, inner = latchwire.Mutex("bench.outer"), latchwire.Mutex("bench.inner")
    # Before the checker is ever turned on in this process: the plain figures.
    before = [Timed(FLOOR_BEFORE, "floor", floor),
              Timed(CHECKER_NEVER, "latchwire", pair_loop(mutex.acquire, mutex.release)),
              Timed(NESTED_NEVER, "latchwire", nested_loop(outer, inner))]
    before_samples = per_op_samples(before, s, 1e9)
    # Then the checker turned on or off before each batch, the rounds interleaved.
    after = [Timed(FLOOR_AFTER, "floor", floor),
             Timed(CHECKER_OFF, "latchwire",
                   checker_set(False, pair_loop(mutex.acquire, mutex.release))),
             Timed(NESTED_OFF, "latchwire", checker_set(False, nested_loop(outer, inner))),
             Timed(NESTED_ON, "latchwire", checker_set(True, nested_loop(outer, inner)))]
    try:
        after_samples = per_op_samples(after, s, 1e9)
        seen = len(lockorder.orders())
    finally:
        lockorder.disable()
        lockorder.reset()
    rows = []
    for group, samples in ((before, before_samples), (after, after_samples)):
        phase = [Row(c.name, c.role, per_op) for c, per_op in zip(group, samples, strict=True)]
        for row in phase:
            row.details[PER_FLOOR] = f"{row.median / phase[0].median:.2f}"
        rows += phase
    section = Section("rwlock", "lock-order checker, Mutex acquire+release", "ns/op", rows,
                      [], columns=[PER_FLOOR], notes=list(notes))
    on, off = section.row(NESTED_ON).median, section.row(NESTED_OFF).median
    extra = on - off
    add_guard(section, "checker on, extra per acquisition (on - off)", extra, CHECKER_GUARD,
              unit="ns")
    section.conclusions.append(
        f"checker on adds {extra:.0f} ns per acquire+release (2 nested Mutexes, order already "
        f"seen): {on / off:.2f}x off; target ≤ +{CHECKER_TARGET:.0f} ns: "
        f"{verdict(extra, CHECKER_TARGET, at_most=True)}")

    def relative(name: str, floor_name: str) -> float:
        return section.row(name).median / section.row(floor_name).median

    for off_name, never_name, what in ((CHECKER_OFF, CHECKER_NEVER, "one Mutex"),
                                       (NESTED_OFF, NESTED_NEVER, "2 nested Mutexes")):
        now, plain = relative(off_name, FLOOR_AFTER), relative(never_name, FLOOR_BEFORE)
        section.conclusions.append(
            f"checker off, {what}: {now:.2f}x threading.Lock vs {plain:.2f}x never enabled "
            f"({now / plain - 1:+.1%}); {section.row(off_name).median:.1f} vs "
            f"{section.row(never_name).median:.1f} ns")
    section.notes += [
        "Nested: take 'bench.outer', then 'bench.inner', release inner then outer; always that "
        f"order, so after the first cycle (calibration) the order is already seen "
        f"({seen} order recorded). ns/op is per acquire+release pair, half a cycle.",
        "The 'never enabled' rows run first, before lockorder.enable() is ever called in this "
        "process; the other rows run after, interleaved, the checker switched on or off before "
        f"each batch. '{PER_FLOOR}' divides by the threading.Lock floor of the same phase, "
        "which makes the two phases comparable.",
        "The checker is disabled and lockorder.reset() called after this section.",
        f"Batches of about {s.batch * 1e3:.0f} ms, {s.rounds} rounds per phase.",
    ]
    return section


# Contended: threads reading and writing one lock.

RW_THREADS = 4
MIX_LENGTH = 1000  # operations in each thread's repeated mix
WRITE_SHARE = 0.1
IDLE, READING, WRITING = 0, 1, 2
RWOps = tuple[Op, Op, Op, Op]  # acquire_read, release_read, acquire_write, release_write


@dataclass(frozen=True)
class SharedLock:
    """A contended contender: make() makes a round's lock and returns what gives each
    thread its RWOps (readerwriterlock's reader and writer objects are per thread)."""

    name: str
    role: str
    make: Callable[[], Callable[[], RWOps]]


def threading_lock_ops() -> Callable[[], RWOps]:
    lock = threading.Lock()
    return lambda: (lock.acquire, lock.release, lock.acquire, lock.release)


def latchwire_rw_ops() -> Callable[[], RWOps]:
    rw = latchwire.RWLock("bench.contended")
    return lambda: (rw.acquire_read, rw.release_read, rw.acquire_write, rw.release_write)


def readerwriterlock_ops(cls: Callable[[], object]) -> Callable[[], Callable[[], RWOps]]:
    def make() -> Callable[[], RWOps]:
        rwl: Any = cls()

        def per_thread() -> RWOps:
            reader, writer = rwl.gen_rlock(), rwl.gen_wlock()
            return reader.acquire, reader.release, writer.acquire, writer.release
        return per_thread
    return make


def fasteners_ops(cls: Callable[[], object]) -> Callable[[], Callable[[], RWOps]]:
    def make() -> Callable[[], RWOps]:
        rw: Any = cls()
        return lambda: (rw.acquire_read_lock, rw.release_read_lock, rw.acquire_write_lock,
                        rw.release_write_lock)
    return make


LW_RWLOCK = "latchwire RWLock"
THREADING_BOTH = "floor: threading.Lock for both"


def shared_locks(notes: list[str]) -> Iterator[SharedLock]:
    yield SharedLock(THREADING_BOTH, "floor", threading_lock_ops)
    yield SharedLock(LW_RWLOCK, "latchwire", latchwire_rw_ops)
    if rwlock := optional_import("readerwriterlock.rwlock", notes):
        for variant in RWL_VARIANTS:
            yield SharedLock(f"readerwriterlock {variant}", "peer",
                             readerwriterlock_ops(getattr(rwlock, variant)))
    if fasteners := optional_import("fasteners", notes):
        yield SharedLock("fasteners ReaderWriterLock", "peer",
                         fasteners_ops(fasteners.ReaderWriterLock))


def rw_mix(seed: int) -> list[bool]:
    """MIX_LENGTH operations, WRITE_SHARE of them writes (True), in an order set by seed."""
    mix = [i < MIX_LENGTH * WRITE_SHARE for i in range(MIX_LENGTH)]
    random.Random(seed).shuffle(mix)
    return mix


@dataclass
class ThreadReport:
    """What one contending thread saw."""

    elapsed: float = 0.0
    ops: int = 0
    writer_waits: list[float] = field(default_factory=list)  # seconds
    broken: int = 0  # critical sections that saw a writer beside another holder
    error: BaseException | None = None


def rw_worker(ops: RWOps, slot: int, inside: list[int], critical: Op,
              barrier: threading.Barrier, duration: float, report: ThreadReport) -> None:
    """Thread: its mix of reads and writes, repeated, for duration; fills report.

    Each holder marks its slot of inside while it holds the lock, around the
    critical section: a writer must find every other slot idle, a reader no
    slot writing.
    """
    acquire_read, release_read, acquire_write, release_write = ops
    mix = rw_mix(slot)
    waits = report.writer_waits
    others_idle = len(inside) - 1
    clock = time.perf_counter
    ops_done = broken = i = 0
    try:
        barrier.wait(BARRIER_TIMEOUT)
        start = clock()
        end = start + duration
        while (asked := clock()) < end:
            if mix[i]:
                acquire_write()
                waits.append(clock() - asked)
                inside[slot] = WRITING
                critical()
                if inside.count(IDLE) != others_idle:
                    broken += 1
                inside[slot] = IDLE
                release_write()
            else:
                acquire_read()
                inside[slot] = READING
                critical()
                if WRITING in inside:
                    broken += 1
                inside[slot] = IDLE
                release_read()
            ops_done += 1
            i = i + 1 if i + 1 < MIX_LENGTH else 0
        report.elapsed = clock() - start
    except BaseException as e:
        report.error = e
        barrier.abort()
    report.ops, report.broken = ops_done, broken


@dataclass(frozen=True)
class RWRound:
    ops_per_s: float
    writer_waits: list[float]  # seconds, every thread's
    broken: int


def rw_round(contender: SharedLock, critical: Op, duration: float) -> RWRound:
    """RW_THREADS threads on one new lock of contender's, started together."""
    per_thread = contender.make()
    barrier = threading.Barrier(RW_THREADS)
    inside = [IDLE] * RW_THREADS
    reports = [ThreadReport() for _ in range(RW_THREADS)]
    threads = [threading.Thread(target=rw_worker, name=f"bench-rw-{slot}", daemon=True,
                                args=(per_thread(), slot, inside, critical, barrier, duration,
                                      reports[slot]))
               for slot in range(RW_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + BARRIER_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"{contender.name}: {thread.name} still running "
                               f"{BARRIER_TIMEOUT:g} s after the round ended (deadlock?)")
    for report in reports:
        if report.error is not None:
            raise RuntimeError(f"{contender.name}: a contending thread failed") from report.error
    return RWRound(sum(r.ops for r in reports) / max(r.elapsed for r in reports),
                   [w for r in reports for w in r.writer_waits],
                   sum(r.broken for r in reports))


def rw_row(contender: SharedLock, rounds: list[RWRound]) -> Row:
    waits = [w * 1e6 for r in rounds for w in r.writer_waits]
    broken = sum(r.broken for r in rounds)
    details: dict[str, float | str] = {"exclusion": "ok" if broken == 0 else f"BROKEN {broken}"}
    if waits:
        details |= {"writer p50 µs": percentile(waits, 50), "writer p99 µs": percentile(waits, 99),
                    "writer worst µs": max(waits)}
    else:
        details |= dict.fromkeys(("writer p50 µs", "writer p99 µs", "writer worst µs"), "-")
    return Row(contender.name, contender.role, [r.ops_per_s for r in rounds], details)


def rw_contended(s: Settings, notes: list[str]) -> Section:
    contenders = list(shared_locks(notes))
    fd = os.open("/dev/zero", os.O_RDONLY | os.O_CLOEXEC)
    try:
        critical = partial(os.read, fd, 1)
        rounds = interleave(contenders, s.contended_rounds,
                            lambda c: rw_round(c, critical, s.duration))
    finally:
        os.close(fd)
    rows = [rw_row(c, r) for c, r in zip(contenders, rounds, strict=True)]
    section = Section(
        "rwlock",
        f"contended: {RW_THREADS} threads, {1 - WRITE_SHARE:.0%} reads / {WRITE_SHARE:.0%} writes",
        "ops/s", rows, [THREADING_BOTH],
        columns=["writer p50 µs", "writer p99 µs", "writer worst µs", "exclusion"],
        notes=list(notes))
    lw = section.row(LW_RWLOCK)
    peers = [r for r in rows if r.role == "peer"]
    throughput = (f"{LW_RWLOCK}: {lw.median:,.0f} ops/s, "
                  f"{section.ratios(lw)[THREADING_BOTH]:.2f}x threading.Lock's")
    if peers:
        best = max(peers, key=lambda r: r.median)
        throughput += (f"; best peer {best.name} {best.median:,.0f} ops/s, latchwire "
                       f"{lw.median / best.median:.2f}x it; target ≥ best peer's: "
                       f"{verdict(lw.median, best.median, at_most=False)}")
    section.conclusions.append(throughput)
    p99 = lw.details["writer p99 µs"]
    if isinstance(p99, float):
        section.conclusions.append(
            f"{LW_RWLOCK} writer wait p50 {fmt(lw.details['writer p50 µs'])} µs, p99 "
            f"{fmt(p99)} µs; target p99 ≤ {WRITER_P99_TARGET:.0f} µs: "
            f"{verdict(p99, WRITER_P99_TARGET, at_most=True)}")
    section.failed = any(r.details["exclusion"] != "ok" for r in rows)
    if section.failed:
        section.notes.append("FAILED: a writer held the lock beside another holder.")
    section.notes += [
        f"Each thread repeats its own shuffled mix of {MIX_LENGTH} operations, "
        f"{WRITE_SHARE:.0%} writes: acquire, mark itself inside, read 1 byte from /dev/zero "
        "(the critical section), check that no writer shares the lock, unmark, release; "
        "nothing between operations. ops/s counts reads and writes of all threads over the "
        "longest thread's time; the ratio to threading.Lock is of throughput (higher is "
        "better).",
        "The critical section is one os.read() of /dev/zero: a real system call with the GIL "
        "released around it (so readers can overlap and other threads run), a few hundred ns, "
        "the same every time. A pipe would drain and need refilling; time.sleep(0) is a "
        "clock_nanosleep() that the kernel's timer slack stretches to some 50 µs or more.",
        "Writer wait: from calling the write acquire to holding the lock, every write of every "
        "thread and round. It includes taking the GIL back after the lock is granted, which "
        f"can take up to the switch interval ({sys.getswitchinterval() * 1e3:g} ms) when "
        "another thread runs Python.",
        f"threading.Lock for both serves reads as writes (no sharing). Peers: readerwriterlock "
        f"(one gen_rlock()/gen_wlock() pair per thread) and fasteners (acquire_read_lock() "
        f"...). {s.duration:g} s per round, {s.contended_rounds} rounds, interleaved, "
        f"threads started at a barrier; {len(os.sched_getaffinity(0))} usable CPUs.",
    ]
    return section


def rwlock_part(s: Settings) -> list[Section]:
    notes: list[str] = []
    if lockorder.enabled():
        lockorder.disable()
        notes.append("The lock-order checker was on at the start (LATCHWIRE_LOCKDEP=1?); it "
                     "was turned off for these measurements, so 'never enabled' means off.")
    return [*in_process_uncontended(s, notes), checker_section(s, notes),
            rw_contended(s, notes)]
