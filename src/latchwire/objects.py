"""Object registries: libvirt's virDomainObjList, with per-object locks.

An ``ObjectList`` indexes ``Lockable`` objects by uuid, name and (while
active) id, each index a dict, all kept consistent under one list lock, an
``RWLock``: lookups read it, changes write it. Each object carries its own
lock; lookups hand the object back locked.

Lock order. The list lock is never held while waiting for an object's lock:
a lookup finds the object under the list lock, lets go of it, then locks the
object and checks that it is not being removed. So code holding an object may
call back into the list (``rename``, ``activate``, ``names``, a lookup of the
same object's neighbours by index...), and the only order between the two
classes is object, then list. Objects of one list must not nest: holding one
while locking another (a lookup, ``for_each``) can deadlock against a thread
doing the opposite, and with the lock-order checker on it raises
``LockOrderError`` the first time. Both locks take part in the checker under
class names of their own: ``"<name> list"``, and the objects' (by default
``"<type> object"``, or ``Lockable(lockclass=...)``).

Which lock guards what (nothing here leans on the GIL): the indices and the
list's class set change under the list lock held for writing and are read
under it; an object's ``name`` and ``id`` change under the list's write lock
while the caller holds the object (so a holder of either lock reads them
steady); its ``_removing`` flag changes under the list's write lock and is read
under that lock or under the object's own lock, after locking it. A lookup that
locked the object before ``remove()`` did may still read the flag unset: that
lookup came first, and ``remove()`` waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

from latchwire import lockorder
from latchwire._core import Mutex, RWLock

__all__ = ["Lockable", "ObjectList"]


class Lockable:
    """A registry object that carries its own lock.

    ``uuid`` identifies it for life, ``name`` until renamed through its list,
    ``id`` only while it is active (as a running domain has one); the list
    maintains ``name`` and ``id``. The lock is a Mutex, or an RWLock with
    ``rw=True`` (then ``lock()`` takes it for writing, ``lock(read=True)`` for
    reading). A lookup hands the object back locked: ``with found as obj:``
    unlocks it at the end of the block.
    """

    def __init__(self, uuid: Hashable, name: str, *, rw: bool = False,
                 lockclass: str | None = None) -> None:
        self.uuid = uuid
        self.name = name
        self.id: int | None = None
        cls = lockclass or f"{type(self).__qualname__} object"
        self._mutex: Mutex | None = None if rw else Mutex(cls)
        self._rwlock: RWLock | None = RWLock(cls) if rw else None
        self._removing = False  # set by ObjectList.remove(): lookups no longer return it

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r} uuid={self.uuid!r} id={self.id!r}>"

    @property
    def lockclass(self) -> str:
        """The lock-order checker's class of the object's lock."""
        lock = self._mutex or self._rwlock
        assert lock is not None
        return lock.lockclass

    def lock(self, read: bool = False, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the object's lock (for reading: ``read``, an RWLock only); like acquire()."""
        if self._mutex is not None:
            if read:
                raise ValueError(f"{self!r} has a Mutex: it cannot be locked for reading")
            return self._mutex.acquire(blocking, timeout)
        assert self._rwlock is not None
        if read:
            return self._rwlock.acquire_read(blocking, timeout)
        return self._rwlock.acquire_write(blocking, timeout)

    def unlock(self) -> None:
        """Release the hold the calling thread has on the object."""
        if self._mutex is not None:
            self._mutex.release()
            return
        assert self._rwlock is not None
        if self._writes():
            self._rwlock.release_write()
        else:
            self._rwlock.release_read()

    def _writes(self) -> bool:
        """Whether the calling thread holds the lock exclusively (the Mutex, or the writer)."""
        if self._mutex is not None:
            owner = self._mutex.owner
        else:
            assert self._rwlock is not None
            owner = self._rwlock.writer
        return owner is not None and owner[0] == threading.get_ident()

    def held(self) -> bool:
        """Whether the calling thread holds the object's lock, in either mode."""
        if self._writes():
            return True
        me = threading.get_ident()
        return self._rwlock is not None and any(r[0] == me for r in self._rwlock.readers)

    def __enter__(self) -> Any:
        """The object, which the caller must hold already (a lookup handed it back locked)."""
        if not self.held():
            raise RuntimeError(f"{self!r} is not locked by this thread: use a lookup, or lock()")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.unlock()


T = TypeVar("T", bound=Lockable)


