"""The ``objects`` part: latchwire.ObjectList against a dict and a threading.Lock.

It times lookups (find_by_uuid, find_by_name, find_by_id, each handed back
locked and unlocked at once) among 100 and then 100,000 objects against a dict
lookup with and without a threading.Lock acquire+release, and add+remove of one
more object against the same two index entries made and dropped under a
threading.Lock, in ns/op. The larger size's sections say how each figure
changed from the smaller's (1.00x is constant time) and guard the growth of
latchwire's ratio to its floor. The workloads are shared with
test_bench_objects.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from measure import Section, Settings, Timed, add_guard, add_scaling, per_op_rows

import latchwire

# The regression guard's limit (see measure.Guard).
OBJECTS_GUARD = 10.0  # find_by_uuid + unlock, at most this times dict + threading.Lock

OBJECT_COUNTS = (100, 100_000)
LOOKUP_KEYS = 1000  # keys each lookup loop cycles through
DICT_LOCK_FLOOR = "floor: dict lookup + threading.Lock"
DICT_FLOOR = "floor: dict lookup"
FIND_UUID = "find_by_uuid + unlock"
CHANGED = 1000  # objects added and removed in turn, one at a time
ADD_REMOVE = "add + unlock + remove"
DICT_CHANGE_FLOOR = "floor: 2 dict entries made + dropped, threading.Lock"


K = TypeVar("K")


def cycling(keys: Sequence[K], op: Callable[[K], object]) -> Callable[[int], float]:
    """run(n): op(key) n times, cycling through keys; seconds."""
    def run(n: int) -> float:
        start = time.perf_counter()
        done = 0
        while done < n:
            for key in keys[:n - done]:
                op(key)
            done += min(len(keys), n - done)
        return time.perf_counter() - start
    return run


# The workloads, shared with test_bench_objects.py.

def object_list(count: int) -> latchwire.ObjectList[latchwire.Lockable]:
    """A list of count objects: "uuid-I", "name-I", active with id I, unlocked."""
    doms: latchwire.ObjectList[latchwire.Lockable] = latchwire.ObjectList("bench")
    for i in range(count):
        obj = doms.add(latchwire.Lockable(f"uuid-{i}", f"name-{i}"))
        doms.activate(obj, i)
        obj.unlock()
    return doms


def picked(count: int) -> list[int]:
    """The indexes of LOOKUP_KEYS of count objects picked at random (all, if fewer)."""
    return random.Random(count).sample(range(count), min(count, LOOKUP_KEYS))


def found(find: Callable[[K], latchwire.Lockable | None]) -> Callable[[K], None]:
    """A lookup by find that must hand an object back locked; it is unlocked at once."""
    def op(key: K) -> None:
        obj = find(key)
        assert obj is not None
        obj.unlock()
    return op


def dict_and_lock(locks: dict[str, threading.Lock]) -> Callable[[str], None]:
    """The lookup floor: look a threading.Lock up in locks, acquire it, release it."""
    def op(key: str) -> None:
        lock = locks[key]
        lock.acquire()
        lock.release()
    return op


def extra_objects() -> list[latchwire.Lockable]:
    """CHANGED objects not in any list, their uuids and names unlike the list's."""
    return [latchwire.Lockable(f"extra-uuid-{i}", f"extra-name-{i}") for i in range(CHANGED)]


def add_remove(doms: latchwire.ObjectList[latchwire.Lockable]
               ) -> Callable[[latchwire.Lockable], None]:
    """add() (handed back locked), unlock, remove(): doms keeps its size."""
    def op(obj: latchwire.Lockable) -> None:
        doms.add(obj)
        obj.unlock()
        doms.remove(obj)
    return op


def insert_delete(count: int) -> Callable[[latchwire.Lockable], None]:
    """The change floor: in two dicts of count entries (uuid, name), make an object's two
    entries under a threading.Lock, then drop them under it again."""
    lock = threading.Lock()
    by_uuid: dict[Hashable, object] = {f"uuid-{i}": None for i in range(count)}
    by_name: dict[str, object] = {f"name-{i}": None for i in range(count)}

    def op(obj: latchwire.Lockable) -> None:
        with lock:
            by_uuid[obj.uuid] = obj
            by_name[obj.name] = obj
        with lock:
            del by_uuid[obj.uuid]
            del by_name[obj.name]
    return op


def objects_sections(s: Settings, count: int) -> list[Section]:
    """Over a list of count objects: lookups, and adding then removing one more."""
    doms = object_list(count)
    return [lookup_section(s, doms, count), change_section(s, doms, count)]


