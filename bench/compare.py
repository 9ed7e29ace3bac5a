"""latchwire against the other libraries and against the kernel's own cost, side by side.

Usage: ``python bench/compare.py [PART ...] [--quick] [--json FILE] [--markdown FILE]
[--plot PNG]`` (every part when none is named; ``--quick`` for a short run, as CI
runs it; ``--plot`` draws one log-scale bar chart per comparison with matplotlib).

Method
------
Interleaving. Every contender of a comparison runs in this one process (or, for
the contended runs, in worker processes forked from it) round-robin: each
round runs each contender for one batch, and the order rotates by one each
round. A slow drift of the machine (frequency scaling, a neighbour on a shared
host) then lands on every contender alike instead of on whichever ran during it.

Batches and medians. An uncontended contender is first calibrated (which also
warms it up) to a batch of about ``batch`` seconds; each round then gives one
figure per contender, the mean time per operation over its batch. A contended
round gives one throughput figure. Reported are the median over the rounds,
the figure to quote, and the minimum.

Floors. Every comparison measures in the same run what the kernel work alone
costs: the same fcntl calls on an open descriptor issued from Python's fcntl
module, and (for the uncontended case) from a C loop, ``floor_ofd.c``, built
with ``cc -O2`` at run time. A ratio to a floor, or between two contenders
measured in the same run, means the same on any machine; absolute times do not,
and nothing here passes or fails on one. A contended run whose shared counter
disagrees with the handoffs counted (mutual exclusion broken) makes the exit
status 1.

Regression guards. A few ratios of latchwire to a floor or peer of the same
run (and the lock-order checker's extra ns per acquisition) must stay within
limits set well away from what a healthy build measures (``*_GUARD``), so
that only an order-of-magnitude regression fails, never machine noise. Each
guard's value, limit and verdict is printed at the end and written to the JSON
and Markdown; any guard missed makes the exit status 1 too.

In-process locks. The ``rwlock`` part (``mutex`` is another name for it)
times latchwire's Mutex and RWLock uncontended against threading.Lock (its
floor) and the readers-writer locks of readerwriterlock and fasteners, in
ns/op with the cost of the empty Python loop around them stated; the
lock-order checker on and off; and threads contending for one lock in this
process, where the ratio to threading.Lock is of throughput. The issue's
targets are printed beside the figures they concern; nothing fails on them.

Lockspaces and object lists: scaling. The ``lockspace`` part cycles
acquire+release over 100 and then 100,000 names in one LockSpace that holds as
many other resources meanwhile, one open descriptor each (RLIMIT_NOFILE's soft
limit is raised to its hard limit for it; if the hard limit is too low, fewer
are held and the output says so), and times the "busy" its table answers
another owner against the kernel's answer (open, a refused F_OFD_SETLK,
close). The ``objects`` part times ObjectList lookups, and add+remove, among
100 and 100,000 objects against dict + threading.Lock floors. Both print how
each figure changed from the smaller size to the larger (1.00x is constant
time), and guard the growth of latchwire's ratio to its floor.

Netlink dumps. The ``dump`` part (root and iproute2's ``ip`` needed) makes
its own network namespace, loads 1,000, 10,000 and 100,000 IPv4 routes into
it, and times one whole route dump through latchwire.netlink.Socket.dump()
against plain Python sockets (recv_into a preallocated buffer, with and
without walking the message headers) and pyroute2, in ms per dump. A dump
longer than a batch is a batch of its own, and a contender gets only as many
rounds as fit its time budget (pyroute2 at 100,000 routes: a few).

Decoded dumps. The ``routes`` and ``links`` parts (root and ``ip`` needed, each
in a namespace of its own) time latchwire.rtnl's Route.routes() over 10,000
and 100,000 IPv4 routes and Route.links() over 2,000 veth links against the
recv_into floor of the very request latchwire sends, ``ip -j ... | json.loads``
(a subprocess per dump) and pyroute2, in ms per dump and µs per record, and
trace one untimed call's peak memory against the records' own size. With
``--quick`` pyroute2 dumps only the 10,000 routes. Dump batches start after an
untimed full garbage collection, so that no contender pays for the cycles the
one before left.

Parts. Each part is a function in ``PARTS`` that takes the run's ``Settings``
and returns its ``Section``s. A part registered under two names runs once.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import gc
import importlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence, Sized
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, TypeVar

import latchwire
from latchwire import _core, lockorder, netlink, rtnl

HERE = Path(__file__).resolve().parent

F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
# struct flock for the whole file: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks).
WRLCK = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
UNLCK = struct.pack("hhqqi", fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)

PEERS = ("filelock", "fasteners", "portalocker", "oslo.concurrency", "readerwriterlock",
         "pyroute2")
CONTENDING_PROCESSES = 4
OUTSIDE_WORK = 200e-6  # seconds of busy-work between release and the next acquire
BARRIER_TIMEOUT = 30.0

T = TypeVar("T")
R = TypeVar("R")
Op = Callable[[], object]


@dataclass(frozen=True)
class Settings:
    """How long to measure, and where to put lock files."""

    quick: bool
    rounds: int  # rounds of uncontended batches
    batch: float  # seconds per uncontended batch
    contended_rounds: int
    duration: float  # seconds per contended round
    workdir: Path

    @classmethod
    def for_run(cls, quick: bool, workdir: Path) -> Settings:
        if quick:
            return cls(quick, rounds=7, batch=0.02, contended_rounds=3, duration=1.0,
                       workdir=workdir)
        return cls(quick, rounds=21, batch=0.05, contended_rounds=5, duration=2.0,
                   workdir=workdir)


@dataclass
class Row:
    """One contender's figures: one sample per round, plus what else was seen."""

    name: str
    role: str  # "floor", "latchwire" or "peer"
    samples: list[float]
    details: dict[str, float | str] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)


@dataclass
class Section:
    """One comparison: its rows, the floors they are divided by, and what to conclude."""

    part: str
    title: str
    unit: str
    rows: list[Row]
    floors: list[str]  # names of the rows every median is divided by
    columns: list[str] = field(default_factory=list)  # Row.details keys shown in the table
    conclusions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False  # a correctness check failed
    guards: list[Guard] = field(default_factory=list)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def ratios(self, row: Row) -> dict[str, float]:
        """row's median over each floor's median."""
        return {f: row.median / self.row(f).median for f in self.floors}


