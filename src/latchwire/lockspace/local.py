"""Lockspaces of files (libvirt's virLockSpace): LockSpace.

Each resource is a lease file in the lockspace's directory, locked through the
compiled file lock record (``latchwire._core.FileLock``); the remote
lockspaces (``latchwire.lockspace.remote`` and its engines) are reached
through ``LockSpace(url)``.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import weakref
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from latchwire import _core
from latchwire.errors import LockBusy, LockCancelled
from latchwire.lockspace._types import Lease, lease_owner

if TYPE_CHECKING:  # the engines' clients are optional extras: never imported here at run time
    from latchwire.lockspace.etcd import EtcdLockSpace
    from latchwire.lockspace.zookeeper import ZkLockSpace

__all__ = ["LockSpace"]

FileLock = _core.FileLock
QUEUE_SUFFIX = _core.QUEUE_SUFFIX  # a fair lock's queue file: LOCKFILE.~queue~


@dataclass
class _Resource:
    """One name's state in a LockSpace table: each owner's hold and each owner's wait."""

    shared: bool = False
    autocreate: bool = False
    holds: dict[Hashable, FileLock] = field(default_factory=dict)
    waits: dict[Hashable, FileLock] = field(default_factory=dict)


class LockSpace:
    """A directory of lease files (libvirt's virLockSpace), with owners and shared leases.

    ``LockSpace(directory)`` keeps resources as files in directory, created
    mode 0700 if missing (a directory that is a symbolic link is refused);
    names are plain file names. ``LockSpace(None)`` takes absolute paths as
    names and locks those files directly.

    Each hold belongs to an *owner* (any hashable; the process id by default),
    not to a thread. One table, guarded by one lock, records who holds what,
    so a resource held here is answered "busy" at once without opening a
    second descriptor of it (which would drop classic POSIX locks). Waits
    happen outside the table lock, in the kernel or on the file's in-process
    record.

    With ``fair=True`` waits are served in arrival order, across owners, threads
    and processes (``FileLock(fair=True)``): each resource's waiters queue in
    ``NAME.~queue~`` beside it, which goes with the resource when it is deleted
    and nobody is queued; names ending in ``.~queue~`` are refused.
    """

    def __new__(cls, directory: str | os.PathLike[str] | None, **options: Any) -> Any:
        """A ``zk://`` or ``etcd://`` URL gives a lockspace on that coordination engine
        (``latchwire.lockspace.url.connect``, with options); anything else a LockSpace
        of files."""
        if isinstance(directory, str) and directory.startswith(("zk://", "etcd://")):
            from latchwire.lockspace.url import connect
            return connect(directory, **options)
        return super().__new__(cls)

    @staticmethod
    def zookeeper(hosts: str | Sequence[str], prefix: str = "/latchwire",
                  **options: float) -> ZkLockSpace:
        """A lockspace on ZooKeeper (``latchwire.lockspace.zookeeper``; needs the zookeeper
        extra)."""
        from latchwire.lockspace.zookeeper import ZkLockSpace
        return ZkLockSpace(hosts, prefix, **options)

    @staticmethod
    def etcd(endpoint: str, prefix: str = "/latchwire", **options: float) -> EtcdLockSpace:
        """A lockspace on etcd (``latchwire.lockspace.etcd``; needs the etcd extra)."""
        from latchwire.lockspace.etcd import EtcdLockSpace
        return EtcdLockSpace(endpoint, prefix, **options)

    def __init__(self, directory: str | os.PathLike[str] | None, fair: bool = False) -> None:
        self.directory: str | None = None
        self.fair = fair
        if directory is not None:
            path = os.path.abspath(os.fspath(directory))
            if not os.path.islink(path):
                os.makedirs(path, mode=0o700, exist_ok=True)
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise OSError(errno.ELOOP, "lockspace directory is a symbolic link", path)
            head, tail = os.path.split(path)
            self.directory = os.path.join(os.path.realpath(head), tail)
        # The lock-order checker's class for every lease of this lockspace.
        self._lockclass = f"LockSpace {self.directory}"
        self._forget()
        _spaces.add(self)

    def _forget(self) -> None:
        """Start with an empty table (and, in a fork child, a table lock no thread holds)."""
        self._mutex = threading.Lock()
        self._table: dict[str, _Resource] = {}

    def __repr__(self) -> str:
        return f"<latchwire.LockSpace {self.directory!r} {len(self._table)} resources>"

    def path(self, name: str) -> str:
        """The file that stands for name. ValueError for a name that could escape."""
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"bad resource name {name!r}")
        if self.directory is None:
            if not os.path.isabs(name):
                raise ValueError(f"resource {name!r}: a LockSpace(None) takes absolute paths")
            return name
        if "/" in name or name in (".", ".."):
            raise ValueError(f"bad resource name {name!r}: it must name a file in the lockspace")
        if self.fair and name.endswith(QUEUE_SUFFIX):
            raise ValueError(f"bad resource name {name!r}: a fair lockspace keeps its queues "
                             f"in files named NAME{QUEUE_SUFFIX}")
        return os.path.join(self.directory, name)

    def acquire(self, name: str, owner: Hashable = None, shared: bool = False,
                wait: bool = False, timeout: float | None = None,
                autocreate: bool = True) -> None:
        """Take name for owner (default: this process's id).

        A resource held exclusively (or held shared, for an exclusive request)
        by another owner here or by another process raises LockBusy at once,
        unless ``wait``: then this waits (in the kernel, without polling), up to
        ``timeout`` seconds (LockTimeout). A shared request joins the shared
        holders. A missing resource is created if ``autocreate``, otherwise
        FileNotFoundError; in a lockspace directory, a resource acquired with
        ``autocreate`` is deleted on its last release even if its file was there
        before (see release()). RuntimeError if owner already holds or awaits name.
        """
        owner = lease_owner(owner)
        if timeout is not None and not wait:
            raise ValueError("a timeout needs wait=True")
        timeout = _core.check_timeout(timeout)
        waiting = self._begin(name, owner, shared, wait, autocreate)
        if waiting is None:
            return
        lock, generation = waiting
        try:
            lock._acquire_detached(True, timeout, shared, generation)
        finally:
            self._end_wait(name, owner, lock, generation, shared, autocreate)
        if not lock.locked:
            raise LockCancelled("the owner's leases were released while it waited", lock.path)

    async def acquire_async(self, name: str, owner: Hashable = None, shared: bool = False,
                            timeout: float | None = None, autocreate: bool = True) -> None:
        """``acquire(name, owner, shared, wait=True, timeout, autocreate)`` without
        blocking the event loop (as ``FileLock.acquire_async()`` waits: tasks queue in
        arrival order, with at most one helper thread per resource and loop, and only
        while the resource is held by another process or thread). A cancelled task
        leaves no wait and no lease behind; ``release_owner()`` ends the wait with
        LockCancelled, as it does a blocking one. asyncio only."""
        from latchwire._asynclock import _AsyncAcquire

        owner = lease_owner(owner)
        timeout = _core.check_timeout(timeout)
        waiting = self._begin(name, owner, shared, True, autocreate)
        assert waiting is not None
        lock, generation = waiting
        try:
            await _AsyncAcquire(lock, timeout, shared, generation)
        finally:
            self._end_wait(name, owner, lock, generation, shared, autocreate)
        if not lock.locked:
            raise LockCancelled("the owner's leases were released while it waited", lock.path)

    def _begin(self, name: str, owner: Hashable, shared: bool, wait: bool,
               autocreate: bool) -> tuple[FileLock, int] | None:
        """Without wait, take name for owner at once (None) or raise LockBusy; with
        wait, register owner's wait and return its lock and the cancel generation
        that release_owner() moves on (the caller waits, then calls _end_wait)."""
        lock = FileLock._canonical(self.path(name), autocreate, self._lockclass, self.fair)
        with self._mutex:
            res = self._table.setdefault(name, _Resource())
            if owner in res.holds or owner in res.waits:
                raise RuntimeError(f"{owner!r} already holds or awaits {name!r}")
            try:
                if not wait:
                    if res.holds and not (shared and res.shared):
                        raise LockBusy(f"held by {tuple(res.holds)}", lock.lockfile)
                    lock._acquire_detached(False, None, shared)
                    self._record(name, res, owner, lock, shared, autocreate)
                    return None
                res.waits[owner] = lock
                # Read with the wait registered: a release_owner() from now on
                # cancels this wait even before it has begun.
                return lock, lock.cancel_generation
            finally:
                if not res.holds and not res.waits:
                    del self._table[name]

    def _end_wait(self, name: str, owner: Hashable, lock: FileLock, generation: int,
                  shared: bool, autocreate: bool) -> None:
        """The wait _begin registered ended (granted or not): enter the lease, or let
        go of a grant release_owner() overtook."""
        with self._mutex:
            res = self._table[name]
            del res.waits[owner]
            if lock.locked and lock.cancel_generation != generation:
                # release_owner() came between the grant and this: the
                # owner is gone, so the grant is let go of at once.
                self._let_go(lock, not res.holds and self._deletes(autocreate))
            if lock.locked:
                self._record(name, res, owner, lock, shared, autocreate)
            elif not res.holds and not res.waits:
                del self._table[name]

    @staticmethod
    def _record(name: str, res: _Resource, owner: Hashable, lock: FileLock, shared: bool,
                autocreate: bool) -> None:
        """Enter owner's new hold. Caller: holds the table lock."""
        if not res.holds:
            res.shared = shared
            res.autocreate = autocreate
        res.holds[owner] = lock

    def release(self, name: str, owner: Hashable = None) -> None:
        """Release owner's hold on name; the last owner's release unlocks.

        A resource of a lockspace directory acquired with ``autocreate`` is
        deleted by its last release here (a ``LockSpace(None)`` never deletes
        the files it locks): unlinked
        while still locked, then unlocked, so whoever is granted the old file
        next sees it gone and moves on to a new one. A shared one is deleted
        only if the last owner can upgrade without waiting (no other process
        shares it). RuntimeError if owner does not hold name.
        """
        owner = lease_owner(owner)
        with self._mutex:
            self._release(name, owner)

    def _release(self, name: str, owner: Hashable) -> None:
        """release() with the table lock held."""
        res = self._table.get(name)
        lock = res.holds.get(owner) if res else None
        if res is None or lock is None:
            raise RuntimeError(f"{owner!r} does not hold {name!r}")
        self._let_go(lock, len(res.holds) == 1 and self._deletes(res.autocreate))
        del res.holds[owner]
        if not res.holds and not res.waits:
            del self._table[name]

    def _deletes(self, autocreate: bool) -> bool:
        """Whether a resource acquired with autocreate is deleted by its last release.

        A LockSpace(None) locks the caller's own files: those are never deleted.
        """
        return autocreate and self.directory is not None

    @staticmethod
    def _let_go(lock: FileLock, delete: bool) -> None:
        """Release lock; with delete, unlink its file first, while still holding it
        exclusively (a shared hold is upgraded if that needs no wait, else kept)."""
        if delete and lock.mode == "shared":
            try:
                lock.upgrade(blocking=False)
            except LockBusy:
                delete = False  # another process shares it: it is still in use
        if delete:
            lock.remove()
        else:
            lock.release()

    def release_owner(self, owner: Hashable) -> list[str]:
        """Release everything owner holds and cancel its waits; the names released."""
        with self._mutex:
            names = [name for name, res in self._table.items() if owner in res.holds]
            for name in names:
                self._release(name, owner)
            for res in self._table.values():
                if owner in res.waits:
                    res.waits[owner].cancel()
        return names

    def held(self) -> list[Lease]:
        """The resources held here, with mode and owners."""
        with self._mutex:
            return [Lease(name, "shared" if res.shared else "exclusive", tuple(res.holds))
                    for name, res in self._table.items() if res.holds]

    def create(self, name: str) -> None:
        """Create the resource file (mode 0600); FileExistsError if it exists."""
        os.close(os.open(self.path(name),
                         os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))

    def delete(self, name: str) -> None:
        """Delete the resource: lock it exclusively (LockBusy if held), unlink, release."""
        path = self.path(name)
        with self._mutex:
            if name in self._table:
                raise LockBusy("held in this lockspace", path)
            lock = FileLock._canonical(path, False, None, self.fair)
            lock.acquire(blocking=False)
            lock.remove()

    def export(self) -> tuple[dict[str, Any], list[int]]:
        """Hand every lease to a successor: (description, descriptors).

        Each descriptor keeps its lease's kernel lock; this lockspace forgets
        them (it is empty afterwards) without ever unlocking. Pass the
        descriptors to a child or across exec and call ``LockSpace.adopt``
        there; the leases are free only once every copy of a descriptor is
        closed. The description is JSON-serialisable when the owners are
        strings or numbers. RuntimeError while an acquisition is waiting.
        """
        with self._mutex:
            if any(res.waits for res in self._table.values()):
                raise RuntimeError("cannot export while acquisitions are waiting")
            leases: list[dict[str, Any]] = []
            fds: list[int] = []
            for name, res in self._table.items():
                leases.append({"name": name, "shared": res.shared,
                               "autocreate": res.autocreate, "owners": list(res.holds)})
                fds.append(next(iter(res.holds.values())).handover())
            self._table.clear()
        return {"directory": self.directory, "fair": self.fair, "leases": leases}, fds

    @classmethod
    def adopt(cls, description: dict[str, Any], fds: Sequence[int]) -> LockSpace:
        """Rebuild a lockspace from ``export()``'s description and descriptors.

        Takes ownership of the descriptors. The leases stay held throughout.
        """
        space = cls(description["directory"], fair=description.get("fair", False))
        leases = description["leases"]
        if len(leases) != len(fds):
            raise ValueError(f"{len(leases)} leases but {len(fds)} descriptors")
        for lease, fd in zip(leases, fds, strict=True):
            name, shared, owners = lease["name"], lease["shared"], lease["owners"]
            path = space.path(name)
            res = space._table[name] = _Resource(shared, lease["autocreate"])
            first = FileLock._canonical(path, True, space._lockclass, space.fair)
            first.adopt(fd, shared)
            res.holds[owners[0]] = first
            for owner in owners[1:]:
                joined = FileLock._canonical(path, True, space._lockclass, space.fair)
                joined._acquire_detached(False, None, True)
                res.holds[owner] = joined
        return space


_spaces: weakref.WeakSet[LockSpace] = weakref.WeakSet()


def _forget_spaces_in_child() -> None:
    """A fork child holds none of its parent's leases (nor its table lock)."""
    for space in _spaces:
        space._forget()


os.register_at_fork(after_in_child=_forget_spaces_in_child)
