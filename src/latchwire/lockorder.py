"""The lock-order checker, in the spirit of the kernel's lockdep.

Off by default: ``enable()``, or ``LATCHWIRE_LOCKDEP=1`` in the environment
when latchwire is imported, turns it on. Locks belong to *classes*: a Mutex or
RWLock's class is its ``name`` (every lock of one name is one class), or where
it was created; a FileLock's is its lock file; a LockSpace's leases share the
lockspace's class.

While a thread holds locks of classes A1..An and takes one of class B, the
checker records the orders Ai -> B with the thread and the sites of their
first sighting. An acquisition that would close a cycle of any length (B was
seen, directly or through other classes, before some Ai) raises
``LockOrderError`` before it blocks, naming every class of the cycle with the
thread and sites of each order: the inversion is reported the first time it
happens, whether or not the threads involved would have deadlocked this time.
It also reports a thread reading an RWLock it already reads while the lock
prefers writers (a waiting writer would deadlock it). Try-locks
(``blocking=False``) are not checked, since they cannot deadlock, but what they
take counts as held.

The fast path is compiled: an order already seen costs a set lookup per lock
held. Only a new order comes here, under a lock of this module's own.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any, NamedTuple

from latchwire import _core
from latchwire._core import _Held
from latchwire.errors import LockOrderError

__all__ = ["Order", "assert_held", "assert_none_held", "disable", "enable", "enabled",
           "forbid_nesting", "held", "orders", "reset"]


class Order(NamedTuple):
    """The first sighting of ``first`` held while ``then`` was taken."""

    first: str
    then: str
    thread: str
    first_site: str  # where the thread had taken ``first``
    then_site: str  # where it took ``then``

    def __str__(self) -> str:
        return (f"{self.first!r} -> {self.then!r}: thread {self.thread!r} took {self.then!r} "
                f"at {self.then_site} holding {self.first!r} (taken at {self.first_site})")


_guard = threading.Lock()
_class_ids: dict[str, int] = {}
_class_names: list[str] = []
_orders: dict[int, dict[int, Order]] = {}  # first class -> then class -> first sighting


def enable() -> None:
    """Turn the checker on for acquisitions from now on."""
    _core._lockdep_enable(True, _new_edge, _class_id, _recursive_read, _nested)


def disable() -> None:
    """Turn the checker off (what it learnt is kept)."""
    _core._lockdep_enable(False)


def enabled() -> bool:
    """Whether the checker is on."""
    return bool(_core.lockdep_enabled())


def reset() -> None:
    """Forget every order seen (the classes and the held lists stay)."""
    with _guard:
        _orders.clear()
        _core._lockdep_forget()


def orders() -> list[Order]:
    """Every order seen so far, oldest class first."""
    with _guard:
        return [order for then in _orders.values() for order in then.values()]


def held() -> list[tuple[Any, str, str]]:
    """The calling thread's held locks, oldest first: ``(lock, mode, "file:line")``.

    Only what was taken while the checker was on.
    """
    return [(h.lock, "read" if h.read else "exclusive", h.site) for h in _core._lockdep_held()]


def assert_held(lock: object) -> None:
    """AssertionError unless the calling thread holds lock (as far as the checker saw)."""
    if not any(h.lock is lock for h in _core._lockdep_held()):
        raise AssertionError(f"{lock!r} is not held by this thread")


def assert_none_held() -> None:
    """AssertionError if the calling thread holds any lock (as far as the checker saw)."""
    taken = held()
    if taken:
        raise AssertionError("this thread holds " + ", ".join(
            f"{lock!r} (taken at {site})" for lock, _, site in taken))


def forbid_nesting(lockclass: str) -> None:
    """Report a thread taking a lock of lockclass while it holds another of that class.

    Locks of one class are otherwise free to nest (in an order the checker
    cannot see); for classes whose locks must never nest, such as the objects
    of an ObjectList, the first nesting is reported as LockOrderError.
    """
    _core._lockdep_unnestable(_class_id(lockclass))


def _class_id(key: str) -> int:
    """The id of the class named key, made on first use (called by the core)."""
    with _guard:
        cls = _class_ids.get(key)
        if cls is None:
            cls = _class_ids[key] = len(_class_names)
            _class_names.append(key)
        return cls


def _path(start: int, goal: int) -> list[int] | None:
    """Classes start, ..., goal along recorded orders, or None. Caller: holds _guard."""
    previous: dict[int, int] = {start: start}
    frontier = [start]
    while frontier:
        following: list[int] = []
        for cls in frontier:
            for then in _orders.get(cls, ()):
                if then in previous:
                    continue
                previous[then] = cls
                if then == goal:
                    path = [goal]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1]
                following.append(then)
        frontier = following
    return None


def _new_edge(held: _Held, cls: int, site: str) -> None:
    """The calling thread, holding held, takes a lock of class cls at site, an
    order not checked before (called by the core): record it, or raise
    LockOrderError if it closes a cycle."""
    thread = threading.current_thread().name
    first, then = _class_names[held.cls], _class_names[cls]
    order = Order(first, then, thread, held.site, site)
    with _guard:
        cycle = _path(cls, held.cls)
        if cycle is None:
            _orders.setdefault(held.cls, {}).setdefault(cls, order)
            return
        seen = [_orders[a][b] for a, b in itertools.pairwise(cycle)]
    names = " -> ".join(repr(_class_names[c]) for c in [held.cls, *cycle])
    raise LockOrderError(
        f"lock order inversion: thread {thread!r} takes {then!r} at {site} while holding "
        f"{first!r} (taken at {held.site}), but the opposite order was seen before.\n"
        f"  cycle: {names}\n"
        f"  now:  {order}\n"
        + "".join(f"  seen: {s}\n" for s in seen))


def _nested(held: _Held, site: str) -> None:
    """The calling thread takes a second lock of an unnestable class (called by the core)."""
    name = _class_names[held.cls]
    raise LockOrderError(
        f"nested {name!r}: thread {threading.current_thread().name!r} takes a {name!r} lock at "
        f"{site} while it holds another ({held.lock!r}, taken at {held.site}); two threads "
        "doing this in opposite orders deadlock")


def _recursive_read(held: _Held, site: str) -> None:
    """The calling thread reads again an RWLock it reads (called by the core)."""
    name = _class_names[held.cls]
    raise LockOrderError(
        f"recursive read: thread {threading.current_thread().name!r} reads {name!r} at {site} "
        f"while it already reads it (since {held.site}); the lock prefers writers, so a "
        "writer arriving in between would wait for this thread, and this thread for it")


if os.environ.get("LATCHWIRE_LOCKDEP") == "1":
    enable()
