"""pytest-benchmark: the lock-order checker's cost, off and on, per acquire+release.

Run with ``python -m pytest bench/test_bench_checker.py -q --benchmark-only``.
Every round takes two latchwire Mutexes nested ('bench.outer', then
'bench.inner') and releases them innermost first: always that order, so from
the second round on the checker has seen it and only checks it. One round is
two acquire+release pairs; the floor does the same with two
``threading.Lock``\\ s. With the checker off (enabled once, then disabled:
what is left of it in the hot path) and on. Each test sets the checker as it
needs and leaves it off and emptied. pytest-benchmark runs the tests one after
another; for figures to quote, with the checker never enabled as well and the
extra ns per acquisition worked out, use ``bench/compare.py rwlock``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

import latchwire
from latchwire import lockorder

Benchmark = Callable[[Callable[[], object]], object]

pytestmark = pytest.mark.benchmark(group="lock-order checker, 2 nested locks per round")


@pytest.fixture
def checker() -> Iterator[None]:
    """Leaves the checker off and without the orders a test taught it."""
    try:
        yield
    finally:
        lockorder.disable()
        lockorder.reset()


def nested(outer_acquire: Callable[[], object], outer_release: Callable[[], object],
           inner_acquire: Callable[[], object], inner_release: Callable[[], object]
           ) -> Callable[[], None]:
    """One round: outer then inner taken, inner then outer released."""
    def op() -> None:
        outer_acquire()
        inner_acquire()
        inner_release()
        outer_release()

    return op


def mutex_pair() -> tuple[latchwire.Mutex, latchwire.Mutex, Callable[[], None]]:
    """Two Mutexes of their own classes, and a round of them nested."""
    outer, inner = latchwire.Mutex("bench.outer"), latchwire.Mutex("bench.inner")
    return outer, inner, nested(outer.acquire, outer.release, inner.acquire, inner.release)


def test_floor_threading_locks(benchmark: Benchmark) -> None:
    outer, inner = threading.Lock(), threading.Lock()
    benchmark(nested(outer.acquire, outer.release, inner.acquire, inner.release))
    assert not outer.locked() and not inner.locked()


def test_mutexes_checker_off(benchmark: Benchmark, checker: None) -> None:
    lockorder.enable()
    lockorder.disable()
    outer, inner, op = mutex_pair()
    benchmark(op)
    assert not outer.locked() and not inner.locked()
    assert lockorder.orders() == []  # off: nothing learnt


def test_mutexes_checker_on(benchmark: Benchmark, checker: None) -> None:
    lockorder.enable()
    outer, inner, op = mutex_pair()
    benchmark(op)
    assert not outer.locked() and not inner.locked()
    assert [(o.first, o.then) for o in lockorder.orders()] == [("bench.outer", "bench.inner")]
