"""pytest-benchmark: ObjectList lookups, and adding then removing an object, per round.

Run with ``python -m pytest bench/test_bench_objects.py -q --benchmark-only``.
Each test runs with 100 and with 100,000 objects in the list ("uuid-I",
"name-I", active with id I), made once per size. A lookup round finds the
next of 1,000 keys picked at random (all of them at 100 objects) and unlocks
the object it is handed back; the floor is a dict lookup and a
``threading.Lock`` acquire+release, the least a registry with per-object locks
does. A change round adds one of 1,000 more objects (handed back locked),
unlocks it and removes it again; its floor makes and drops the same two index
entries (uuid, name) in dicts as large under a ``threading.Lock``. The lists
and the operations are ``bench/part_objects.py``'s. pytest-benchmark runs the tests
one after another; for figures to quote, with the contenders interleaved and
the ratios worked out, use ``bench/compare.py objects``.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

import latchwire

sys.path.insert(0, str(Path(__file__).resolve().parent))
from part_objects import (  # as compare.py objects does
    OBJECT_COUNTS,
    add_remove,
    dict_and_lock,
    extra_objects,
    found,
    insert_delete,
    object_list,
    picked,
)

Objects = latchwire.ObjectList[latchwire.Lockable]
K = TypeVar("K")


class Benchmark(Protocol):
    """pytest-benchmark's fixture: runs op in rounds; group names the table it goes in."""

    group: str | None

    def __call__(self, op: Callable[[], object]) -> object: ...


@pytest.fixture(scope="module", params=OBJECT_COUNTS,
                ids=[f"{n}-objects" for n in OBJECT_COUNTS])
def doms(request: pytest.FixtureRequest) -> Objects:
    """A list of request.param objects: "uuid-I", "name-I", active with id I, unlocked."""
    return object_list(request.param)


@pytest.fixture
def picks(doms: Objects) -> list[int]:
    """The indexes of the objects each lookup test cycles through."""
    return picked(len(doms))


def cycling(keys: Sequence[K], op: Callable[[K], object]) -> Callable[[], None]:
    """One op(key) per call, the keys taken in turn."""
    following = itertools.cycle(keys).__next__

    def run() -> None:
        op(following())

    return run


def in_group(benchmark: Benchmark, what: str, doms: Objects) -> None:
    """Put a test in the table of what it measures at doms' size."""
    benchmark.group = f"objects {what}, {len(doms):,} objects"


def lookups(benchmark: Benchmark, doms: Objects, op: Callable[[], object]) -> None:
    """Benchmark op in the lookup table of doms' size; nothing is left locked."""
    in_group(benchmark, "lookup", doms)
    benchmark(op)
    assert not any(obj.held() for obj in doms)


def test_find_by_uuid(benchmark: Benchmark, doms: Objects, picks: list[int]) -> None:
    lookups(benchmark, doms, cycling([f"uuid-{i}" for i in picks], found(doms.find_by_uuid)))


def test_find_by_name(benchmark: Benchmark, doms: Objects, picks: list[int]) -> None:
    lookups(benchmark, doms, cycling([f"name-{i}" for i in picks], found(doms.find_by_name)))


def test_find_by_id(benchmark: Benchmark, doms: Objects, picks: list[int]) -> None:
    lookups(benchmark, doms, cycling(picks, found(doms.find_by_id)))


def test_floor_dict_and_threading_lock(benchmark: Benchmark, doms: Objects,
                                       picks: list[int]) -> None:
    """A dict of as many threading.Locks as objects: look one up, acquire, release."""
    locks = {f"uuid-{i}": threading.Lock() for i in range(len(doms))}
    in_group(benchmark, "lookup", doms)
    benchmark(cycling([f"uuid-{i}" for i in picks], dict_and_lock(locks)))
    assert not any(lock.locked() for lock in locks.values())


def test_add_remove(benchmark: Benchmark, doms: Objects) -> None:
    """add() (handed back locked), unlock, remove(): the list keeps its size."""
    size = len(doms)
    in_group(benchmark, "add+remove", doms)
    benchmark(cycling(extra_objects(), add_remove(doms)))
    assert len(doms) == size


def test_floor_dict_entries_and_threading_lock(benchmark: Benchmark, doms: Objects) -> None:
    """Two dicts as large as the list's indexes: make a uuid and a name entry under a
    threading.Lock, then drop them under it again."""
    in_group(benchmark, "add+remove", doms)
    benchmark(cycling(extra_objects(), insert_delete(len(doms))))
