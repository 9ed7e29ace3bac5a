"""pytest-benchmark: one uncontended lease acquire+release, or one busy answer, per round.

Run with ``python -m pytest bench/test_bench_lockspace.py -q --benchmark-only``.
Each test runs for 100 and for 100,000 names; every round takes the next name
round-robin, and whatever a library needs made up front (the resource files,
one lock object per name) is made before measuring. The LockSpace under test
holds as many other resources as there are names throughout (owner
``bench-holder``, one open descriptor each; fewer, with a warning, when
RLIMIT_NOFILE's hard limit is too low), so its table is that large while it
works: acquire+release and the busy answer must not grow with it. The floors
lock one file kept open (latchwire's ``FileLock``, the bare F_OFD_SETLK pair
from Python's fcntl module) or, for the busy answer, ask the kernel (open, a
refused F_OFD_SETLK, close). pytest-benchmark runs the tests one after
another; for figures to quote, with the contenders interleaved and the ratios
worked out, use ``bench/compare.py lockspace``.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

import latchwire

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import F_OFD_SETLK, UNLCK, WRLCK
from part_lockspace import (
    ASKER,
    HOLDER,
    LOCKSPACE_COUNTS,
    descriptors_for,
    kernel_lock_attempt,
    refused,
)

COUNTS = LOCKSPACE_COUNTS  # names cycled through, as compare.py lockspace does

T = TypeVar("T")


class Benchmark(Protocol):
    """pytest-benchmark's fixture: runs op in rounds; group names the table it goes in."""

    group: str | None

    def __call__(self, op: Callable[[], object]) -> object: ...


@pytest.fixture(params=COUNTS, ids=[f"{n}-names" for n in COUNTS])
def names(request: pytest.FixtureRequest) -> list[str]:
    return [f"res-{i:06d}" for i in range(request.param)]


def in_group(benchmark: Benchmark, names: Sequence[str]) -> None:
    """Put an acquire+release test in the table of its number of names."""
    benchmark.group = f"lockspace acquire+release, {len(names):,} names"


@dataclass
class Held:
    """A LockSpace, and the names it holds for HOLDER."""

    space: latchwire.LockSpace
    names: list[str]


@pytest.fixture
def held(tmp_path: Path, names: list[str]) -> Iterator[Held]:
    """A LockSpace in tmp_path holding as many resources as names for HOLDER (fewer, with
    a warning, if RLIMIT_NOFILE's hard limit is too low), named "held-I"."""
    notes: list[str] = []
    with descriptors_for(len(names), notes) as count:
        for note in notes:
            warnings.warn(note, stacklevel=1)
        space = latchwire.LockSpace(tmp_path / "lockspace")
        taken = [f"held-{i:06d}" for i in range(count)]
        for name in taken:
            space.create(name)
            space.acquire(name, owner=HOLDER, autocreate=False)
        try:
            yield Held(space, taken)
            assert space.held() == [latchwire.Lease(name, "exclusive", (HOLDER,))
                                    for name in taken]
        finally:
            space.release_owner(HOLDER)


def touch_all(directory: Path, names: Sequence[str]) -> list[Path]:
    """Create directory and an empty file per name in it; their paths."""
    directory.mkdir(exist_ok=True)
    paths = [directory / name for name in names]
    for path in paths:
        path.touch()
    return paths


def round_robin(items: Sequence[T], acquire: Callable[[T], object],
                release: Callable[[T], object]) -> Callable[[], None]:
    """One acquire(item)+release(item) per call, items taken round-robin."""
    following = itertools.cycle(items).__next__

    def op() -> None:
        item = following()
        acquire(item)
        release(item)

    return op


def no_op(_: object) -> None:
    pass


def test_lockspace_autocreate(benchmark: Benchmark, names: list[str], held: Held) -> None:
    """The default: the file is created on acquire and deleted on release."""
    in_group(benchmark, names)
    fresh = [f"new-{i:06d}" for i in range(len(names))]
    benchmark(round_robin(fresh, held.space.acquire, held.space.release))
    assert sorted(os.listdir(held.space.directory or "")) == held.names


