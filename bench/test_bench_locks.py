"""pytest-benchmark: one uncontended acquire+release per round of the in-process locks.

Run with ``python -m pytest bench -q --benchmark-only``. Each contender is one
test, run twice: with explicit calls (acquire()/release(), or the lock's
read/write equivalents) and with the with-statement, each in its own group.
Every lock is made once and used by the one thread; readerwriterlock's are its
``gen_rlock()``/``gen_wlock()`` objects, made once. ``threading.Lock`` is the
floor. pytest-benchmark runs the tests one after another; for figures to
quote, with the contenders interleaved and the ratios worked out, use
``bench/compare.py rwlock``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

import latchwire

Benchmark = Callable[[Callable[[], object]], object]
Op = Callable[[], object]

CALLS, WITH = "calls", "with"


@pytest.fixture(params=[
    pytest.param(CALLS, id=CALLS,
                 marks=pytest.mark.benchmark(group="in-process lock, explicit acquire+release")),
    pytest.param(WITH, id=WITH,
                 marks=pytest.mark.benchmark(group="in-process lock, with-statement")),
])
def form(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pick(form: str, acquire: Op, release: Op,
         enter: Callable[[], AbstractContextManager[object]]) -> Op:
    """One acquire+release, the way form says: explicit calls or ``with enter():``."""
    if form == CALLS:
        def calls() -> None:
            acquire()
            release()
        return calls

    def with_statement() -> None:
        with enter():
            pass
    return with_statement


def as_is(lock: AbstractContextManager[object]) -> Callable[[], AbstractContextManager[object]]:
    """enter() for a lock that is its own context manager (``with lock:``)."""
    return lambda: lock


def test_floor_threading_lock(benchmark: Benchmark, form: str) -> None:
    lock = threading.Lock()
    benchmark(pick(form, lock.acquire, lock.release, as_is(lock)))
    assert not lock.locked()


def test_threading_rlock(benchmark: Benchmark, form: str) -> None:
    lock = threading.RLock()
    benchmark(pick(form, lock.acquire, lock.release, as_is(lock)))
    assert lock.acquire(blocking=False)  # free: no hold was left behind
    lock.release()


def test_latchwire_mutex(benchmark: Benchmark, form: str) -> None:
    lock = latchwire.Mutex("bench.mutex")
    benchmark(pick(form, lock.acquire, lock.release, as_is(lock)))
    assert not lock.locked()


def test_latchwire_rwlock_read(benchmark: Benchmark, form: str) -> None:
    rw = latchwire.RWLock("bench.rwlock")
    benchmark(pick(form, rw.acquire_read, rw.release_read, rw.read))
    assert not rw.readers


def test_latchwire_rwlock_write(benchmark: Benchmark, form: str) -> None:
    rw = latchwire.RWLock("bench.rwlock")
    benchmark(pick(form, rw.acquire_write, rw.release_write, rw.write))
    assert rw.writer is None


def readerwriterlock(variant: str) -> Any:
    """A new lock of readerwriterlock's class variant (skips if not installed)."""
    rwlock = pytest.importorskip("readerwriterlock.rwlock")
    return getattr(rwlock, variant)()


def test_readerwriterlock_read_preferring_read(benchmark: Benchmark, form: str) -> None:
    reader = readerwriterlock("RWLockRead").gen_rlock()
    benchmark(pick(form, reader.acquire, reader.release, as_is(reader)))
    assert not reader.locked()


def test_readerwriterlock_read_preferring_write(benchmark: Benchmark, form: str) -> None:
    writer = readerwriterlock("RWLockRead").gen_wlock()
    benchmark(pick(form, writer.acquire, writer.release, as_is(writer)))
    assert not writer.locked()


def test_readerwriterlock_write_preferring_read(benchmark: Benchmark, form: str) -> None:
    reader = readerwriterlock("RWLockWrite").gen_rlock()
    benchmark(pick(form, reader.acquire, reader.release, as_is(reader)))
    assert not reader.locked()


def test_readerwriterlock_write_preferring_write(benchmark: Benchmark, form: str) -> None:
    writer = readerwriterlock("RWLockWrite").gen_wlock()
    benchmark(pick(form, writer.acquire, writer.release, as_is(writer)))
    assert not writer.locked()


def test_readerwriterlock_fair_read(benchmark: Benchmark, form: str) -> None:
    reader = readerwriterlock("RWLockFair").gen_rlock()
    benchmark(pick(form, reader.acquire, reader.release, as_is(reader)))
    assert not reader.locked()


def test_readerwriterlock_fair_write(benchmark: Benchmark, form: str) -> None:
    writer = readerwriterlock("RWLockFair").gen_wlock()
    benchmark(pick(form, writer.acquire, writer.release, as_is(writer)))
    assert not writer.locked()


def test_fasteners_read(benchmark: Benchmark, form: str) -> None:
    fasteners = pytest.importorskip("fasteners")
    rw = fasteners.ReaderWriterLock()
    benchmark(pick(form, rw.acquire_read_lock, rw.release_read_lock, rw.read_lock))
    assert rw.owner is None


def test_fasteners_write(benchmark: Benchmark, form: str) -> None:
    fasteners = pytest.importorskip("fasteners")
    rw = fasteners.ReaderWriterLock()
    benchmark(pick(form, rw.acquire_write_lock, rw.release_write_lock, rw.write_lock))
    assert rw.owner is None