def lookup_section(s: Settings, doms: latchwire.ObjectList[latchwire.Lockable],
                   count: int) -> Section:
    """find_by_uuid/name/id (and the unlock) among count objects "uuid-I", "name-I" with
    id I, against dict + Lock floors."""
    picks = picked(count)
    locks = {f"uuid-{i}": threading.Lock() for i in range(count)}  # as many as objects
    uuids = [f"uuid-{i}" for i in picks]
    contenders = [
        Timed(DICT_FLOOR, "floor", cycling(uuids, locks.__getitem__)),
        Timed(DICT_LOCK_FLOOR, "floor", cycling(uuids, dict_and_lock(locks))),
        Timed(FIND_UUID, "latchwire", cycling(uuids, found(doms.find_by_uuid))),
        Timed("find_by_name + unlock", "latchwire",
              cycling([f"name-{i}" for i in picks], found(doms.find_by_name))),
        Timed("find_by_id + unlock", "latchwire", cycling(picks, found(doms.find_by_id))),
    ]
    rows = per_op_rows(contenders, s, 1e9, "lookups/s")
    section = Section("objects", f"lookups, {count:,} objects", "ns/op", rows,
                      [DICT_LOCK_FLOOR], columns=["lookups/s"])
    add_guard(section, f"{FIND_UUID} / dict + threading.Lock",
              section.ratios(section.row(FIND_UUID))[DICT_LOCK_FLOOR], OBJECTS_GUARD)
    for row in rows:
        if row.role == "latchwire":
            section.conclusions.append(
                f"{row.name}: {section.ratios(row)[DICT_LOCK_FLOOR]:.2f}x a dict lookup plus "
                "a threading.Lock acquire/release")
    section.notes += [
        f"Each loop cycles through {len(picks)} keys picked at random among the {count:,}. "
        "A lookup takes the list's read lock, reads the index, lets the list lock go, locks "
        "the object (a latchwire Mutex) and checks it is not being removed; the unlock is "
        "part of each operation, as it is of the dict + threading.Lock floor.",
        f"Batches of about {s.batch * 1e3:.0f} ms, {s.rounds} rounds, interleaved.",
    ]
    return section


def change_section(s: Settings, doms: latchwire.ObjectList[latchwire.Lockable],
                   count: int) -> Section:
    """add() (handed back locked), unlock, remove() of one more object among count, against
    the same two index entries made and dropped under a threading.Lock."""
    extra = extra_objects()
    contenders = [Timed(DICT_CHANGE_FLOOR, "floor", cycling(extra, insert_delete(count))),
                  Timed(ADD_REMOVE, "latchwire", cycling(extra, add_remove(doms)))]
    rows = per_op_rows(contenders, s, 1e9, "changes/s")
    section = Section("objects", f"add+remove, {count:,} objects present", "ns/op", rows,
                      [DICT_CHANGE_FLOOR], columns=["changes/s"])
    section.failed = len(doms) != count
    section.conclusions.append(
        f"{ADD_REMOVE}: {section.ratios(section.row(ADD_REMOVE))[DICT_CHANGE_FLOOR]:.2f}x "
        "the floor")
    section.notes += [
        f"Each operation adds one of {CHANGED} more objects (handed back locked), unlocks "
        f"it and removes it again, so the list holds {count:,} objects throughout: add() "
        "takes the list's write lock and the object's lock, checks uuid, name and id are "
        "free and enters uuid and name in their indexes; remove() marks the object under "
        "the write lock, waits out its users (none here) by locking and unlocking it, and "
        "drops its index entries under the write lock again.",
        "Floor: the same two index entries (uuid, name) made in two dicts of "
        f"{count:,} entries under a threading.Lock, then dropped under it again.",
        f"Batches of about {s.batch * 1e3:.0f} ms, {s.rounds} rounds, interleaved.",
    ]
    if section.failed:
        section.notes.append(f"FAILED: the list holds {len(doms):,} objects afterwards, "
                             f"not {count:,}.")
    return section


def objects_part(s: Settings) -> list[Section]:
    small, large = (objects_sections(s, count) for count in OBJECT_COUNTS)
    for fewer, more, guarded in zip(small, large, (FIND_UUID, ADD_REMOVE), strict=True):
        add_scaling(fewer, more, guarded, fewer.floors[0])
        more.notes.append("Every index is a dict: what grows with the number of objects "
                          "grows in the floors too (caches), not in the algorithm.")
    return [*small, *large]