@dataclass(frozen=True)
class Guard:
    """A regression guard: a ratio (or difference) between figures of the same run, and
    the limit it must keep to. Limits sit 5-10x (at least 1.5x) away from what a healthy
    build measures, so that only an order-of-magnitude regression fails, never noise."""

    section: str  # "part: title" of the section it was measured in
    name: str
    value: float
    limit: float
    at_most: bool  # value must be <= limit (else >= limit)
    unit: str = "x"  # "x" for a ratio, else the unit of a difference

    @property
    def ok(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "FAILED"

    def describe(self) -> tuple[str, str]:
        """(value, limit) as printed."""
        def show(v: float) -> str:
            return f"{v:.2f}x" if self.unit == "x" else f"{v:+.0f} {self.unit}"
        return show(self.value), ("≤ " if self.at_most else "≥ ") + show(self.limit)


def add_guard(section: Section, name: str, value: float, limit: float, *, at_most: bool = True,
              unit: str = "x") -> None:
    section.guards.append(Guard(f"{section.part}: {section.title}", name, value, limit,
                                at_most, unit))


# The regression guards' limits (see Guard).
FILELOCK_GUARD = 5.0  # FileLock acquire+release, at most this times the Python fcntl floor
LOCKSPACE_GUARD = 10.0  # LockSpace autocreate=False, at most this times open+fcntl+close
MUTEX_GUARD = 3.0  # Mutex acquire+release, at most this times threading.Lock's
RW_READ_GUARD = 3.0  # RWLock read acquire+release, at most this times threading.Lock's
CHECKER_GUARD = 2000.0  # ns the checker on may add per acquisition
OBJECTS_GUARD = 10.0  # find_by_uuid + unlock, at most this times dict + threading.Lock
DUMP_GUARD = 20.0  # latchwire route dump, at most this times the recv_into floor
CONTENDED_GUARD = 0.5  # contended FileLock throughput, at least this times raw OFD's
SCALING_GUARD = 5.0  # a ratio to a floor, at most this many times higher at a larger size


def add_scaling(small: Section, large: Section, guarded: str, floor: str,
                per_item: str | None = None) -> None:
    """One comparison measured at two sizes (more names, more objects): large's conclusions
    say how each contender's median changed from small's, 1.00x being constant time (or,
    with per_item, a Row.details key such as "µs/route", how that cost per item changed,
    1.00x being linear time), and guarded's ratio to floor must not grow more than
    SCALING_GUARD-fold (a guard)."""
    def figure(row: Row) -> float:
        return float(row.details[per_item]) if per_item else row.median

    unit, law = (per_item, "linear") if per_item else (large.unit, "constant")
    large.conclusions.append(f"scaling, from '{small.title}' to this ({unit}; 1.00x is "
                             f"{law} time):")
    for row in large.rows:
        before, after = figure(small.row(row.name)), figure(row)
        large.conclusions.append(f"  {row.name}: {fmt(before)} -> {fmt(after)} "
                                 f"({after / before:.2f}x)")
    growth = large.ratios(large.row(guarded))[floor] / small.ratios(small.row(guarded))[floor]
    add_guard(large, f"{guarded}: growth of its ratio to {floor.removeprefix('floor: ')}",
              growth, SCALING_GUARD)


# ---------------------------------------------------------------------------
# Measuring


def interleave(contenders: Sequence[T], rounds: int, measure: Callable[[T], R]) -> list[list[R]]:
    """measure() each contender once per round, rotating the order; results per contender."""
    results: list[list[R]] = [[] for _ in contenders]
    for r in range(rounds):
        for k in range(len(contenders)):
            i = (r + k) % len(contenders)
            results[i].append(measure(contenders[i]))
    return results


def calibrate(run: Callable[[int], float], target: float) -> int:
    """The number of operations run(n) does in about target seconds."""
    n = 1
    while (elapsed := run(n)) < target / 10:
        n *= 10
    return max(1, round(n * target / elapsed))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


# ---------------------------------------------------------------------------
# filelock, uncontended


@dataclass(frozen=True)
class Timed:
    """An uncontended contender: run(n) does n acquire+release pairs, returns seconds."""

    name: str
    role: str
    run: Callable[[int], float]


def per_op_samples(contenders: Sequence[Timed], s: Settings, unit: float) -> list[list[float]]:
    """Each contender's time per operation (times unit) in each of s.rounds interleaved
    rounds, after calibrating it (and so warming it up) to batches of s.batch seconds."""
    sizes = [calibrate(c.run, s.batch) for c in contenders]
    return interleave(range(len(contenders)), s.rounds,
                      lambda i: contenders[i].run(sizes[i]) / sizes[i] * unit)


def per_op_rows(contenders: Sequence[Timed], s: Settings, unit: float,
                rate: str | None = None) -> list[Row]:
    """Each contender's row of per_op_samples(); with rate, a column of that name holding
    operations per second (unit / median)."""
    samples = per_op_samples(contenders, s, unit)
    rows = [Row(c.name, c.role, per_op) for c, per_op in zip(contenders, samples, strict=True)]
    if rate is not None:
        for row in rows:
            row.details[rate] = unit / row.median
    return rows


def pair_loop(acquire: Op, release: Op) -> Callable[[int], float]:
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            acquire()
            release()
        return time.perf_counter() - start
    return run


def with_loop(lock: AbstractContextManager[object]) -> Callable[[int], float]:
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            with lock:
                pass
        return time.perf_counter() - start
    return run


def python_floor_loop(fd: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        call = fcntl.fcntl
        start = time.perf_counter()
        for _ in range(n):
            call(fd, F_OFD_SETLK, WRLCK)
            call(fd, F_OFD_SETLK, UNLCK)
        return time.perf_counter() - start
    return run


def c_floor_loop(exe: Path, lockfile: Path) -> Callable[[int], float]:
    def run(n: int) -> float:
        out = subprocess.run([exe, lockfile, str(n)], capture_output=True, text=True, check=True)
        return float(out.stdout) * n * 1e-9
    return run


def build_c_floor(workdir: Path, notes: list[str]) -> Path | None:
    """Compile floor_ofd.c into workdir; None (with a note saying why) if it cannot be."""
    source = HERE / "floor_ofd.c"
    cc = shutil.which("cc")
    if cc is None:
        notes.append("C floor skipped: no `cc` on PATH.")
        return None
    if not source.exists():
        notes.append(f"C floor skipped: {source} is missing.")
        return None
    exe = workdir / "floor_ofd"
    result = subprocess.run([cc, "-O2", "-Wall", "-o", exe, source],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        notes.append(f"C floor skipped: cc failed: {result.stderr.strip()}")
        return None
    return exe


def optional_import(name: str, notes: list[str]) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        notes.append(f"{name} skipped: not installed (pip install -e '.[bench]').")
        return None


def peer_locks(workdir: Path, notes: list[str]) -> Iterator[tuple[str, Op, Op]]:
    """(name, acquire, release) of each other library's plain blocking exclusive lock.

    Each lock object is made once; acquire() and release() are each library's own.
    """
    if filelock := optional_import("filelock", notes):
        lock = filelock.FileLock(workdir / "filelock.lock")
        yield "filelock.FileLock", lock.acquire, lock.release
        if filelock.UnixFileLock is filelock.FileLock:
            notes.append("filelock.UnixFileLock is filelock.FileLock on this platform: "
                         "measured once.")
        else:
            unix = filelock.UnixFileLock(workdir / "filelock-unix.lock")
            yield "filelock.UnixFileLock", unix.acquire, unix.release
    if fasteners := optional_import("fasteners", notes):
        lock = fasteners.InterProcessLock(workdir / "fasteners.lock")
        yield "fasteners.InterProcessLock", lock.acquire, lock.release
    if portalocker := optional_import("portalocker", notes):
        # Blocking flags: the kernel waits (no polling); timeout is then unused.
        lock = portalocker.Lock(workdir / "portalocker.lock",
                                flags=portalocker.LockFlags.EXCLUSIVE, fail_when_locked=False)
        yield "portalocker.Lock", lock.acquire, lock.release


PY_FLOOR = "floor: Python fcntl"
C_FLOOR = "floor: C fcntl"
LW_PAIR = "latchwire acquire()/release()"
LW_WITH = "latchwire with-statement"


def uncontended_contenders(workdir: Path, stack: ExitStack, notes: list[str]) -> Iterator[Timed]:
    fd = os.open(workdir / "floor-py.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    stack.callback(os.close, fd)
    yield Timed(PY_FLOOR, "floor", python_floor_loop(fd))
    if exe := build_c_floor(workdir, notes):
        yield Timed(C_FLOOR, "floor", c_floor_loop(exe, workdir / "floor-c.lock"))
    lock = latchwire.FileLock(workdir / "latchwire")
    yield Timed(LW_PAIR, "latchwire", pair_loop(lock.acquire, lock.release))
    yield Timed(LW_WITH, "latchwire", with_loop(latchwire.FileLock(workdir / "latchwire-with")))
    for name, acquire, release in peer_locks(workdir, notes):
        yield Timed(name, "peer", pair_loop(acquire, release))


def speed_sentence(latchwire_row: Row, peer: Row) -> str:
    ratio = peer.median / latchwire_row.median
    if ratio >= 1:
        return f"latchwire is {ratio:.1f}x faster than {peer.name}"
    return f"latchwire is {1 / ratio:.1f}x slower than {peer.name}"


def filelock_uncontended(s: Settings) -> Section:
    notes: list[str] = []
    with ExitStack() as stack:
        rows = per_op_rows(list(uncontended_contenders(s.workdir, stack, notes)), s, 1e6)
    floors = [r.name for r in rows if r.role == "floor"]
    section = Section("filelock", "uncontended acquire+release, one process", "µs/op", rows,
                      floors, notes=notes)
    for name in (LW_PAIR, LW_WITH):
        ratios = ", ".join(f"{v:.2f}x the {f.removeprefix('floor: ')} floor"
                           for f, v in section.ratios(section.row(name)).items())
        section.conclusions.append(f"{name}: {ratios}")
    lw = section.row(LW_PAIR)
    add_guard(section, f"{LW_PAIR} / Python fcntl floor", lw.median / section.row(PY_FLOOR).median,
              FILELOCK_GUARD)
    section.conclusions += [speed_sentence(lw, r) for r in rows if r.role == "peer"]
    section.notes += [
        "Floors: F_OFD_SETLK write lock then unlock on a descriptor kept open. latchwire "
        "also keeps its lock file open and, after every grant, asks its inotify watch of the "
        "file and the directories above it whether anything moved (one FIONREAD; the path is "
        "walked only if so), so that no lock is kept on an unlinked, replaced or moved lock "
        "file: three system calls where the floors make two.",
        "filelock, fasteners and portalocker open and close the lock file on every "
        "acquisition; that is part of what they cost.",
        f"Batches of about {s.batch * 1e3:.0f} ms, {s.rounds} rounds, interleaved.",
    ]
    return section


# ---------------------------------------------------------------------------
# filelock, contended


def latchwire_ops(lockfile: str) -> tuple[Op, Op]:
    lock = latchwire.FileLock(lockfile, lockfile=lockfile)
    return lock.acquire, lock.release


def raw_ofd_ops(lockfile: str) -> tuple[Op, Op]:
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return (partial(fcntl.fcntl, fd, F_OFD_SETLKW, WRLCK),
            partial(fcntl.fcntl, fd, F_OFD_SETLK, UNLCK))


RAW_OFD = "floor: Python fcntl SETLKW"
LW_FILELOCK = "latchwire FileLock"
# name: (role, lock file -> (acquire, release)), made in each worker.
CONTENDED: dict[str, tuple[str, Callable[[str], tuple[Op, Op]]]] = {
    RAW_OFD: ("floor", raw_ofd_ops),
    LW_FILELOCK: ("latchwire", latchwire_ops),
}


def spin(seconds: float) -> None:
    """Busy-work: keep the CPU for this long."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def contend(kind: str, lockfile: str, barrier: Barrier, counter: ctypes.c_longlong,
            duration: float, out: Connection) -> None:
    """Worker: lock, bump counter, unlock, spin; for duration. Sends (elapsed, waits)."""
    acquire, release = CONTENDED[kind][1](lockfile)
    waits: list[float] = []
    clock = time.perf_counter
    barrier.wait(BARRIER_TIMEOUT)
    start = clock()
    end = start + duration
    while (asked := clock()) < end:
        acquire()
        got = clock()
        counter.value += 1
        release()
        waits.append(got - asked)
        spin(OUTSIDE_WORK)
    out.send((clock() - start, waits))
    out.close()


@dataclass(frozen=True)
class ContendedRound:
    handoffs_per_s: float
    waits: list[list[float]]  # seconds, per process
    lost: int  # handoffs counted minus counter increments seen: 0 under mutual exclusion


def contended_round(kind: str, lockfile: Path, duration: float) -> ContendedRound:
    """Run CONTENDING_PROCESSES workers of kind on lockfile, started together."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(CONTENDING_PROCESSES)
    counter = ctx.RawValue(ctypes.c_longlong, 0)
    pipes = [ctx.Pipe(duplex=False) for _ in range(CONTENDING_PROCESSES)]
    procs = [ctx.Process(target=contend, args=(kind, str(lockfile), barrier, counter, duration,
                                               send))
             for _, send in pipes]
    for proc in procs:
        proc.start()
    for _, send in pipes:
        send.close()  # so that recv() raises EOFError if a worker dies
    try:
        reports: list[tuple[float, list[float]]] = [recv.recv() for recv, _ in pipes]
    finally:
        for proc in procs:
            proc.join()
    waits = [w for _, w in reports]
    handoffs = sum(len(w) for w in waits)
    return ContendedRound(handoffs / max(e for e, _ in reports), waits,
                          handoffs - counter.value)


def contended_row(kind: str, rounds: list[ContendedRound]) -> Row:
    pooled = [w for r in rounds for proc in r.waits for w in proc]
    per_process_worst = [max(max(r.waits[i], default=0.0) for r in rounds)
                         for i in range(CONTENDING_PROCESSES)]
    lost = sum(r.lost for r in rounds)
    return Row(kind, CONTENDED[kind][0], [r.handoffs_per_s for r in rounds], {
                   "worst wait ms": max(pooled) * 1e3,
                   "p99 wait ms": percentile(pooled, 99) * 1e3,
                   "worst wait per process ms": " / ".join(fmt(w * 1e3)
                                                           for w in per_process_worst),
                   "counter": "exact" if lost == 0 else f"LOST {lost}",
               })


def filelock_contended(s: Settings) -> Section:
    lockfiles = {kind: s.workdir / f"contended-{i}.lock" for i, kind in enumerate(CONTENDED)}
    kinds = list(CONTENDED)
    rounds = interleave(kinds, s.contended_rounds,
                        lambda k: contended_round(k, lockfiles[k], s.duration))
    rows = [contended_row(kind, r) for kind, r in zip(kinds, rounds, strict=True)]
    section = Section(
        "filelock",
        f"contended: {CONTENDING_PROCESSES} processes, one lock",
        "handoffs/s", rows, [RAW_OFD],
        columns=["worst wait ms", "p99 wait ms", "worst wait per process ms", "counter"])
    lw, raw = section.row(LW_FILELOCK), section.row(RAW_OFD)
    worst, p99 = "worst wait ms", "p99 wait ms"
    section.conclusions.append(
        f"latchwire throughput is {lw.median / raw.median:.2f}x the raw OFD floor's; "
        f"worst wait {fmt(lw.details[worst])} ms vs {fmt(raw.details[worst])} ms, "
        f"p99 {fmt(lw.details[p99])} ms vs {fmt(raw.details[p99])} ms")
    add_guard(section, f"{LW_FILELOCK} throughput / raw OFD's", lw.median / raw.median,
              CONTENDED_GUARD, at_most=False)
    section.failed = any(r.details["counter"] != "exact" for r in rows)
    if section.failed:
        section.notes.append("FAILED: the shared counter lost increments: two processes "
                             "held the lock at once.")
    section.notes.append(
        f"Each process: acquire, increment a shared counter, release, then "
        f"{OUTSIDE_WORK * 1e6:.0f} µs of busy-work outside the lock; {s.duration:g} s per round, "
        f"{s.contended_rounds} rounds, interleaved, started at a barrier. A wait is the "
        f"time from calling acquire to holding the lock, over every round.")
    cpus = min(CONTENDING_PROCESSES, len(os.sched_getaffinity(0)))
    section.notes.append(
        f"The busy-work alone caps throughput at {cpus} CPUs / {OUTSIDE_WORK * 1e6:.0f} µs = "
        f"{cpus / OUTSIDE_WORK:.0f} handoffs/s; close to that, throughput measures the CPUs, "
        f"not the lock, and the worst waits include being preempted by the other processes.")
    return section


def filelock_part(s: Settings) -> list[Section]:
    return [filelock_uncontended(s), filelock_contended(s)]


# ---------------------------------------------------------------------------
# lockspace: acquire+release of names, and the busy answer, in a lockspace holding many

LOCKSPACE_COUNTS = (100, 100_000)  # names cycled through; as many more held meanwhile
SPARE_DESCRIPTORS = 256  # left free beside the held leases, for everything else
HOLDER = "bench-holder"  # the owner of the held resources
ASKER = "bench-asker"  # another owner, asking for held resources: it is told busy
FLOOR_FILELOCK = "floor: FileLock"
FLOOR_FCNTL = "floor: fcntl"
FLOOR_OPEN = "floor: open+fcntl+close"
FLOOR_CREATE = "floor: create+fcntl+unlink"
FLOOR_REFUSED = "floor: open+fcntl refused+close"
LS_AUTO = "LockSpace (autocreate)"
LS_PRE = "LockSpace autocreate=False"
LS_BUSY = "LockSpace busy answer"
OSLO_LOCK = "oslo lockutils.lock(external=True)"
OSLO_EXTERNAL = "oslo external_lock() per name"
FILELOCK_PER_NAME = "filelock.FileLock per name"


def round_robin(items: Sequence[T], acquire: Callable[[T], object],
                release: Callable[[T], object]) -> Callable[[int], float]:
    """run(n): n acquire(item)+release(item) pairs going round items; seconds.

    The position carries over from one call to the next, so that every item is
    used as often as every other over a run.
    """
    position = 0
    count = len(items)

    def run(n: int) -> float:
        nonlocal position
        i = position
        start = time.perf_counter()
        for _ in range(n):
            item = items[i]
            acquire(item)
            release(item)
            i += 1
            if i == count:
                i = 0
        elapsed = time.perf_counter() - start
        position = i
        return elapsed
    return run


def with_round_robin(items: Sequence[T], enter: Callable[[T], AbstractContextManager[object]]
                     ) -> Callable[[int], float]:
    """round_robin() for a context manager: n ``with enter(item): pass``; seconds."""
    position = 0
    count = len(items)

    def run(n: int) -> float:
        nonlocal position
        i = position
        start = time.perf_counter()
        for _ in range(n):
            with enter(items[i]):
                pass
            i += 1
            if i == count:
                i = 0
        elapsed = time.perf_counter() - start
        position = i
        return elapsed
    return run


def open_lock_close(path: str) -> None:
    """The least any lock that opens its file per acquisition does: open, lock, unlock, close."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    fcntl.fcntl(fd, F_OFD_SETLK, WRLCK)
    fcntl.fcntl(fd, F_OFD_SETLK, UNLCK)
    os.close(fd)


def create_lock_unlink(path: str) -> None:
    """The least an auto-created lease does: create, lock, unlink, unlock, close."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    fcntl.fcntl(fd, F_OFD_SETLK, WRLCK)
    os.unlink(path)
    fcntl.fcntl(fd, F_OFD_SETLK, UNLCK)
    os.close(fd)


def no_op(_: object) -> None:
    pass


def compare_sentence(row: Row, peer: Row) -> str:
    ratio = peer.median / row.median
    if 0.95 < ratio < 1.05:
        return f"{row.name} is about as fast as {peer.name} ({ratio:.2f}x)"
    if ratio >= 1:
        return f"{row.name} is {ratio:.1f}x faster than {peer.name}"
    return f"{row.name} is {1 / ratio:.1f}x slower than {peer.name}"


def refused(attempt: Callable[[str], object]) -> Callable[[str], None]:
    """attempt(name), which must be refused as busy (BlockingIOError, LockBusy's base);
    RuntimeError if it is granted instead."""
    def ask(name: str) -> None:
        try:
            attempt(name)
        except BlockingIOError:
            return
        raise RuntimeError(f"{name}: granted, though it is held")
    return ask


def kernel_lock_attempt(path: str) -> None:
    """What finding a held file busy costs without a table: open, F_OFD_SETLK, close."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, WRLCK)
    finally:
        os.close(fd)


@contextmanager
def descriptors_for(wanted: int, notes: list[str]) -> Iterator[int]:
    """Room for up to wanted more open descriptors: RLIMIT_NOFILE's soft limit raised to
    its hard limit for the block, then restored. Yields how many fit: wanted, or fewer
    (with a note saying so) if the hard limit is too low. RuntimeError if none fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        room = hard - len(os.listdir("/proc/self/fd")) - SPARE_DESCRIPTORS
        if room < 1:
            raise RuntimeError(f"RLIMIT_NOFILE's hard limit ({hard:,}) leaves no room to hold "
                               "a resource")
        if room < wanted:
            notes.append(
                f"Scaled down: {wanted:,} resources held need {wanted:,} open descriptors, but "
                f"RLIMIT_NOFILE's hard limit is {hard:,} (soft {soft:,}), which this process "
                f"may not raise: {room:,} are held instead, all that fit with "
                f"{SPARE_DESCRIPTORS} to spare.")
        elif soft < hard:
            notes.append(f"RLIMIT_NOFILE's soft limit was raised from {soft:,} to its hard "
                         f"limit, {hard:,}, for these sections.")
        yield min(wanted, room)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def cycle_contenders(space: latchwire.LockSpace, directory: Path, names: Sequence[str],
                     stack: ExitStack, notes: list[str]) -> Iterator[Timed]:
    """Each contender's acquire+release round the names, in space's directory.

    The resource files are made beforehand, with LockSpace.create(), and used
    by every contender which needs existing files: the open+fcntl+close floor,
    LockSpace autocreate=False, oslo (its lock_path) and filelock. None of them
    holds anything between cycles, so they cannot get in each other's way, and
    they all meet the same files in the same caches. The auto-created ones,
    and the create+fcntl+unlink floor's, come and go in the same directory.
    """
    fd = os.open(directory.parent / "floor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    stack.callback(os.close, fd)
    yield Timed(FLOOR_FCNTL, "floor", python_floor_loop(fd))
    lock = latchwire.FileLock(directory.parent / "filelock-floor.lock",
                              lockfile=directory.parent / "filelock-floor.lock")
    yield Timed(FLOOR_FILELOCK, "floor", pair_loop(lock.acquire, lock.release))
    paths = [str(directory / name) for name in names]
    yield Timed(FLOOR_OPEN, "floor", round_robin(paths, open_lock_close, no_op))
    fresh = [f"new-{i:06d}" for i in range(len(names))]
    yield Timed(FLOOR_CREATE, "floor",
                round_robin([str(directory / name) for name in fresh], create_lock_unlink,
                            no_op))
    yield Timed(LS_AUTO, "latchwire", round_robin(fresh, space.acquire, space.release))
    yield Timed(LS_PRE, "latchwire",
                round_robin(names, partial(space.acquire, autocreate=False), space.release))

    if lockutils := optional_import("oslo_concurrency.lockutils", notes):
        yield Timed(OSLO_LOCK, "peer", with_round_robin(
            names, partial(lockutils.lock, external=True, lock_path=str(directory),
                           do_log=False)))
        external = [lockutils.external_lock(name, lock_path=str(directory)) for name in names]
        yield Timed(OSLO_EXTERNAL, "peer",
                    round_robin(external, type(external[0]).acquire,
                                type(external[0]).release))
    if filelock := optional_import("filelock", notes):
        locks = [filelock.FileLock(path) for path in paths]
        yield Timed(FILELOCK_PER_NAME, "peer",
                    round_robin(locks, type(locks[0]).acquire, type(locks[0]).release))


def round_robin_rows(s: Settings, contenders: Sequence[Timed], count: int) -> list[Row]:
    """Each contender's µs per operation in s.rounds interleaved rounds, after one warm-up
    pass over its count names (files, dentries and objects all warm), except in a quick
    run: there, calibrating warms it up (the files are warm from being made)."""
    if not s.quick:
        for c in contenders:
            c.run(count)
    return per_op_rows(contenders, s, 1e6, "ops/s")


def warm_up(s: Settings, count: int) -> str:
    """What round_robin_rows() did before measuring, and how it measured."""
    how = (f"Batches of about {s.batch * 1e3:.0f} ms, {s.rounds} rounds, interleaved, "
           "round-robin from where the last batch stopped.")
    if s.quick:
        return f"{how} Quick run: no warm-up pass over the {count:,} names first."
    return f"{how} Every contender made one warm-up pass over all {count:,} names first."


def cycle_section(s: Settings, space: latchwire.LockSpace, directory: Path,
                  names: Sequence[str], held: int, notes: list[str]) -> Section:
    """acquire+release round names, in space while it holds held other resources."""
    with ExitStack() as stack:
        rows = round_robin_rows(s, list(cycle_contenders(space, directory, names, stack,
                                                         notes)), len(names))
    floors = [r.name for r in rows if r.role == "floor"]
    section = Section("lockspace", f"acquire+release, {len(names):,} names round-robin, "
                      f"{held:,} others held", "µs/op", rows, floors, columns=["ops/s"],
                      notes=list(notes))
    lockspaces = [r for r in rows if r.role == "latchwire"]
    for row in lockspaces:
        ratios = ", ".join(f"{v:.2f}x the {f.removeprefix('floor: ')} floor"
                           for f, v in section.ratios(row).items())
        section.conclusions.append(f"{row.name}: {ratios}")
    auto, pre = section.row(LS_AUTO), section.row(LS_PRE)
    add_guard(section, f"{LS_PRE} / open+fcntl+close floor",
              pre.median / section.row(FLOOR_OPEN).median, LOCKSPACE_GUARD)
    section.conclusions.append(
        f"LockSpace adds {pre.median - section.row(FLOOR_OPEN).median:.1f} µs/op to "
        f"open+fcntl+close (autocreate=False) and "
        f"{auto.median - section.row(FLOOR_CREATE).median:.1f} µs/op to "
        f"create+fcntl+unlink (autocreate)")
    section.conclusions += [compare_sentence(lw, peer) for lw in lockspaces
                            for peer in rows if peer.role == "peer"]
    section.notes += [
        f"One LockSpace holds {held:,} other resources (owner {HOLDER!r}, one open "
        "descriptor each) throughout, so every acquire and release below works on a table "
        f"of {held:,} entries and more, in a directory of some {len(names) + held:,} files.",
        "Floors: fcntl is F_OFD_SETLK lock+unlock on a descriptor kept open; FileLock is "
        "latchwire.FileLock acquire()/release() on one file it keeps open; open+fcntl+close "
        "opens an existing file per acquisition, as every per-name contender here does; "
        "create+fcntl+unlink creates the file, locks it, unlinks it and closes it, as an "
        "auto-created lease does.",
        "LockSpace (autocreate) is the default acquire(name)/release(name): the file is "
        "created on acquire and deleted on release, every cycle. LockSpace autocreate=False "
        "locks resources made once with create(). Both use wait=False (LockSpace's "
        "default); the peers' acquire blocks, which costs nothing extra uncontended.",
        "oslo lockutils.lock(name, external=True, lock_path=DIR, do_log=False) takes an "
        "in-process semaphore, makes a fasteners InterProcessLock, opens the file, "
        "lockf()s it (classic POSIX lock), then unlocks and closes it. oslo external_lock() "
        "per name is that InterProcessLock made once per name. filelock.FileLock per name "
        "is one object per name made once (flock). The files are made up front, once, with "
        "LockSpace.create(), and shared by every contender that locks existing files: none "
        "but LockSpace (autocreate) and its floor creates a file while measured.",
        "Creating and unlinking a file costs what the filesystem and its journal make it: on "
        "a disk filesystem it varies several-fold from run to run, so read LockSpace "
        "(autocreate) against the create+fcntl+unlink floor measured beside it.",
        f"Names are taken round-robin, one acquire+release each. {warm_up(s, len(names))}",
    ]
    return section


def busy_section(s: Settings, space: latchwire.LockSpace, held: Sequence[str],
                 notes: list[str]) -> Section:
    """Another owner asking for each held resource in turn: LockBusy from space's table,
    against what the kernel alone takes to say the same."""
    paths = [space.path(name) for name in held]
    contenders = [
        Timed(FLOOR_REFUSED, "floor", round_robin(paths, refused(kernel_lock_attempt), no_op)),
        Timed(LS_BUSY, "latchwire",
              round_robin(held, refused(partial(space.acquire, owner=ASKER, autocreate=False)),
                          no_op)),
    ]
    rows = round_robin_rows(s, contenders, len(held))
    section = Section("lockspace", f"busy answer, {len(held):,} held, round-robin", "µs/op",
                      rows, [FLOOR_REFUSED], columns=["ops/s"], notes=list(notes))
    section.conclusions.append(compare_sentence(section.row(LS_BUSY),
                                                section.row(FLOOR_REFUSED)))
    section.notes += [
        f"The {len(held):,} resources the LockSpace holds (owner {HOLDER!r}) are asked for "
        f"round-robin by another owner ({ASKER!r}, wait=False, autocreate=False): the table "
        "answers LockBusy without opening the file (a second descriptor would drop a "
        "classic POSIX lock). Every answer is checked to be a refusal.",
        "Floor: what the kernel alone takes to say the same: open the file, a refused "
        "F_OFD_SETLK (EAGAIN: the lockspace's lease conflicts), close.",
        warm_up(s, len(held)),
    ]
    return section


def lockspace_sections(s: Settings, count: int) -> list[Section]:
    """Both lockspace comparisons at count names, in one lockspace that holds count more
    resources throughout (fewer if RLIMIT_NOFILE's hard limit is too low)."""
    workdir = s.workdir / f"lockspace-{count}"
    directory = workdir / "space"
    notes: list[str] = []
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir)
        held_count = stack.enter_context(descriptors_for(count, notes))
        space = latchwire.LockSpace(directory)
        names = [f"res-{i:06d}" for i in range(count)]
        held = [f"held-{i:06d}" for i in range(held_count)]
        for name in [*names, *held]:
            space.create(name)
        stack.callback(space.release_owner, HOLDER)
        for name in held:
            space.acquire(name, owner=HOLDER, autocreate=False)
        return [cycle_section(s, space, directory, names, held_count, notes),
                busy_section(s, space, held, notes)]


def lockspace_part(s: Settings) -> list[Section]:
    small, large = (lockspace_sections(s, count) for count in LOCKSPACE_COUNTS)
    for fewer, more, guarded, floor in zip(small, large, (LS_PRE, LS_BUSY),
                                           (FLOOR_OPEN, FLOOR_REFUSED), strict=True):
        add_scaling(fewer, more, guarded, floor)
    return [*small, *large]


# ---------------------------------------------------------------------------
# rwlock (also called mutex): the in-process locks, latchwire.Mutex and latchwire.RWLock

LOCK_FLOOR = "floor: threading.Lock"
MUTEX = "latchwire Mutex"
RW_READ = "latchwire RWLock read"
RW_WRITE = "latchwire RWLock write"
RWL_VARIANTS = ("RWLockRead", "RWLockWrite", "RWLockFair")
RWL_READS = tuple(f"readerwriterlock {v} read" for v in RWL_VARIANTS)
# The issue's targets: printed beside what was measured, never failed on.
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


def verdict(value: float, limit: float, at_most: bool) -> str:
    """'met', or by how much value misses limit."""
    if value <= limit if at_most else value >= limit:
        return "met"
    return f"MISSED by {abs(value / limit - 1):.0%}"


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


# ---------------------------------------------------------------------------
# objects: ObjectList lookups, handed back locked, and changes

OBJECT_COUNTS = (100, 100_000)
LOOKUP_KEYS = 1000  # keys each lookup loop cycles through
DICT_LOCK_FLOOR = "floor: dict lookup + threading.Lock"
DICT_FLOOR = "floor: dict lookup"
FIND_UUID = "find_by_uuid + unlock"
CHANGED = 1000  # objects added and removed in turn, one at a time
ADD_REMOVE = "add + unlock + remove"
DICT_CHANGE_FLOOR = "floor: 2 dict entries made + dropped, threading.Lock"


K = TypeVar("K")


def cycling(keys: Sequence[K], op: Callable[[K], object]) -> Callable[[int], float]:
    """run(n): op(key) n times, cycling through keys; seconds."""
    def run(n: int) -> float:
        start = time.perf_counter()
        done = 0
        while done < n:
            for key in keys[:n - done]:
                op(key)
            done += min(len(keys), n - done)
        return time.perf_counter() - start
    return run


# The workloads, shared with test_bench_objects.py.

def object_list(count: int) -> latchwire.ObjectList[latchwire.Lockable]:
    """A list of count objects: "uuid-I", "name-I", active with id I, unlocked."""
    doms: latchwire.ObjectList[latchwire.Lockable] = latchwire.ObjectList("bench")
    for i in range(count):
        obj = doms.add(latchwire.Lockable(f"uuid-{i}", f"name-{i}"))
        doms.activate(obj, i)
        obj.unlock()
    return doms


def picked(count: int) -> list[int]:
    """The indexes of LOOKUP_KEYS of count objects picked at random (all, if fewer)."""
    return random.Random(count).sample(range(count), min(count, LOOKUP_KEYS))


def found(find: Callable[[K], latchwire.Lockable | None]) -> Callable[[K], None]:
    """A lookup by find that must hand an object back locked; it is unlocked at once."""
    def op(key: K) -> None:
        obj = find(key)
        assert obj is not None
        obj.unlock()
    return op


def dict_and_lock(locks: dict[str, threading.Lock]) -> Callable[[str], None]:
    """The lookup floor: look a threading.Lock up in locks, acquire it, release it."""
    def op(key: str) -> None:
        lock = locks[key]
        lock.acquire()
        lock.release()
    return op


def extra_objects() -> list[latchwire.Lockable]:
    """CHANGED objects not in any list, their uuids and names unlike the list's."""
    return [latchwire.Lockable(f"extra-uuid-{i}", f"extra-name-{i}") for i in range(CHANGED)]


def add_remove(doms: latchwire.ObjectList[latchwire.Lockable]
               ) -> Callable[[latchwire.Lockable], None]:
    """add() (handed back locked), unlock, remove(): doms keeps its size."""
    def op(obj: latchwire.Lockable) -> None:
        doms.add(obj)
        obj.unlock()
        doms.remove(obj)
    return op


def insert_delete(count: int) -> Callable[[latchwire.Lockable], None]:
    """The change floor: in two dicts of count entries (uuid, name), make an object's two
    entries under a threading.Lock, then drop them under it again."""
    lock = threading.Lock()
    by_uuid: dict[Hashable, object] = {f"uuid-{i}": None for i in range(count)}
    by_name: dict[str, object] = {f"name-{i}": None for i in range(count)}

    def op(obj: latchwire.Lockable) -> None:
        with lock:
            by_uuid[obj.uuid] = obj
            by_name[obj.name] = obj
        with lock:
            del by_uuid[obj.uuid]
            del by_name[obj.name]
    return op


def objects_sections(s: Settings, count: int) -> list[Section]:
    """Over a list of count objects: lookups, and adding then removing one more."""
    doms = object_list(count)
    return [lookup_section(s, doms, count), change_section(s, doms, count)]


def lookup_section(s: Settings, doms: latchwire.ObjectList[latchwire.Lockable],
                   count: int) -> Section:
    """find_by_uuid/name/id (and the unlock) among count objects "uuid-I", "name-I" with
    id I, against dict + Lock floors."""
    picks = picked(count)
    locks = {f"uuid-{i}": threading.Lock() for i in range(count)}  # as many as objects
    uuids = [f"uuid-{i}" for i in picks]
    contenders = [
        Timed(DICT_FLOOR, "floor", cycling(uuids, locks.__getitem__)),
        Timed(DICT_LOCK_FLOOR, "floor", cycling(uuids, dict_and_lock(locks))),
        Timed(FIND_UUID, "latchwire", cycling(uuids, found(doms.find_by_uuid))),
        Timed("find_by_name + unlock", "latchwire",
              cycling([f"name-{i}" for i in picks], found(doms.find_by_name))),
        Timed("find_by_id + unlock", "latchwire", cycling(picks, found(doms.find_by_id))),
    ]
    rows = per_op_rows(contenders, s, 1e9, "lookups/s")
    section = Section("objects", f"lookups, {count:,} objects", "ns/op", rows,
                      [DICT_LOCK_FLOOR], columns=["lookups/s"])
    add_guard(section, f"{FIND_UUID} / dict + threading.Lock",
              section.ratios(section.row(FIND_UUID))[DICT_LOCK_FLOOR], OBJECTS_GUARD)
    for row in rows:
        if row.role == "latchwire":
            section.conclusions.append(
                f"{row.name}: {section.ratios(row)[DICT_LOCK_FLOOR]:.2f}x a dict lookup plus "
                "a threading.Lock acquire/release")
    section.notes += [
        f"Each loop cycles through {len(picks)} keys picked at random among the {count:,}. "
        "A lookup takes the list's read lock, reads the index, lets the list lock go, locks "
        "the object (a latchwire Mutex) and checks it is not being removed; the unlock is "
        "part of each operation, as it is of the dict + threading.Lock floor.",
        f"Batches of about {s.batch * 1e3:.0f} ms, {s.rounds} rounds, interleaved.",
    ]
    return section


def change_section(s: Settings, doms: latchwire.ObjectList[latchwire.Lockable],
                   count: int) -> Section:
    """add() (handed back locked), unlock, remove() of one more object among count, against
    the same two index entries made and dropped under a threading.Lock."""
    extra = extra_objects()
    contenders = [Timed(DICT_CHANGE_FLOOR, "floor", cycling(extra, insert_delete(count))),
                  Timed(ADD_REMOVE, "latchwire", cycling(extra, add_remove(doms)))]
    rows = per_op_rows(contenders, s, 1e9, "changes/s")
    section = Section("objects", f"add+remove, {count:,} objects present", "ns/op", rows,
                      [DICT_CHANGE_FLOOR], columns=["changes/s"])
    section.failed = len(doms) != count
    section.conclusions.append(
        f"{ADD_REMOVE}: {section.ratios(section.row(ADD_REMOVE))[DICT_CHANGE_FLOOR]:.2f}x "
        "the floor")
    section.notes += [
        f"Each operation adds one of {CHANGED} more objects (handed back locked), unlocks "
        f"it and removes it again, so the list holds {count:,} objects throughout: add() "
        "takes the list's write lock and the object's lock, checks uuid, name and id are "
        "free and enters uuid and name in their indexes; remove() marks the object under "
        "the write lock, waits out its users (none here) by locking and unlocking it, and "
        "drops its index entries under the write lock again.",
        "Floor: the same two index entries (uuid, name) made in two dicts of "
        f"{count:,} entries under a threading.Lock, then dropped under it again.",
        f"Batches of about {s.batch * 1e3:.0f} ms, {s.rounds} rounds, interleaved.",
    ]
    if section.failed:
        section.notes.append(f"FAILED: the list holds {len(doms):,} objects afterwards, "
                             f"not {count:,}.")
    return section


def objects_part(s: Settings) -> list[Section]:
    small, large = (objects_sections(s, count) for count in OBJECT_COUNTS)
    for fewer, more, guarded in zip(small, large, (FIND_UUID, ADD_REMOVE), strict=True):
        add_scaling(fewer, more, guarded, fewer.floors[0])
        more.notes.append("Every index is a dict: what grows with the number of objects "
                          "grows in the floors too (caches), not in the algorithm.")
    return [*small, *large]


# ---------------------------------------------------------------------------
# dump: one whole netlink route dump, raw, against recv_into from Python and pyroute2

ROUTE_COUNTS = (1_000, 10_000, 100_000)
RECV_BUFFER = 65536  # the floors' receive buffer; the kernel sends dumps in ~32 KiB datagrams
CLONE_NEWNET = 0x40000000
NLMSG_HDRLEN = 16
DONE_SIZE = 20  # an NLMSG_DONE without extended ACK: nlmsghdr and an int
# struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type; flags.
RTMSG_INET = struct.pack("=8BI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
NLMSG_LEN_TYPE = struct.Struct("=IH")  # the start of struct nlmsghdr: length, type
DUMP_BUDGET = 25.0  # seconds of measured dumps per contender and route count
DUMP_BUDGET_QUICK = 8.0
FLOOR_WALK = "floor: recv_into + header walk"
FLOOR_RECV = "floor: recv_into"
LW_DUMP = "latchwire Socket.dump"
LW_DUMP_COUNT = "latchwire Socket.dump, count only"
PYROUTE2_ROUTES = "pyroute2 get_routes"


class Counted(NamedTuple):
    """What one dump brought; None where a contender does not count it."""

    messages: int | None
    nbytes: int | None  # bytes of the route messages, headers included, NLMSG_DONE not
    datagrams: int | None = None


@dataclass(frozen=True)
class Dumper:
    """A dump contender: dump() does one whole dump and says what it brought."""

    name: str
    role: str
    dump: Callable[[], Counted]


def ip(*args: str) -> None:
    """Run iproute2's ip; RuntimeError with its message if it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@contextmanager
def bench_netns() -> Iterator[str]:
    """A new network namespace, with a veth pair up in it; deleted on the way out."""
    name = f"lwbench-{os.urandom(4).hex()}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        ip("-n", name, "link", "set", "veth0", "up")
        ip("-n", name, "link", "set", "veth1", "up")
        yield name
    finally:
        result = subprocess.run(["ip", "netns", "delete", name], capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            print(f"dump: could not delete network namespace {name}: "
                  f"{result.stderr.strip()}", file=sys.stderr)


def load_routes(netns: str, start: int, stop: int, workdir: Path,
                table: int = rtnl.RT_TABLE_MAIN) -> None:
    """Add routes start..stop-1 (10.X.Y.Z/32 dev veth0, in table) with one ip -batch."""
    batch = workdir / f"routes-{start}-{stop}"
    batch.write_text("".join(f"route add 10.{i >> 16}.{(i >> 8) & 255}.{i & 255}/32 dev veth0 "
                             f"table {table}\n" for i in range(start, stop)))
    ip("-n", netns, "-batch", str(batch))


def socket_in_netns(netns: str) -> socket.socket:
    """A plain Python NETLINK_ROUTE socket made in netns, connected to the kernel.

    This thread hops into the namespace with libc's setns() (os.setns() is
    Python 3.12+), makes the socket and hops back: a socket stays in the
    namespace it was made in, and nothing else runs in between.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(os.path.join("/run/netns", netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_ROUTE)
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back: this thread is lost in "
                              f"namespace {netns}")
    finally:
        os.close(target)
        os.close(home)
    sock.connect((0, 0))
    return sock


def netlink_failure(buf: bytearray, offset: int) -> Exception:
    """The exception for the message at offset, which ends or breaks a dump."""
    length, type_ = NLMSG_LEN_TYPE.unpack_from(buf, offset)
    if type_ in (netlink.NLMSG_ERROR, netlink.NLMSG_DONE) and length >= DONE_SIZE:
        (code,) = struct.unpack_from("=i", buf, offset + NLMSG_HDRLEN)
        if code < 0:
            return OSError(-code, os.strerror(-code))
    return RuntimeError(f"unexpected netlink message type {type_}, length {length}")


def dump_request(msg_type: int = netlink.RTM_GETROUTE, body: bytes = RTMSG_INET) -> bytes:
    """A dump request (NLM_F_DUMP) of msg_type with body (the family header and attributes)
    after its nlmsghdr; by default RTM_GETROUTE for every IPv4 route."""
    return struct.pack("=IHHII", NLMSG_HDRLEN + len(body), msg_type,
                       netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, 1, 0) + body


def recv_floor(sock: socket.socket, request: bytes) -> Callable[[], Counted]:
    """recv_into alone over the dump request asks for: the end is found by looking at each
    datagram's last 20 bytes."""
    buf = bytearray(RECV_BUFFER)
    unpack = NLMSG_LEN_TYPE.unpack_from
    done = (DONE_SIZE, netlink.NLMSG_DONE)

    def dump() -> Counted:
        sock.send(request)
        total = datagrams = 0
        while True:
            size = sock.recv_into(buf)
            datagrams += 1
            total += size
            if unpack(buf, 0)[1] == netlink.NLMSG_ERROR:
                raise netlink_failure(buf, 0)
            if size >= DONE_SIZE and unpack(buf, size - DONE_SIZE) == done:
                return Counted(None, total - DONE_SIZE, datagrams)
    return dump


def walk_floor(sock: socket.socket) -> Callable[[], Counted]:
    """recv_into, and every nlmsghdr walked: messages and bytes counted up to NLMSG_DONE."""
    request = dump_request()
    buf = bytearray(RECV_BUFFER)
    unpack = NLMSG_LEN_TYPE.unpack_from
    last_control = netlink.NLMSG_DONE  # types up to this one are NOOP, ERROR and DONE

    def dump() -> Counted:
        sock.send(request)
        messages = nbytes = datagrams = 0
        while True:
            size = sock.recv_into(buf)
            datagrams += 1
            offset = 0
            while offset < size:
                length, type_ = unpack(buf, offset)
                if type_ <= last_control or length < NLMSG_HDRLEN:
                    if type_ == netlink.NLMSG_DONE and length >= NLMSG_HDRLEN:
                        return Counted(messages, nbytes, datagrams)
                    raise netlink_failure(buf, offset)
                messages += 1
                nbytes += length
                offset += (length + 3) & ~3
    return dump


def latchwire_dump(sock: netlink.Socket, count_bytes: bool) -> Callable[[], Counted]:
    """Socket.dump() iterated to the end: each message counted, and its bytes if asked."""
    request = netlink.Request(netlink.RTM_GETROUTE, header=RTMSG_INET)

    def dump_bytes() -> Counted:
        messages = nbytes = 0
        for msg in sock.dump(request):
            messages += 1
            nbytes += NLMSG_HDRLEN + len(msg.payload)
        return Counted(messages, nbytes)

    def dump_count() -> Counted:
        messages = 0
        for _ in sock.dump(request):
            messages += 1
        return Counted(messages, None)
    return dump_bytes if count_bytes else dump_count


def pyroute2_dump(ipr: Any) -> Callable[[], Counted]:
    """pyroute2's get_routes(family=AF_INET): every route decoded; bytes from the headers."""
    def dump() -> Counted:
        routes = ipr.get_routes(family=socket.AF_INET)
        return Counted(len(routes), sum(route["header"]["length"] for route in routes))
    return dump


def dumpers(netns: str, stack: ExitStack, notes: list[str]) -> Iterator[Dumper]:
    """Every contender, its socket made once in netns (closed by stack)."""
    plain = socket_in_netns(netns)
    stack.callback(plain.close)
    yield Dumper(FLOOR_WALK, "floor", walk_floor(plain))
    yield Dumper(FLOOR_RECV, "floor", recv_floor(plain, dump_request()))
    sock = stack.enter_context(netlink.Socket(netlink.NETLINK_ROUTE, netns=netns))
    yield Dumper(LW_DUMP, "latchwire", latchwire_dump(sock, count_bytes=True))
    yield Dumper(LW_DUMP_COUNT, "latchwire", latchwire_dump(sock, count_bytes=False))
    if pyroute2 := optional_import("pyroute2", notes):
        ipr = pyroute2.IPRoute(netns=netns)
        stack.callback(ipr.close)
        yield Dumper(PYROUTE2_ROUTES, "peer", pyroute2_dump(ipr))


def counting_loop(dump: Callable[[], Counted], seen: set[Counted]) -> Callable[[int], float]:
    """run(n): n whole dumps; seconds. What each dump brought goes into seen."""
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            seen.add(dump())
        return time.perf_counter() - start
    return run


def spread(k: int, rounds: int) -> set[int]:
    """k of rounds round numbers, evenly spread, the first included."""
    return {i * rounds // k for i in range(k)}


def timed_dumps(s: Settings, contenders: Sequence[Dumper], budget: float
                ) -> tuple[list[Row], dict[str, set[Counted]]]:
    """Time one whole dump per contender, interleaved over s.rounds rounds, in ms per dump;
    also what every dump of each contender brought.

    A warm-up dump each says how long one takes: a dump shorter than a batch is repeated
    to fill one, a longer one is a batch of its own, and a contender runs only in as many
    rounds (spread evenly) as its batches fit in budget seconds. Each batch starts after
    a full garbage collection, untimed: the cyclic garbage a contender leaves behind is
    collected at the next full collection, which would otherwise land in whichever batch
    came next. The collections a contender's own batch triggers are counted.
    """
    seen: dict[str, set[Counted]] = {d.name: set() for d in contenders}
    timed = [Timed(d.name, d.role, counting_loop(d.dump, seen[d.name])) for d in contenders]
    once = {t.name: t.run(1) for t in timed}
    sizes = {t.name: calibrate(t.run, s.batch) if once[t.name] < s.batch else 1 for t in timed}
    schedule = {t.name: spread(max(1, min(s.rounds, int(budget / (once[t.name] *
                                                                 sizes[t.name])))), s.rounds)
                for t in timed}
    calls = dict.fromkeys(once, 0)

    def measure(t: Timed) -> float | None:
        round_number = calls[t.name]
        calls[t.name] += 1
        if round_number not in schedule[t.name]:
            return None
        gc.collect()  # garbage left by the batch before (pyroute2 leaves cycles) is not t's
        return t.run(sizes[t.name]) / sizes[t.name] * 1e3

    samples = interleave(timed, s.rounds, measure)
    rows = [Row(t.name, t.role, [x for x in per if x is not None])
            for t, per in zip(timed, samples, strict=True)]
    return rows, seen


def dump_section(s: Settings, contenders: Sequence[Dumper], count: int,
                 notes: list[str]) -> Section:
    """Time one whole dump of count routes per contender, interleaved."""
    rows, seen = timed_dumps(s, contenders, DUMP_BUDGET_QUICK if s.quick else DUMP_BUDGET)
    section = Section("dump", f"raw IPv4 route dump, {count:,} routes", "ms/dump", rows,
                      [FLOOR_WALK, FLOOR_RECV],
                      columns=["Mmsg/s", "MB/s", "µs/route", "rounds"], notes=list(notes))

    # Every dump of every contender must have brought the same messages and bytes (those
    # it counts) as the header walk; how the kernel cut a dump into datagrams may vary.
    walked = seen[FLOOR_WALK]
    messages, nbytes = next(iter(walked))[:2]
    assert messages is not None and nbytes is not None
    mismatched = [name for name, results in seen.items()
                  if any(c.messages not in (None, messages) or c.nbytes not in (None, nbytes)
                         for c in results)]
    cuts = sorted({c.datagrams for c in walked | seen[FLOOR_RECV] if c.datagrams is not None})
    datagrams = f"{cuts[0]}" if len(cuts) == 1 else f"{cuts[0]}-{cuts[-1]}"
    for row in rows:
        seconds = row.median / 1e3
        row.details |= {"Mmsg/s": messages / seconds / 1e6, "MB/s": nbytes / seconds / 1e6,
                        "µs/route": seconds * 1e6 / messages, "rounds": str(len(row.samples))}
    section.conclusions.append(
        f"one dump: {messages:,} messages, {nbytes / 1e6:.2f} MB, in {datagrams} datagrams "
        f"(~{nbytes / statistics.mean(cuts) / 1024:.1f} KiB each)")
    if messages != count:
        section.conclusions.append(f"{messages:,} messages for {count:,} routes added")
    for row in rows:
        if row.role != "floor":
            ratios = section.ratios(row)
            section.conclusions.append(
                f"{row.name}: {ratios[FLOOR_WALK]:.2f}x the recv_into + header walk floor, "
                f"{ratios[FLOOR_RECV]:.2f}x recv_into alone")
    lw = section.row(LW_DUMP)
    add_guard(section, f"{LW_DUMP} / recv_into floor", section.ratios(lw)[FLOOR_RECV],
              DUMP_GUARD)
    section.conclusions += [compare_sentence(lw, r) for r in rows if r.role == "peer"]
    if mismatched:
        section.failed = True
        section.notes.append("FAILED: the dumps did not all bring the same: " + "; ".join(
            f"{name}: {', '.join(map(str, seen[name]))}" for name in mismatched))
    return section


def dump_part(s: Settings) -> list[Section]:
    if not netns_capable("dump"):
        return []
    notes: list[str] = []
    sections: list[Section] = []
    with bench_netns() as netns, ExitStack() as stack:
        contenders = list(dumpers(netns, stack, notes))
        loaded = 0
        for count in ROUTE_COUNTS:
            load_routes(netns, loaded, count, s.workdir)
            loaded = count
            sections.append(dump_section(s, contenders, count, notes))
    budget = DUMP_BUDGET_QUICK if s.quick else DUMP_BUDGET
    last = sections[-1]
    counts = " / ".join(f"{c:,}" for c in ROUTE_COUNTS)
    for row in sections[0].rows:
        per_route = [float(sec.row(row.name).details["µs/route"]) for sec in sections]
        growth = per_route[-1] / per_route[0]
        last.conclusions.append(
            f"scaling, {row.name}: {' / '.join(fmt(x) for x in per_route)} µs per route at "
            f"{counts} routes ({growth:.2f}x from the fewest to the most; 1.00 is linear)")
    last.notes += [
        f"Setup: a network namespace of its own ({netns}, deleted at the end) with a veth "
        "pair up; the routes are 10.X.Y.Z/32 dev veth0 in the main table, added with "
        "`ip -n NS -batch FILE` and grown from one count to the next. No IPv4 address is "
        "configured, so the AF_INET dump brings exactly those routes.",
        "Floors: a plain Python socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) made in "
        "the namespace by a libc setns() hop of this thread around socket() (os.setns() is "
        "Python 3.12+; the socket then lives here, measured in the same rounds as the "
        "others), connected to the kernel; it sends the same RTM_GETROUTE + rtmsg(AF_INET) "
        f"dump request and loops recv_into() a preallocated {RECV_BUFFER // 1024} KiB "
        "bytearray. 'recv_into' finds NLMSG_DONE by looking at the last 20 bytes of each "
        "datagram: the kernel's work and the copies. 'recv_into + header walk' also walks "
        "every nlmsghdr (struct unpack_from of length and type) counting messages and bytes "
        "until NLMSG_DONE: the least any library written in Python must do. Ratios are to "
        "both.",
        "latchwire: one Socket(NETLINK_ROUTE, netns=NAME) made once; each dump iterates "
        "sock.dump(Request(RTM_GETROUTE, header=rtmsg(AF_INET))) to the end, counting "
        "messages and their bytes (16 + len(msg.payload)); 'count only' never touches "
        "payload. No attribute is decoded.",
        "pyroute2: IPRoute(netns=NAME) made once (its defaults: multicast groups joined, "
        "1 MiB receive buffer; the namespace is quiet), get_routes(family=AF_INET), which "
        "decodes every message into nested dicts, as its users pay; bytes summed from the "
        "decoded headers. get_routes(table=254) runs the same dump and filters in Python. "
        "Its raw route_dumps(fmt='raw') is not used: in pyroute2 0.9.7 it returned the first "
        "datagram only (72 of 1,000 routes).",
        f"Each contender made a warm-up dump first; a dump longer than the batch "
        f"({s.batch * 1e3:.0f} ms) is a batch of its own, and each contender runs in as many "
        f"of the {s.rounds} interleaved rounds as its dumps fit in {budget:g} s, spread "
        "evenly ('rounds' column): pyroute2 gets few at 100,000 routes, so its figures "
        "there are from fewer dumps. Every dump is checked to bring what the header walk "
        "counted. Mmsg/s and MB/s are per median dump.",
    ]
    return sections


# ---------------------------------------------------------------------------
# routes and links: whole rtnetlink dumps decoded into records (latchwire.rtnl), against
# the recv_into floor, `ip -j ... | json.loads` and pyroute2

RTNL_ROUTE_COUNTS = (10_000, 100_000)
RTNL_TABLE = 100  # the routes' table; main stays empty, so a dump filters by table
VETH_PAIRS = 1_000
BASE_LINKS = 3  # lo and the veth pair bench_netns() makes
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
RTA_TABLE = 15
RTNL_BUDGET_QUICK = 4.0  # seconds of measured dumps per contender and size with --quick
# What the floors send: the requests latchwire.rtnl sends for routes(table=RTNL_TABLE)
# (rtmsg for AF_INET in that table, and an RTA_TABLE attribute) and for links().
ROUTES_REQUEST = dump_request(
    netlink.RTM_GETROUTE, struct.pack("=8BI", socket.AF_INET, 0, 0, 0, RTNL_TABLE, 0, 0, 0, 0)
    + struct.pack("=HHI", 8, RTA_TABLE, RTNL_TABLE))
LINKS_REQUEST = dump_request(netlink.RTM_GETLINK, struct.pack("=BxHiII", 0, 0, 0, 0, 0))
LW_ROUTES = "latchwire Route.routes"
LW_ROUTES_READ = "latchwire Route.routes, dst/gateway/oif read"
IP_JSON_ROUTES = "ip -j route show | json.loads"
LW_LINKS = "latchwire Route.links"
IP_JSON_LINKS = "ip -j link show | json.loads"
PYROUTE2_LINKS = "pyroute2 get_links"
DECODED_GUARD = 20.0  # a decoded route or link dump, at most this times the recv_into floor
PYROUTE2_GUARD = 10.0  # a decoded route dump, at least this many times faster than pyroute2
MEMORY_GUARD = 4.0  # peak traced during routes(), at most this times the records' own size
# Issue 7's targets for decoded routes, printed beside the figures (nothing fails on them).
ROUTES_FLOOR_TARGET = 3.0  # at most this times the recv_into floor
ROUTES_IP_JSON_TARGET = 5.0  # at least this many times faster than ip -j + json.loads
ROUTES_PYROUTE2_TARGET = 100.0  # at least this many times faster than pyroute2
MEMORY_TARGET = 2.0  # peak at most this times the records' own size


def netns_capable(part: str) -> bool:
    """Whether this process can make network namespaces (root and iproute2's `ip`); if
    not, part says it is skipped and why."""
    if os.geteuid() == 0 and shutil.which("ip") is not None:
        return True
    print(f"{part}: skipped: it needs root and iproute2's `ip` (it makes a network "
          "namespace and fills it)\n", file=sys.stderr, flush=True)
    return False


def load_veths(netns: str, pairs: int, workdir: Path) -> None:
    """Add veth pairs lwaN <-> lwbN for N < pairs (left down) with one ip -batch."""
    batch = workdir / f"veths-{pairs}"
    batch.write_text("".join(f"link add lwa{i} type veth peer name lwb{i}\n"
                             for i in range(pairs)))
    ip("-n", netns, "-batch", str(batch))


def rtnl_floor_socket(netns: str, stack: ExitStack) -> socket.socket:
    """socket_in_netns() with NETLINK_GET_STRICT_CHK on, as latchwire.rtnl's sockets are
    (the kernel then filters a route dump by the table asked for); closed by stack."""
    sock = socket_in_netns(netns)
    stack.callback(sock.close)
    sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    return sock


def records_dump(dump: Callable[[], Sized]) -> Callable[[], Counted]:
    """A dump contender counting the records (or dicts) each dump() returns."""
    def run() -> Counted:
        return Counted(len(dump()), None)
    return run


def routes_read(route: rtnl.Route) -> Callable[[], Counted]:
    """Route.routes() with every record's dst, gateway and oif read; counted are the
    routes that read as loaded (a dst and an oif, no gateway)."""
    def dump() -> Counted:
        direct = 0
        for entry in route.routes(table=RTNL_TABLE):
            if entry.dst is not None and entry.gateway is None and entry.oif is not None:
                direct += 1
        return Counted(direct, None)
    return dump


def ip_json(netns: str, *args: str) -> list[Any]:
    """The output of `ip -n netns -j args`, loaded by json.loads."""
    result = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, check=True)
    loaded: list[Any] = json.loads(result.stdout)
    return loaded


class Footprint(NamedTuple):
    """Python's allocations for one call that returns records, traced by tracemalloc."""

    peak: int  # bytes traced at the peak during the call, over what was traced before it
    retained: int  # bytes still traced after the call, its result held
    own: int  # the result's own size: sys.getsizeof of the list and of each record
    records: int


def footprint(call: Callable[[], Sequence[object]]) -> Footprint:
    """Trace one call() (untimed: tracing slows allocation)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    own = sys.getsizeof(result) + sum(sys.getsizeof(r) for r in result)
    return Footprint(peak - before, retained - before, own, len(result))


def add_footprint(section: Section, name: str, fp: Footprint, noun: str) -> None:
    """Conclude on fp, name's memory, against issue 7's target, and guard it."""
    ratio = fp.peak / fp.own
    section.conclusions.append(
        f"{name}, memory of one call ({fp.records:,} {noun}s, tracemalloc): peak "
        f"{fp.peak / 1e6:.2f} MB = {ratio:.2f}x the records' own size ({fp.own / 1e6:.2f} MB: "
        f"the list and the records, {fp.own / fp.records:.0f} bytes a {noun}; still traced "
        f"after the call: {fp.retained / 1e6:.2f} MB); target ≤ {MEMORY_TARGET:g}x: "
        f"{verdict(ratio, MEMORY_TARGET, at_most=True)}")
    add_guard(section, f"{name}: peak memory / records' own size", ratio, MEMORY_GUARD)


def span(values: Iterable[float], form: str) -> str:
    """The values shown with form: one figure if they all show alike, else lowest-highest."""
    shown = sorted(set(values))
    low, high = form.format(shown[0]), form.format(shown[-1])
    return low if low == high else f"{low}-{high}"


def decoded_section(s: Settings, part: str, title: str, contenders: Sequence[Dumper],
                    count: int, noun: str) -> Section:
    """Time one whole dump per contender, interleaved, each of which must bring count
    records; ratios to the recv_into floor, time per record."""
    rows, seen = timed_dumps(s, contenders, RTNL_BUDGET_QUICK if s.quick else DUMP_BUDGET)
    per = f"µs/{noun}"
    section = Section(part, title, "ms/dump", rows, [FLOOR_RECV], columns=[per, "rounds"])
    for row in rows:
        row.details |= {per: row.median * 1e3 / count, "rounds": str(len(row.samples))}
    floor = seen[FLOOR_RECV]
    megabytes = span([c.nbytes / 1e6 for c in floor if c.nbytes is not None], "{:.2f}")
    datagrams = span([c.datagrams for c in floor if c.datagrams is not None], "{:.0f}")
    section.conclusions.append(f"one dump: {count:,} {noun}s, {megabytes} MB in {datagrams} "
                               "datagrams")
    section.conclusions += [f"{row.name}: {section.ratios(row)[FLOOR_RECV]:.2f}x the "
                            "recv_into floor" for row in rows if row.role != "floor"]
    wrong = {name: ", ".join(sorted({str(c.messages) for c in results}))
             for name, results in seen.items()
             if name != FLOOR_RECV and any(c.messages != count for c in results)}
    if wrong:
        section.failed = True
        section.notes.append(f"FAILED: a dump did not bring the {count:,} {noun}s loaded: " +
                             "; ".join(f"{name} brought {n}" for name, n in wrong.items()))
    return section


def faster_sentence(section: Section, name: str, peer: str, target: float) -> str:
    """How many times faster name is than peer, against a target of at least that."""
    speedup = section.row(peer).median / section.row(name).median
    return (f"{name} is {speedup:.1f}x faster than {peer}; target ≥ {target:g}x: "
            f"{verdict(speedup, target, at_most=False)}")


def routes_conclusions(section: Section, count: int) -> None:
    """Issue 7's targets for decoded routes, the cost of reading fields, and the guards."""
    lw = section.row(LW_ROUTES)
    to_floor = section.ratios(lw)[FLOOR_RECV]
    names = {r.name for r in section.rows}
    section.conclusions += [
        f"{LW_ROUTES}: target ≤ {ROUTES_FLOOR_TARGET:g}x the recv_into floor: "
        f"{verdict(to_floor, ROUTES_FLOOR_TARGET, at_most=True)}",
        faster_sentence(section, LW_ROUTES, IP_JSON_ROUTES, ROUTES_IP_JSON_TARGET)]
    add_guard(section, f"{LW_ROUTES} / recv_into floor", to_floor, DECODED_GUARD)
    if PYROUTE2_ROUTES in names:
        section.conclusions.append(faster_sentence(section, LW_ROUTES, PYROUTE2_ROUTES,
                                                    ROUTES_PYROUTE2_TARGET))
        add_guard(section, f"{PYROUTE2_ROUTES} / {LW_ROUTES}",
                  section.row(PYROUTE2_ROUTES).median / lw.median, PYROUTE2_GUARD, at_most=False)
    extra = (section.row(LW_ROUTES_READ).median - lw.median) * 1e3 / count
    section.conclusions.append(
        f"reading dst, gateway and oif of every record adds {extra:.3f} µs a route")


def routes_part(s: Settings) -> list[Section]:
    if not netns_capable("routes"):
        return []
    notes: list[str] = []
    pyroute2 = optional_import("pyroute2", notes)
    sections: list[Section] = []
    with bench_netns() as netns, ExitStack() as stack:
        route = stack.enter_context(rtnl.Route(netns))
        contenders = [
            Dumper(FLOOR_RECV, "floor", recv_floor(rtnl_floor_socket(netns, stack),
                                                   ROUTES_REQUEST)),
            Dumper(LW_ROUTES, "latchwire", records_dump(partial(route.routes,
                                                                table=RTNL_TABLE))),
            Dumper(LW_ROUTES_READ, "latchwire", routes_read(route)),
            Dumper(IP_JSON_ROUTES, "peer", records_dump(partial(
                ip_json, netns, "route", "show", "table", str(RTNL_TABLE))))]
        get_routes: Callable[[], list[Any]] | None = None
        if pyroute2:
            ipr = pyroute2.IPRoute(netns=netns)
            stack.callback(ipr.close)
            get_routes = partial(ipr.get_routes, family=socket.AF_INET, table=RTNL_TABLE)
            contenders.append(Dumper(PYROUTE2_ROUTES, "peer", records_dump(get_routes)))
        loaded = 0
        for count in RTNL_ROUTE_COUNTS:
            load_routes(netns, loaded, count, s.workdir, RTNL_TABLE)
            loaded = count
            if s.quick and count > RTNL_ROUTE_COUNTS[0]:
                contenders = [d for d in contenders if d.name != PYROUTE2_ROUTES]
            section = decoded_section(s, "routes", f"decoded IPv4 routes, {count:,} routes",
                                      contenders, count, "route")
            routes_conclusions(section, count)
            lw_fp = footprint(partial(route.routes, table=RTNL_TABLE))
            add_footprint(section, LW_ROUTES, lw_fp, "route")
            if get_routes and not s.quick and count == RTNL_ROUTE_COUNTS[0]:
                peer_fp = footprint(get_routes)
                section.conclusions.append(
                    f"{PYROUTE2_ROUTES}, the same: peak {peer_fp.peak / 1e6:.1f} MB, "
                    f"{peer_fp.peak / lw_fp.peak:.0f}x latchwire's")
            sections.append(section)
    add_scaling(sections[0], sections[-1], LW_ROUTES, FLOOR_RECV, per_item="µs/route")
    sections[-1].notes += [*notes, *decoded_notes(s, netns, "route"), (
        "Setup: the routes are 10.X.Y.Z/32 dev veth0 in table "
        f"{RTNL_TABLE}, added with `ip -n NS -batch FILE` and grown from one count to the "
        "next; the main table stays empty. Each contender asks for that table: "
        f"routes(table={RTNL_TABLE}), `ip -j route show table {RTNL_TABLE}`, "
        f"get_routes(family=AF_INET, table={RTNL_TABLE}). '{LW_ROUTES_READ}' also reads "
        "those three fields of every record (their Python objects are made then) and "
        "checks them: the cost of reading a dump, not only of having it.")]
    if s.quick and pyroute2:
        sections[-1].notes.append(f"--quick: pyroute2 runs at {RTNL_ROUTE_COUNTS[0]:,} "
                                  "routes only (one dump of 100,000 takes it about 10 s).")
    return sections


def links_part(s: Settings) -> list[Section]:
    if not netns_capable("links"):
        return []
    notes: list[str] = []
    pyroute2 = optional_import("pyroute2", notes)
    count = 2 * VETH_PAIRS + BASE_LINKS
    with bench_netns() as netns, ExitStack() as stack:
        load_veths(netns, VETH_PAIRS, s.workdir)
        route = stack.enter_context(rtnl.Route(netns))
        contenders = [
            Dumper(FLOOR_RECV, "floor", recv_floor(rtnl_floor_socket(netns, stack),
                                                   LINKS_REQUEST)),
            Dumper(LW_LINKS, "latchwire", records_dump(route.links)),
            Dumper(IP_JSON_LINKS, "peer", records_dump(partial(ip_json, netns, "link",
                                                               "show")))]
        if pyroute2:
            ipr = pyroute2.IPRoute(netns=netns)
            stack.callback(ipr.close)
            contenders.append(Dumper(PYROUTE2_LINKS, "peer", records_dump(ipr.get_links)))
        section = decoded_section(s, "links", f"decoded links, {count:,} links", contenders,
                                  count, "link")
        lw = section.row(LW_LINKS)
        add_guard(section, f"{LW_LINKS} / recv_into floor", section.ratios(lw)[FLOOR_RECV],
                  DECODED_GUARD)
        section.conclusions += [compare_sentence(lw, r) for r in section.rows
                                if r.role == "peer"]
        add_footprint(section, LW_LINKS, footprint(route.links), "link")
    section.notes += [*notes, *decoded_notes(s, netns, "link"), (
        f"Setup: {VETH_PAIRS:,} veth pairs (left down) added with one `ip -n NS -batch FILE`, "
        f"beside lo and the namespace's own veth pair: {count:,} links, each with its 64-bit "
        "statistics. Each contender sends its own request: latchwire and the floor an "
        "RTM_GETLINK dump with a bare ifinfomsg, ip and pyroute2 theirs (ip asks for VF "
        "information too, which veths do not have).")]
    return [section]


def decoded_notes(s: Settings, netns: str, noun: str) -> list[str]:
    """How the routes and links parts measure, said in their last section."""
    budget = RTNL_BUDGET_QUICK if s.quick else DUMP_BUDGET
    return [
        f"Floor: a plain Python socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) made in "
        f"the namespace ({netns}, deleted at the end) by a libc setns() hop, with "
        "NETLINK_GET_STRICT_CHK on as latchwire.rtnl's sockets have it, connected to the "
        "kernel; it sends the very request latchwire sends and loops recv_into() a "
        f"preallocated {RECV_BUFFER // 1024} KiB bytearray up to NLMSG_DONE: the kernel's "
        "work and the copies, nothing decoded.",
        "latchwire: one rtnl.Route(netns=NAME) made once; a dump is one call, which returns "
        f"a list of {noun} records decoded by the compiled core in one pass (C fields; a "
        "field's Python object is made when it is read).",
        "ip -j: `ip -n NAME -j ...` run as a subprocess for each dump (fork and exec, its own "
        "dump, JSON printed) and its output given to json.loads: what a script that shells "
        "out pays. pyroute2: IPRoute(netns=NAME) made once, its dump decoded into nested "
        "dicts, as its users get them.",
        "Memory: one more call, untimed, under tracemalloc: the peak of Python's "
        "allocations during it against sys.getsizeof of the returned list and records. "
        "Buffers allocated beforehand (the socket's receive buffer) and the kernel's socket "
        "memory are not counted.",
        "Each contender made a warm-up dump first; a dump shorter than the batch "
        f"({s.batch * 1e3:.0f} ms) is repeated to fill one, a longer one is a batch of its "
        f"own, and each contender runs in as many of the {s.rounds} interleaved rounds as "
        f"its batches fit in {budget:g} s ('rounds' column). Every dump is checked to bring "
        f"every {noun} loaded.",
    ]


PARTS: dict[str, Callable[[Settings], list[Section]]] = {
    "filelock": filelock_part,
    "lockspace": lockspace_part,
    "rwlock": rwlock_part,
    "mutex": rwlock_part,  # the same part: run once however named
    "objects": objects_part,
    "dump": dump_part,
    "routes": routes_part,
    "links": links_part,
}


# ---------------------------------------------------------------------------
# Reporting


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    versions = {}
    for name in PEERS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu_model": cpu_model(),
        "latchwire": latchwire.__version__,
        "latchwire_core": _core.__file__,
        "peers": versions,
    }


def fmt(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(section: Section) -> tuple[list[str], list[list[str]]]:
    """The header and cells of section's table."""
    header = ["contender", f"median {section.unit}", "min",
              *(f"/ {f.removeprefix('floor: ')}" for f in section.floors), *section.columns]
    cells = [[r.name, fmt(r.median), fmt(r.min),
              *(f"{v:.2f}" for v in section.ratios(r).values()),
              *(fmt(r.details[d]) for d in section.columns)]
             for r in section.rows]
    return header, cells


def render_text(section: Section) -> str:
    header, cells = table(section)
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(fields: list[str]) -> str:
        return "  ".join(f.ljust(w) if i == 0 else f.rjust(w)
                         for i, (f, w) in enumerate(zip(fields, widths, strict=True)))

    out = [f"== {section.part}: {section.title} ==", line(header),
           line(["-" * w for w in widths]), *(line(c) for c in cells), ""]
    out += [f"  {c}" for c in section.conclusions]
    out += [f"  note: {n}" for n in section.notes]
    return "\n".join(out) + "\n"


def guard_table(sections: list[Section]) -> tuple[list[str], list[list[str]]]:
    """The header and cells of the regression guards' table, every section's."""
    header = ["guard", "measured in", "value", "limit", "verdict"]
    cells = [[g.name, g.section, *g.describe(), g.verdict]
             for sec in sections for g in sec.guards]
    return header, cells


def render_guards(sections: list[Section]) -> str:
    header, cells = guard_table(sections)
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(fields: list[str]) -> str:
        return "  ".join(f.ljust(w) if i < 2 else f.rjust(w)
                         for i, (f, w) in enumerate(zip(fields, widths, strict=True)))

    if cells:
        out = ["== regression guards (ratios within this run; only a far-off value fails) ==",
               line(header), line(["-" * w for w in widths]), *(line(c) for c in cells), ""]
    else:
        out = ["== regression guards: none measured ==", ""]
    out += [f"  correctness check FAILED: {sec.part}: {sec.title}"
            for sec in sections if sec.failed]
    return "\n".join(out) + "\n"


def render_markdown(sections: list[Section], info: dict[str, object]) -> str:
    out = ["# latchwire benchmarks", "",
           f"{info['cpu_model']}, {info['nproc']} CPUs, Linux {info['kernel']}, {info['python']}",
           ""]
    header, cells = guard_table(sections)
    if cells:
        out += ["## Regression guards", "",
                "| " + " | ".join(header) + " |",
                "|" + "|".join([":---", ":---", "---:", "---:", ":---"]) + "|",
                *("| " + " | ".join(c) + " |" for c in cells), ""]
    out += [f"- correctness check FAILED: {sec.part}: {sec.title}"
            for sec in sections if sec.failed]
    for section in sections:
        header, cells = table(section)
        out += [f"## {section.part}: {section.title}", "",
                "| " + " | ".join(header) + " |",
                "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|",
                *("| " + " | ".join(c) + " |" for c in cells), ""]
        out += [f"- {c}" for c in section.conclusions]
        out += [f"- *{n}*" for n in section.notes]
        out.append("")
    return "\n".join(out)


def to_json(sections: list[Section], info: dict[str, object], s: Settings) -> dict[str, object]:
    return {
        "machine": info,
        "settings": {"quick": s.quick, "rounds": s.rounds, "batch_s": s.batch,
                     "contended_rounds": s.contended_rounds, "duration_s": s.duration},
        "sections": [{
            "part": sec.part,
            "title": sec.title,
            "floors": sec.floors,
            "contenders": {r.name: {
                "role": r.role,
                "unit": sec.unit,
                "median": r.median,
                "min": r.min,
                "samples": r.samples,
                "ratio_vs_floor": sec.ratios(r),
                "details": r.details,
            } for r in sec.rows},
            "conclusions": sec.conclusions,
            "notes": sec.notes,
            "failed": sec.failed,
            "guards": [guard_json(g) for g in sec.guards],
        } for sec in sections],
        "guards": [guard_json(g) for sec in sections for g in sec.guards],
        "ok": passed(sections),
    }


def guard_json(g: Guard) -> dict[str, object]:
    return {"name": g.name, "section": g.section, "value": g.value, "limit": g.limit,
            "at_most": g.at_most, "unit": g.unit, "ok": g.ok}


def passed(sections: list[Section]) -> bool:
    """No correctness check failed and every regression guard held."""
    return not any(sec.failed or not all(g.ok for g in sec.guards) for sec in sections)


# ---------------------------------------------------------------------------
# Chart

ROLE_COLOURS = {"floor": "#9e9e9e", "latchwire": "#1f77b4", "peer": "#ff7f0e"}


def plot(sections: list[Section], info: dict[str, object], path: Path) -> None:
    """One horizontal bar chart per section, median per contender, log scale."""
    import matplotlib  # only with --plot: not needed otherwise

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not sections:
        raise SystemExit("--plot: nothing was measured")
    columns = 2 if len(sections) > 1 else 1
    grid = [sections[i:i + columns] for i in range(0, len(sections), columns)]
    heights = [max(len(sec.rows) for sec in line) * 0.32 + 1.3 for line in grid]
    fig, axes = plt.subplots(len(grid), columns, squeeze=False,
                             figsize=(9.5 * columns, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights})
    for line, ax_line in zip(grid, axes, strict=True):
        for k, ax in enumerate(ax_line):
            if k >= len(line):
                ax.set_visible(False)
                continue
            sec = line[k]
            rows = sec.rows[::-1]  # first row on top
            medians = [r.median for r in rows]
            bars = ax.barh(range(len(rows)), medians,
                           color=[ROLE_COLOURS.get(r.role, "#cccccc") for r in rows])
            ax.set_xscale("log")
            ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=8)
            for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
                if r.role == "latchwire":
                    tick.set_fontweight("bold")
            ax.bar_label(bars, [fmt(m) for m in medians], padding=3, fontsize=7)
            ax.set_xlim(min(medians) / 2, max(medians) * 4)
            better = "higher" if sec.unit.endswith("/s") else "lower"
            ax.set_xlabel(f"median {sec.unit}, log scale ({better} is better)", fontsize=8)
            ax.tick_params(axis="x", which="both", labelsize=7)
            ax.set_title(f"{sec.part}: {sec.title}", fontsize=9, loc="left")
            ax.grid(axis="x", which="major", alpha=0.3)
    fig.legend(handles=[Patch(color=c, label=role) for role, c in ROLE_COLOURS.items()],
               loc="upper right", ncols=3, fontsize=9, frameon=False)
    fig.suptitle(f"latchwire against peers and floors: {info['cpu_model']}, "
                 f"{info['usable_cpus']} CPUs, Linux {info['kernel']}, {info['python']}",
                 x=0.01, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (sum(heights) + 0.8)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f"what to compare: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="write the results as a Markdown table")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="draw a chart of the results, one panel per comparison "
                             "(needs matplotlib)")
    args = parser.parse_args(argv)
    if unknown := [p for p in args.parts if p not in PARTS]:
        parser.error(f"unknown part {', '.join(map(repr, unknown))}; "
                     f"known parts: {', '.join(PARTS)}")

    info = machine()
    print(f"{info['cpu_model']}, {info['nproc']} CPUs, Linux {info['kernel']}, "
          f"{info['python']}, latchwire {info['latchwire']}\n", flush=True)
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="latchwire-bench-") as tmp:
        s = Settings.for_run(args.quick, Path(tmp))
        for part in dict.fromkeys(PARTS[p] for p in args.parts or PARTS):  # aliases once
            for section in part(s):
                print(render_text(section), flush=True)
                sections.append(section)
    print(render_guards(sections), flush=True)
    if args.json:
        results = to_json(sections, info, s)
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if args.markdown:
        args.markdown.write_text(render_markdown(sections, info))
    if args.plot:
        plot(sections, info, args.plot)
    ok = passed(sections)
    print("bench: all guards and checks held" if ok else
          "bench: FAILED: a regression guard or a correctness check (see above)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