class ObjectList(Generic[T]):
    """Lockable objects indexed by uuid, name and id, with O(1) lookups.

    Every lookup returns the object locked (or None); the caller unlocks it
    (``with doms.find_by_name(n) as dom:``). A lookup never returns an object
    that ``remove()`` has begun to remove. ``name`` names the list's lock
    classes for the lock-order checker.
    """

    def __init__(self, name: str = "ObjectList") -> None:
        self.name = name
        self._lock = RWLock(f"{name} list")
        self._objectclasses: set[str] = set()  # its objects' lock classes, unnestable
        self._by_uuid: dict[Hashable, T] = {}
        self._by_name: dict[str, T] = {}
        self._by_id: dict[int, T] = {}

    def __len__(self) -> int:
        with self._lock.read():
            return len(self._by_uuid)

    def __repr__(self) -> str:
        return f"<latchwire.ObjectList {self.name!r} {len(self)} objects>"

    def add(self, obj: T) -> T:
        """Add obj and return it locked (by the calling thread).

        ValueError, and nothing changes, if its uuid is present, or its name or
        (if it is active) its id belongs to another object; RuntimeError if obj
        is locked elsewhere.
        """
        with self._lock.write():
            if obj.uuid in self._by_uuid:
                raise ValueError(f"an object with uuid {obj.uuid!r} is already present")
            if obj.name in self._by_name:
                other = self._by_name[obj.name]
                raise ValueError(f"name {obj.name!r} is held by uuid {other.uuid!r}")
            if obj.id is not None and obj.id in self._by_id:
                raise ValueError(f"id {obj.id} belongs to {self._by_id[obj.id]!r}")
            # Not yet visible to anyone: a free object's lock is taken at once.
            if not obj.lock(blocking=False):
                raise RuntimeError(f"{obj!r} is locked elsewhere: cannot add it")
            obj._removing = False
            if obj.lockclass not in self._objectclasses:
                self._objectclasses.add(obj.lockclass)
                lockorder.forbid_nesting(obj.lockclass)
            self._by_uuid[obj.uuid] = obj
            self._by_name[obj.name] = obj
            if obj.id is not None:
                self._by_id[obj.id] = obj
        return obj

    def _locked(self, obj: T | None, read: bool) -> T | None:
        """obj, locked by the caller, unless absent or being removed. Caller: does not
        hold the list lock (an object's lock is never awaited under it)."""
        if obj is None:
            return None
        if obj._mutex is not None and not read:
            obj._mutex.acquire()  # the common case, without lock()'s dispatch
        else:
            obj.lock(read=read)
        if obj._removing:
            obj.unlock()
            return None
        return obj

    def _get(self, index: dict[Any, T], key: Any) -> T | None:
        """index[key] or None, read under the list lock."""
        self._lock.acquire_read()
        try:
            return index.get(key)
        finally:
            self._lock.release_read()

    def find_by_uuid(self, uuid: Hashable, *, read: bool = False) -> T | None:
        """The object with uuid, locked (for reading: ``read``), or None."""
        return self._locked(self._get(self._by_uuid, uuid), read)

    def find_by_name(self, name: str, *, read: bool = False) -> T | None:
        """The object named name, locked, or None."""
        found = self._locked(self._get(self._by_name, name), read)
        if found is not None and found.name != name:  # renamed while we waited for it
            found.unlock()
            return None
        return found

    def find_by_id(self, id: int, *, read: bool = False) -> T | None:
        """The active object with id, locked, or None."""
        found = self._locked(self._get(self._by_id, id), read)
        if found is not None and found.id != id:  # deactivated while we waited for it
            found.unlock()
            return None
        return found

    def _present(self, obj: T) -> None:
        """ValueError unless obj is in this list. Caller: holds the list lock."""
        if self._by_uuid.get(obj.uuid) is not obj or obj._removing:
            raise ValueError(f"{obj!r} is not in ObjectList {self.name!r}")

    def activate(self, obj: T, id: int) -> None:
        """Give obj (held by the caller) the id; ValueError if another has it."""
        with self._lock.write():
            self._present(obj)
            other = self._by_id.get(id)
            if other is not None and other is not obj:
                raise ValueError(f"id {id} belongs to {other!r}")
            if obj.id is not None:
                del self._by_id[obj.id]
            obj.id = id
            self._by_id[id] = obj

    def deactivate(self, obj: T) -> None:
        """Take obj's id away (obj held by the caller)."""
        with self._lock.write():
            self._present(obj)
            if obj.id is not None:
                del self._by_id[obj.id]
                obj.id = None

    def rename(self, obj: T, new_name: str) -> None:
        """Rename obj (held by the caller) atomically; ValueError if the name is taken."""
        with self._lock.write():
            self._present(obj)
            other = self._by_name.get(new_name)
            if other is not None and other is not obj:
                raise ValueError(f"name {new_name!r} is held by uuid {other.uuid!r}")
            del self._by_name[obj.name]
            obj.name = new_name
            self._by_name[new_name] = obj

    def remove(self, obj: T) -> None:
        """Remove obj, which the caller has unlocked.

        From now on lookups do not return it; this waits until no one else
        holds it, then drops it from every index (and its id: it is inactive).
        RuntimeError if the calling thread holds it (it would wait for itself).
        If the wait fails (a signal, LockOrderError), obj stays in the list.
        """
        if obj.held():
            raise RuntimeError(f"{obj!r} is locked by this thread: unlock it before remove()")
        with self._lock.write():
            self._present(obj)
            obj._removing = True
        try:
            obj.lock()  # waits out whoever holds it now; later lookups see it removing
        except BaseException:
            with self._lock.write():
                obj._removing = False
            raise
        obj.unlock()
        with self._lock.write():
            del self._by_uuid[obj.uuid]
            del self._by_name[obj.name]
            if obj.id is not None:
                del self._by_id[obj.id]
                obj.id = None

    def _snapshot(self, active: bool | None) -> list[T]:
        with self._lock.read():  # ids change under the write lock: filter under this one
            if active is None:
                return list(self._by_uuid.values())
            return [obj for obj in self._by_uuid.values() if (obj.id is not None) == active]

    def for_each(self, fn: Callable[[T], object], active: bool | None = None) -> int:
        """Call fn on each object (active ones only, or inactive ones only), locked.

        Objects are taken from a snapshot and locked one at a time, with the
        list lock free, so fn may call back into the list (it must not lock
        another object of it). Returns how many objects fn saw.
        """
        seen = 0
        for obj in self._snapshot(active):
            if self._locked(obj, False) is None:
                continue
            try:
                if active is None or (obj.id is not None) == active:
                    fn(obj)
                    seen += 1
            finally:
                obj.unlock()
        return seen

    def names(self) -> list[str]:
        """A snapshot of the names."""
        with self._lock.read():
            return list(self._by_name)

    def __iter__(self) -> Iterator[T]:
        return iter(self._snapshot(None))

    # Last: inside the class body, this name hides the builtin ``list``.
    def list(self, active: bool | None = None) -> list[T]:
        """A snapshot of the objects (unlocked), or of the active or inactive ones."""
        return self._snapshot(active)
