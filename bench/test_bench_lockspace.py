"""pytest-benchmark: one uncontended lease acquire+release per round, latchwire and its peers.

Run with ``python -m pytest bench -q --benchmark-only``. Each test runs for one
name and for 10,000 names; with many names, every round takes the next name
round-robin, and whatever a library needs made up front (the resource files,
one lock object per name) is made before measuring. The floors lock one file
kept open: latchwire's ``FileLock`` and the bare F_OFD_SETLK pair from Python's
fcntl module. pytest-benchmark runs the tests one after another; for figures
to quote, with the contenders interleaved and the ratios worked out, use
``bench/compare.py lockspace``.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

import latchwire

F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
WRLCK = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
UNLCK = struct.pack("hhqqi", fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)

Benchmark = Callable[[Callable[[], object]], object]
T = TypeVar("T")


@pytest.fixture(params=[
    pytest.param(1, id="1-name",
                 marks=pytest.mark.benchmark(group="lockspace acquire+release, 1 name")),
    pytest.param(10_000, id="10000-names",
                 marks=pytest.mark.benchmark(group="lockspace acquire+release, 10,000 names")),
])
def names(request: pytest.FixtureRequest) -> list[str]:
    return [f"res-{i:05d}" for i in range(request.param)]


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


@pytest.fixture
def lockspace(tmp_path: Path) -> Iterator[latchwire.LockSpace]:
    space = latchwire.LockSpace(tmp_path / "lockspace")
    yield space
    assert space.held() == []


def test_lockspace_autocreate(benchmark: Benchmark, names: list[str],
                              lockspace: latchwire.LockSpace) -> None:
    """The default: the file is created on acquire and deleted on release."""
    benchmark(round_robin(names, lockspace.acquire, lockspace.release))
    assert os.listdir(lockspace.directory or "") == []


def test_lockspace_precreated(benchmark: Benchmark, names: list[str],
                              lockspace: latchwire.LockSpace) -> None:
    """autocreate=False on resources made once with create()."""
    for name in names:
        lockspace.create(name)

    def acquire(name: str) -> None:
        lockspace.acquire(name, autocreate=False)

    benchmark(round_robin(names, acquire, lockspace.release))
    assert len(os.listdir(lockspace.directory or "")) == len(names)


def test_oslo_lockutils_lock(benchmark: Benchmark, names: list[str], tmp_path: Path) -> None:
    """``with lockutils.lock(name, external=True, lock_path=DIR)``, as oslo's users write it
    (minus its debug logging, which ``synchronized`` turns off too)."""
    lockutils = pytest.importorskip("oslo_concurrency.lockutils")
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
    touch_all(tmp_path / "oslo", names)
    locks = [lockutils.external_lock(name, lock_path=str(tmp_path / "oslo")) for name in names]
    cls = type(locks[0])
    benchmark(round_robin(locks, cls.acquire, cls.release))
    assert not any(lock.acquired for lock in locks)


def test_filelock_per_name(benchmark: Benchmark, names: list[str], tmp_path: Path) -> None:
    """One ``filelock.FileLock(DIR/name)`` per name, made once."""
    filelock = pytest.importorskip("filelock")
    locks = [filelock.FileLock(path) for path in touch_all(tmp_path / "filelock", names)]
    cls = type(locks[0])
    benchmark(round_robin(locks, cls.acquire, cls.release))
    assert not any(lock.is_locked for lock in locks)


def test_floor_latchwire_filelock(benchmark: Benchmark, names: list[str],
                                  tmp_path: Path) -> None:
    """One FileLock on one file it keeps open (names unused: the same in both groups)."""
    lock = latchwire.FileLock(tmp_path / "floor.lock", lockfile=tmp_path / "floor.lock")

    def op() -> None:
        lock.acquire()
        lock.release()

    benchmark(op)
    assert not lock.locked


def test_floor_python_fcntl_ofd(benchmark: Benchmark, names: list[str],
                                tmp_path: Path) -> None:
    """F_OFD_SETLK lock and unlock on one open descriptor (names unused)."""
    fd = os.open(tmp_path / "floor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    call = fcntl.fcntl

    def op() -> None:
        call(fd, F_OFD_SETLK, WRLCK)
        call(fd, F_OFD_SETLK, UNLCK)

    try:
        benchmark(op)
    finally:
        os.close(fd)
