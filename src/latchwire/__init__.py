"""latchwire: locking and netlink for Linux system daemons, with a compiled core.

The netlink layer (``netlink``, ``rtnl``, ``genl``), the lockspaces, the object
registries and the lock-order checker's module are imported when first used
(``latchwire.rtnl``, ``latchwire.LockSpace``, ``latchwire.lockorder``), so that a
program that only takes a file lock, and the ``latchwire lock`` command, start
without them (and without asyncio). ``LATCHWIRE_LOCKDEP=1`` still turns the
checker on when latchwire is imported.
"""

from __future__ import annotations

import os

from latchwire._core import Mutex, RWLock, wake_signal
from latchwire.errors import (
    DumpInterrupted,
    LockBusy,
    LockCancelled,
    LockDeadlock,
    LockOrderError,
    LockTimeout,
    NetlinkError,
    Overrun,
    ProtocolError,
    SessionLost,
)
from latchwire.locking import FileLock, Holder

TYPE_CHECKING = False  # typing's own costs an import of typing
if TYPE_CHECKING:
    from typing import Any

    from latchwire import genl, lockorder, netlink, rtnl
    from latchwire.lockspace import Lease, LockSpace, resource_name
    from latchwire.objects import Lockable, ObjectList

__all__ = [
    "DumpInterrupted",
    "FileLock",
    "Holder",
    "Lease",
    "LockBusy",
    "LockCancelled",
    "LockDeadlock",
    "LockOrderError",
    "LockSpace",
    "LockTimeout",
    "Lockable",
    "Mutex",
    "NetlinkError",
    "ObjectList",
    "Overrun",
    "ProtocolError",
    "RWLock",
    "SessionLost",
    "genl",
    "lockorder",
    "netlink",
    "resource_name",
    "rtnl",
    "wake_signal",
]
__version__ = "0.2.0"

# Imported on first use: name -> (module, attribute, or None for the module itself).
_LAZY = {
    "genl": ("latchwire.genl", None),
    "netlink": ("latchwire.netlink", None),
    "rtnl": ("latchwire.rtnl", None),
    "lockorder": ("latchwire.lockorder", None),
    "Lockable": ("latchwire.objects", "Lockable"),
    "ObjectList": ("latchwire.objects", "ObjectList"),
    "Lease": ("latchwire.lockspace", "Lease"),
    "LockSpace": ("latchwire.lockspace", "LockSpace"),
    "resource_name": ("latchwire.lockspace", "resource_name"),
}


if os.environ.get("LATCHWIRE_LOCKDEP") == "1":
    from latchwire import lockorder  # its import turns the checker on


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value  # asked once: later lookups find it without this call
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
