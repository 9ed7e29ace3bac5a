"""latchwire: locking and netlink for Linux system daemons, with a compiled core."""

from latchwire._core import wake_signal
from latchwire.errors import (
    DumpInterrupted,
    LockBusy,
    LockCancelled,
    LockOrderError,
    LockTimeout,
    NetlinkError,
    Overrun,
    ProtocolError,
)
from latchwire.locking import FileLock, Holder

__all__ = [
    "DumpInterrupted",
    "FileLock",
    "Holder",
    "LockBusy",
    "LockCancelled",
    "LockOrderError",
    "LockTimeout",
    "NetlinkError",
    "Overrun",
    "ProtocolError",
    "wake_signal",
]
__version__ = "0.1.0"
