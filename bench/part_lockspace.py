"""The ``lockspace`` part: latchwire.LockSpace against oslo.concurrency's lockutils and
filelock, per resource name, and the busy answer against the kernel's.

Scaling. The part cycles acquire+release over 100 and then 100,000 names in one
LockSpace that holds as many other resources meanwhile, one open descriptor
each (RLIMIT_NOFILE's soft limit is raised to its hard limit for it; if the
hard limit is too low, fewer are held and the output says so), against floors
(F_OFD_SETLK on a descriptor kept open, FileLock on one file, open+fcntl+close
and create+fcntl+unlink per name) and the peers, in µs/op. It also times the
"busy" its table answers another owner against the kernel's answer (open, a
refused F_OFD_SETLK, close). The larger size's sections say how each figure
changed from the smaller's (1.00x is constant time) and guard the growth of
latchwire's ratio to its floor.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import partial
from pathlib import Path

from measure import (
    F_OFD_SETLK,
    UNLCK,
    WRLCK,
    Row,
    Section,
    Settings,
    T,
    Timed,
    add_guard,
    add_scaling,
    compare_sentence,
    optional_import,
    pair_loop,
    per_op_rows,
    python_floor_loop,
)

import latchwire

# The regression guard's limit (see measure.Guard).
LOCKSPACE_GUARD = 10.0  # LockSpace autocreate=False, at most this times open+fcntl+close

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
