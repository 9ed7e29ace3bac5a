"""File locks: FileLock, its asyncio face, and who holds a lock file.

The lock itself (the per-process record, the kernel calls, waits, timeouts and
cancellation) is compiled in ``latchwire._core``; this module adds what is not
on a hot path. Lockspaces live in ``latchwire.lockspace``; ``LockSpace``,
``Lease`` and ``resource_name`` stay importable from here too.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator

from latchwire import _core
from latchwire._procfs import command, granted_locks

# Not typing's: this module is on the path of every latchwire lock command, and typing
# is the largest import there would be (mypy reads the name as typing's).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    from latchwire._asynclock import _AsyncAcquire
    from latchwire.lockspace import Lease, LockSpace, lease_owner, resource_name

    class _HolderFields(NamedTuple):
        pid: int
        mode: str  # "shared" or "exclusive"
        kind: str  # "ofd", "posix" or "flock"
        command: str  # its command line, or "" if it could not be read
else:
    _HolderFields = collections.namedtuple("_HolderFields", ("pid", "mode", "kind", "command"))

__all__ = ["FileLock", "Holder", "Lease", "LockSpace", "file_holders", "lease_owner",
           "resource_name"]


_LOCKSPACE_NAMES = ("Lease", "LockSpace", "lease_owner", "resource_name")


def __getattr__(name: str) -> Any:
    """The lockspace names, imported when first asked for (a program that only
    takes file locks does not load the lockspaces)."""
    if name in _LOCKSPACE_NAMES:
        from latchwire import lockspace

        return getattr(lockspace, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Holder(_HolderFields):
    """One process holding a lock on a file: pid, mode ("shared" or "exclusive"),
    kind ("ofd", "posix" or "flock") and command (its command line, or "" if it
    could not be read); a named tuple."""

    __slots__ = ()


class FileLock(_core.FileLock):
    __doc__ = _core.FileLock.__doc__

    def acquire_async(self, timeout: float | None = None, shared: bool = False
                      ) -> _AsyncAcquire:
        """Acquire without blocking the event loop: ``async with lock.acquire_async():``.

        Also awaitable (``await lock.acquire_async()``, then ``release()``). A
        free lock is taken at once. Otherwise the task queues, in arrival order,
        behind the other tasks of its event loop waiting for the same lock file:
        when the lock is held by one of them, the release hands it on in the loop
        with no thread involved; when it is held elsewhere (another process, a
        thread), one helper thread per lock file and loop waits in the kernel (no
        polling) for the head of the queue. ``timeout`` (seconds, None for none)
        counts from the call. Cancelling the awaiting task takes it out of the
        queue, or cancels the helper's wait for it and returns once that wait has
        ended; a lock granted at the same moment is released, never leaked, and
        so is one granted after the event loop closed. The hold belongs to no
        thread. asyncio only (it needs the running loop).
        """
        from latchwire._asynclock import _AsyncAcquire

        return _AsyncAcquire(self, _core.check_timeout(timeout), shared)

    @staticmethod
    def holders(path: str | os.PathLike[str], lockfile: str | os.PathLike[str] | None = None
                ) -> list[Holder]:
        """The processes holding the lock ``FileLock(path, lockfile)`` would take."""
        return file_holders(_core.FileLock(path, lockfile).lockfile)


def _check_wait(dev: int, ino: int, exclusive: bool, kind: str, path: str,
                own: list[tuple[int, int, bool, str]]) -> None:
    """The core's deadlock check until the first wait that needs one: it imports
    latchwire.waitgraph (a program that never waits holding a lock never does) and
    makes its check_wait the core's."""
    from latchwire.waitgraph import check_wait

    _core._set_deadlock_check(check_wait)
    check_wait(dev, ino, exclusive, kind, path, own)


_core._set_deadlock_check(_check_wait)

def _lock_lines(text: str, key: str) -> Iterator[tuple[str, str, int]]:
    """(kind, mode, pid) of each granted lock in /proc/locks-style text on the inode key."""
    for kind, exclusive, pid, file, _, _ in granted_locks(text):
        if file == key:
            yield kind, "exclusive" if exclusive else "shared", pid


def file_holders(path: str | os.PathLike[str]) -> list[Holder]:
    """Every process holding a lock on the file at ``path`` (not followed).

    POSIX and flock holders come from /proc/locks; OFD locks are reported
    there with pid -1, so their holders are found by scanning every process's
    /proc/PID/fdinfo for a lock line on the same inode (a process sharing the
    open file description, such as a forked child, is listed too). An empty
    list if the file does not exist or nobody holds it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        table = f.read()
    found: dict[tuple[int, str, str], None] = {}
    for kind, mode, pid in _lock_lines(table, key):
        if pid > 0:
            found[pid, mode, kind] = None
    if any(pid <= 0 for _, _, pid in _lock_lines(table, key)):
        for pid, text in _fdinfos_naming(st.st_ino):
            for kind, mode, _ in _lock_lines(text, key):
                if kind != "posix":
                    found[pid, mode, kind] = None
    return [Holder(pid, mode, kind, command(pid)) for pid, mode, kind in found]


def _fdinfos_naming(ino: int) -> Iterator[tuple[int, str]]:
    """(pid, fdinfo text) of every open descriptor, in any process, of inode ino."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fdinfo = f"/proc/{entry.name}/fdinfo"
        try:
            fds = os.listdir(fdinfo)
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"{fdinfo}/{fd}") as f:
                    text = f.read()
            except OSError:
                continue
            if f"\nino:\t{ino}\n" in text:
                yield int(entry.name), text
