"""The exception hierarchy.

Every error latchwire raises is either one of these or a standard ``OSError``
subclass chosen by errno (``FileNotFoundError``, ``PermissionError``, ...).
``_core`` raises these classes too, so they live in plain Python, imported by
everything and importing nothing.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "DumpInterrupted",
    "LockBusy",
    "LockCancelled",
    "LockDeadlock",
    "LockOrderError",
    "LockTimeout",
    "NetlinkError",
    "Overrun",
    "ProtocolError",
    "SessionLost",
]


class LockBusy(BlockingIOError):
    """The lock is held elsewhere and the caller asked not to wait."""

    def __init__(self, what: str | None = None, path: str | None = None) -> None:
        if what is None:
            what = os.strerror(errno.EAGAIN)
        super().__init__(errno.EAGAIN, what, path)


class LockTimeout(TimeoutError):
    """The caller waited ``timeout`` seconds without getting the lock."""

    def __init__(self, what: str | None = None, path: str | None = None) -> None:
        if what is None:
            what = os.strerror(errno.ETIMEDOUT)
        super().__init__(errno.ETIMEDOUT, what, path)


class LockCancelled(InterruptedError):
    """Another thread called ``cancel()`` while this acquisition was waiting."""

    def __init__(self, what: str | None = None, path: str | None = None) -> None:
        if what is None:
            what = os.strerror(errno.EINTR)
        super().__init__(errno.EINTR, what, path)


class LockOrderError(RuntimeError):
    """Two lock classes were taken in opposite orders (a potential deadlock)."""


class LockDeadlock(LockOrderError, OSError):
    """Waiting for a file lock would close a cycle of processes, each waiting for
    a lock the next one holds: the wait would never end (errno ``EDEADLK``).

    ``cycle`` is the cycle as ``(wait, hold)`` pairs of ``latchwire.waitgraph``'s
    ``Wait`` and ``Hold``, the calling thread's wait first; the message names
    every process, file and mode on it. Nothing was taken: the caller should let
    go of what it holds (which breaks the cycle for the others) and try again.
    """

    def __init__(self, what: str, path: str | None = None,
                 cycle: tuple[tuple[object, object], ...] = ()) -> None:
        super().__init__(errno.EDEADLK, what)
        self.errno = errno.EDEADLK
        self.strerror = what
        self.filename = path
        self.cycle = tuple(cycle)


class NetlinkError(OSError):
    """The kernel answered a netlink request with an error.

    ``errno`` is the kernel's error number; ``msg`` is the extended-ACK text
    when the kernel gave one (else ``None``), and ``offset`` the offset in the
    request the kernel pointed at (else ``None``).
    """

    def __init__(self, err: int, msg: str | None = None, offset: int | None = None) -> None:
        text = os.strerror(err) if msg is None else f"{os.strerror(err)}: {msg}"
        super().__init__(err, text)
        self.msg = msg
        self.offset = offset


class DumpInterrupted(NetlinkError):
    """The kernel flagged a dump inconsistent (``NLM_F_DUMP_INTR``): retry it."""


class Overrun(NetlinkError):
    """``ENOBUFS``: notifications were lost and the caller must resync."""


class ProtocolError(ValueError):
    """A malformed message: never a crash, never a silent truncation."""


class SessionLost(ConnectionError):
    """A remote lockspace's session with its coordination engine expired: the
    entries it carried (a wait, or a lease) are gone."""
