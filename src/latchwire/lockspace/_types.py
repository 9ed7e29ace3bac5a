"""What the lockspaces share: a lease as ``held()`` lists it, owners, resource
names and the states of a remote lease. Every lockspace module imports this
one; it imports none of them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable
from typing import Literal, NamedTuple

__all__ = ["Lease", "State", "check_name", "lease_owner", "resource_name"]

# A remote lease's state (see latchwire.lockspace.remote).
State = Literal["held", "suspended", "lost", "released"]


def resource_name(path: str | os.PathLike[str]) -> str:
    """The SHA-256 hex digest of path's canonical form (libvirt's lease names for disks)."""
    return hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()


def lease_owner(owner: Hashable) -> Hashable:
    """A lease's owner: this process's id by default; TypeError if it cannot key a table."""
    if owner is None:
        return os.getpid()
    try:
        hash(owner)
    except TypeError:
        raise TypeError(f"a lease owner must be hashable, not {type(owner).__name__}") from None
    return owner


class Lease(NamedTuple):
    """A resource held in a LockSpace: its name, mode and owners (oldest first)."""

    name: str
    mode: str  # "shared" or "exclusive"
    owners: tuple[Hashable, ...]


def check_name(name: str) -> str:
    """name, if it can name a resource (one path component); else ValueError."""
    if not isinstance(name, str) or not name or "\0" in name or "/" in name \
            or name in (".", ".."):
        raise ValueError(f"bad resource name {name!r}: it must be one path component")
    return name
