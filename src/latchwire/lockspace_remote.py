"""Moved to ``latchwire.lockspace.remote``; these names stay importable."""

from latchwire.lockspace._types import State, check_name
from latchwire.lockspace.remote import Listener, RemoteLease, RemoteLockSpace, SessionLost
from latchwire.lockspace.url import connect

__all__ = ["Listener", "RemoteLease", "RemoteLockSpace", "SessionLost", "State", "check_name",
           "connect"]
