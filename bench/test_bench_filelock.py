"""pytest-benchmark: one uncontended acquire+release per round, for latchwire and its peers.

Run with ``python -m pytest bench -q --benchmark-only``. Every test is one
``benchmark(...)`` of a single acquire+release on a lock object made once,
its lock file kept in pytest's tmp_path. The ``floor`` test makes the same two
kernel calls latchwire makes (F_OFD_SETLK write lock, then unlock) from
Python's fcntl module on an open descriptor: nothing written in Python can do
less. pytest-benchmark runs the tests one after another; for figures to quote,
with the contenders interleaved and the ratios worked out, use
``bench/compare.py``.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import latchwire

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import F_OFD_SETLK, UNLCK, WRLCK  # the floor's calls, as compare.py filelock's

Benchmark = Callable[[Callable[[], object]], object]

pytestmark = pytest.mark.benchmark(group="filelock uncontended acquire+release")


@pytest.fixture
def lock(tmp_path: Path) -> Iterator[latchwire.FileLock]:
    lock = latchwire.FileLock(tmp_path / "data")
    yield lock
    assert not lock.locked


def test_latchwire_acquire_release(benchmark: Benchmark, lock: latchwire.FileLock) -> None:
    def op() -> None:
        lock.acquire()
        lock.release()

    benchmark(op)


def test_latchwire_with(benchmark: Benchmark, lock: latchwire.FileLock) -> None:
    def op() -> None:
        with lock:
            pass

    benchmark(op)


def test_latchwire_shared_acquire_release(benchmark: Benchmark,
                                          lock: latchwire.FileLock) -> None:
    def op() -> None:
        lock.acquire(shared=True)
        lock.release()

    benchmark(op)


def test_floor_python_fcntl_ofd(benchmark: Benchmark, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "floor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    call = fcntl.fcntl

    def op() -> None:
        call(fd, F_OFD_SETLK, WRLCK)
        call(fd, F_OFD_SETLK, UNLCK)

    try:
        benchmark(op)
    finally:
        os.close(fd)


def test_filelock(benchmark: Benchmark, tmp_path: Path) -> None:
    filelock = pytest.importorskip("filelock")
    lock = filelock.FileLock(tmp_path / "filelock.lock")

    def op() -> None:
        lock.acquire()
        lock.release()

    benchmark(op)
    assert not lock.is_locked


def test_fasteners(benchmark: Benchmark, tmp_path: Path) -> None:
    fasteners = pytest.importorskip("fasteners")
    lock = fasteners.InterProcessLock(tmp_path / "fasteners.lock")

    def op() -> None:
        lock.acquire()
        lock.release()

    benchmark(op)
    assert not lock.acquired


def test_portalocker(benchmark: Benchmark, tmp_path: Path) -> None:
    portalocker = pytest.importorskip("portalocker")
    # Blocking flags: the kernel waits (no polling), as latchwire's does.
    lock = portalocker.Lock(tmp_path / "portalocker.lock",
                            flags=portalocker.LockFlags.EXCLUSIVE, fail_when_locked=False)

    def op() -> None:
        lock.acquire()
        lock.release()

    benchmark(op)
    assert lock.fh is None
