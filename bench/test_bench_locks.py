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

import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import latchwire

sys.path.insert(0, str(Path(__file__).resolve().parent))
from part_locks import RWL_VARIANTS  # as compare.py rwlock does

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


SIDES = ("read", "write")


@pytest.mark.parametrize("side", SIDES)
def test_latchwire_rwlock(benchmark: Benchmark, form: str, side: str) -> None:
    rw = latchwire.RWLock("bench.rwlock")
    benchmark(pick(form, getattr(rw, f"acquire_{side}"), getattr(rw, f"release_{side}"),
                   getattr(rw, side)))
    assert not rw.readers
    assert rw.writer is None


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("variant", RWL_VARIANTS)
def test_readerwriterlock(benchmark: Benchmark, form: str, variant: str, side: str) -> None:
    """One of the gen_rlock()/gen_wlock() objects of readerwriterlock's class variant."""
    rwlock = pytest.importorskip("readerwriterlock.rwlock")
    made = getattr(rwlock, variant)()
    lock = made.gen_rlock() if side == "read" else made.gen_wlock()
    benchmark(pick(form, lock.acquire, lock.release, as_is(lock)))
    assert not lock.locked()


@pytest.mark.parametrize("side", SIDES)
def test_fasteners(benchmark: Benchmark, form: str, side: str) -> None:
    fasteners = pytest.importorskip("fasteners")
    rw = fasteners.ReaderWriterLock()
    benchmark(pick(form, getattr(rw, f"acquire_{side}_lock"), getattr(rw, f"release_{side}_lock"),
                   getattr(rw, f"{side}_lock")))
    assert rw.owner is None
