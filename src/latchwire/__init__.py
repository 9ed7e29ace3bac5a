"""latchwire: locking and netlink for Linux system daemons, with a compiled core."""

from latchwire import genl, lockorder, netlink, rtnl
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
from latchwire.locking import FileLock, Holder, Lease, LockSpace, resource_name
from latchwire.objects import Lockable, ObjectList

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
__version__ = "0.2.0"
