"""The ``filelock`` part: latchwire.FileLock against filelock, fasteners and portalocker,
and against the kernel's own cost, uncontended and contended.

Uncontended: one process, acquire+release in a loop, in µs/op: FileLock (explicit
calls and the with-statement) and each peer's plain blocking exclusive lock,
beside two floors, the F_OFD_SETLK lock+unlock pair on a descriptor kept open
issued from Python's fcntl module and from a C loop (``floor_ofd.c``, built with
``cc -O2`` at run time; skipped with a note when there is no compiler).

Contended: CONTENDING_PROCESSES processes forked from this one take turns on one
lock file, in handoffs per second with the worst and 99th-percentile waits,
FileLock against raw OFD locks (F_OFD_SETLKW) from Python; a shared counter that
disagrees with the handoffs counted (mutual exclusion broken) fails the section.
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path

from measure import (
    BARRIER_TIMEOUT,
    F_OFD_SETLK,
    F_OFD_SETLKW,
    UNLCK,
    WRLCK,
    Op,
    Row,
    Section,
    Settings,
    Timed,
    add_guard,
    fmt,
    interleave,
    optional_import,
    pair_loop,
    per_op_rows,
    percentile,
    python_floor_loop,
    with_loop,
)

import latchwire

HERE = Path(__file__).resolve().parent

CONTENDING_PROCESSES = 4
OUTSIDE_WORK = 200e-6  # seconds of busy-work between release and the next acquire
# The regression guards' limits (see measure.Guard).
FILELOCK_GUARD = 5.0  # FileLock acquire+release, at most this times the Python fcntl floor
CONTENDED_GUARD = 0.5  # contended FileLock throughput, at least this times raw OFD's


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


# Contended: processes forked from this one taking turns on one lock file.


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
