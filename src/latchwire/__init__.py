"""latchwire: locking and netlink for Linux system daemons, with a compiled core.

The netlink layer (``netlink``, ``rtnl``, ``genl``) and the lockspaces are
imported when first used (``latchwire.rtnl``, ``latchwire.LockSpace``), so that
a program that only takes a file lock, and the ``latchwire lock`` command,
start without them (and without asyncio).
"""

from typing import TYPE_CHECKING, Any

from latchwire import lockorder
from latchwire._core import Mutex, RWLock, wake_signal
from latchwire.errors import (
    DumpInterrupted,
    LockBusy,
    LockCancelled,
    LockOrderError,
    LockTimeout,
    NetlinkError,
    Overrun,
    ProtocolError,
    SessionLost,
)
from latchwire.locking import FileLock, Holder
from latchwire.objects import Lockable, ObjectList

if TYPE_CHECKING:
    from latchwire import genl, netlink, rtnl
    from latchwire.lockspace import Lease, LockSpace, resource_name

__all__ = [
    "DumpInterrupted",
    "FileLock",
    "Holder",
    "Lease",
    "LockBusy",
    "LockCancelled",
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
__version__ = "0.1.0"

# Imported on first use: name -> (module, attribute, or None for the module itself).
_LAZY = {
    "genl": ("latchwire.genl", None),
    "netlink": ("latchwire.netlink", None),
    "rtnl": ("latchwire.rtnl", None),
    "Lease": ("latchwire.lockspace", "Lease"),
    "LockSpace": ("latchwire.lockspace", "LockSpace"),
    "resource_name": ("latchwire.lockspace", "resource_name"),
}


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