def test_lockspace_precreated(benchmark: Benchmark, names: list[str], held: Held) -> None:
    """autocreate=False on resources made once with create()."""
    in_group(benchmark, names)
    for name in names:
        held.space.create(name)
    benchmark(round_robin(names, partial(held.space.acquire, autocreate=False),
                          held.space.release))
    assert len(os.listdir(held.space.directory or "")) == len(names) + len(held.names)


def test_oslo_lockutils_lock(benchmark: Benchmark, names: list[str], tmp_path: Path) -> None:
    """``with lockutils.lock(name, external=True, lock_path=DIR)``, as oslo's users write it
    (minus its debug logging, which ``synchronized`` turns off too)."""
    lockutils = pytest.importorskip("oslo_concurrency.lockutils")
    in_group(benchmark, names)
    lock_path = str(tmp_path / "oslo")
    touch_all(tmp_path / "oslo", names)
    following = itertools.cycle(names).__next__

    def op() -> None:
        with lockutils.lock(following(), external=True, lock_path=lock_path, do_log=False):
            pass

    benchmark(op)


def test_oslo_external_lock(benchmark: Benchmark, names: list[str], tmp_path: Path) -> None:
    """``lockutils.external_lock(name, lock_path=DIR)`` made once per name."""
    lockutils = pytest.importorskip("oslo_concurrency.lockutils")
    in_group(benchmark, names)
    touch_all(tmp_path / "oslo", names)
    locks = [lockutils.external_lock(name, lock_path=str(tmp_path / "oslo")) for name in names]
    cls = type(locks[0])
    benchmark(round_robin(locks, cls.acquire, cls.release))
    assert not any(lock.acquired for lock in locks)


def test_filelock_per_name(benchmark: Benchmark, names: list[str], tmp_path: Path) -> None:
    """One ``filelock.FileLock(DIR/name)`` per name, made once."""
    filelock = pytest.importorskip("filelock")
    in_group(benchmark, names)
    locks = [filelock.FileLock(path) for path in touch_all(tmp_path / "filelock", names)]
    cls = type(locks[0])
    benchmark(round_robin(locks, cls.acquire, cls.release))
    assert not any(lock.is_locked for lock in locks)


def test_floor_latchwire_filelock(benchmark: Benchmark, names: list[str],
                                  tmp_path: Path) -> None:
    """One FileLock on one file it keeps open (names unused: the same in both groups)."""
    in_group(benchmark, names)
    lock = latchwire.FileLock(tmp_path / "floor.lock", lockfile=tmp_path / "floor.lock")

    def op() -> None:
        lock.acquire()
        lock.release()

    benchmark(op)
    assert not lock.locked


def test_floor_python_fcntl_ofd(benchmark: Benchmark, names: list[str],
                                tmp_path: Path) -> None:
    """F_OFD_SETLK lock and unlock on one open descriptor (names unused)."""
    in_group(benchmark, names)
    fd = os.open(tmp_path / "floor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    call = fcntl.fcntl

    def op() -> None:
        call(fd, F_OFD_SETLK, WRLCK)
        call(fd, F_OFD_SETLK, UNLCK)

    try:
        benchmark(op)
    finally:
        os.close(fd)


def test_lockspace_busy(benchmark: Benchmark, held: Held) -> None:
    """Another owner asks for a held name (wait=False): LockBusy, from the table."""
    benchmark.group = f"lockspace busy answer, {len(held.names):,} held"
    ask = refused(partial(held.space.acquire, owner=ASKER, autocreate=False))
    benchmark(round_robin(held.names, ask, no_op))


def test_floor_kernel_busy(benchmark: Benchmark, held: Held) -> None:
    """What the kernel alone takes to say a held file is busy: open, a refused
    F_OFD_SETLK, close."""
    benchmark.group = f"lockspace busy answer, {len(held.names):,} held"
    paths = [held.space.path(name) for name in held.names]
    benchmark(round_robin(paths, refused(kernel_lock_attempt), no_op))
