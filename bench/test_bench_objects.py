"""pytest-benchmark: ObjectList lookups, and adding then removing an object, per round.

Run with ``python -m pytest bench/test_bench_objects.py -q --benchmark-only``.
Each test runs with 100 and with 100,000 objects in the list ("uuid-I",
"name-I", active with id I), made once per size. A lookup round finds the
next of 1,000 keys picked at random (all of them at 100 objects) and unlocks
the object it is handed back; the floor is a dict lookup and a
``threading.Lock`` acquire+release, the least a registry with per-object locks
does. A change round adds one of 1,000 more objects (handed back locked),
unlocks it and removes it again; its floor makes and drops the same two index
entries (uuid, name) in dicts as large under a ``threading.Lock``.
pytest-benchmark runs the tests one after another; for figures to quote, with
the contenders interleaved and the ratios worked out, use
``bench/compare.py objects``.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol, TypeVar

import pytest

import latchwire

COUNTS = (100, 100_000)
LOOKUP_KEYS = 1000
CHANGED = 1000

Objects = latchwire.ObjectList[latchwire.Lockable]
K = TypeVar("K")


class Benchmark(Protocol):
    """pytest-benchmark's fixture: runs op in rounds; group names the table it goes in."""

    group: str | None

    def __call__(self, op: Callable[[], object]) -> object: ...


@pytest.fixture(scope="module", params=COUNTS, ids=[f"{n}-objects" for n in COUNTS])
def doms(request: pytest.FixtureRequest) -> Objects:
    """A list of request.param objects: "uuid-I", "name-I", active with id I, unlocked."""
    objects: Objects = latchwire.ObjectList("bench")
    for i in range(request.param):
        obj = objects.add(latchwire.Lockable(f"uuid-{i}", f"name-{i}"))
        objects.activate(obj, i)
        obj.unlock()
    return objects


@pytest.fixture
def picks(doms: Objects) -> list[int]:
    """The indexes of LOOKUP_KEYS objects picked at random (all of them, if fewer)."""
    return random.Random(len(doms)).sample(range(len(doms)), min(len(doms), LOOKUP_KEYS))


def cycling(keys: Sequence[K], op: Callable[[K], object]) -> Callable[[], None]:
    """One op(key) per call, the keys taken in turn."""
    following = itertools.cycle(keys).__next__

    def run() -> None:
        op(following())

    return run


def found(find: Callable[[K], latchwire.Lockable | None]) -> Callable[[K], None]:
    """A lookup by find that must hand an object back locked; it is unlocked at once."""
    def op(key: K) -> None:
        obj = find(key)
        assert obj is not None
        obj.unlock()

    return op


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

    def op(key: str) -> None:
        lock = locks[key]
        lock.acquire()
        lock.release()

    in_group(benchmark, "lookup", doms)
    benchmark(cycling([f"uuid-{i}" for i in picks], op))
    assert not any(lock.locked() for lock in locks.values())


def extra_objects() -> list[latchwire.Lockable]:
    """CHANGED objects not in any list, their uuids and names unlike the list's."""
    return [latchwire.Lockable(f"extra-uuid-{i}", f"extra-name-{i}") for i in range(CHANGED)]


def test_add_remove(benchmark: Benchmark, doms: Objects) -> None:
    """add() (handed back locked), unlock, remove(): the list keeps its size."""
    size = len(doms)

    def op(obj: latchwire.Lockable) -> None:
        doms.add(obj)
        obj.unlock()
        doms.remove(obj)

    in_group(benchmark, "add+remove", doms)
    benchmark(cycling(extra_objects(), op))
    assert len(doms) == size


def test_floor_dict_entries_and_threading_lock(benchmark: Benchmark, doms: Objects) -> None:
    """Two dicts as large as the list's indexes: make a uuid and a name entry under a
    threading.Lock, then drop them under it again."""
    lock = threading.Lock()
    by_uuid: dict[Hashable, latchwire.Lockable] = {}
    by_name: dict[str, latchwire.Lockable] = {}
    for obj in doms:
        by_uuid[obj.uuid] = by_name[obj.name] = obj

    def op(obj: latchwire.Lockable) -> None:
        with lock:
            by_uuid[obj.uuid] = obj
            by_name[obj.name] = obj
        with lock:
            del by_uuid[obj.uuid]
            del by_name[obj.name]

    in_group(benchmark, "add+remove", doms)
    benchmark(cycling(extra_objects(), op))
    assert len(by_uuid) == len(by_name) == len(doms)
