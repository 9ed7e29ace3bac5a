"""Lockspaces named by URL: ``zk://HOST:PORT[,HOST:PORT...]/PREFIX`` and
``etcd://HOST:PORT/PREFIX``. Each engine's module (and its client, an optional
extra) is imported only when a URL asks for it."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from latchwire.lockspace.remote import RemoteLockSpace

__all__ = ["connect"]


def connect(url: str, **options: float) -> RemoteLockSpace:
    """The remote lockspace a ``zk://HOST:PORT[,HOST:PORT...]/PREFIX`` or
    ``etcd://HOST:PORT/PREFIX`` URL names; options go to its constructor."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"{url!r}: no server")
    prefix = parts.path.rstrip("/") or "/latchwire"
    if parts.scheme == "zk":
        from latchwire.lockspace.zookeeper import ZkLockSpace
        return ZkLockSpace(parts.netloc, prefix, **options)
    if parts.scheme == "etcd":
        from latchwire.lockspace.etcd import EtcdLockSpace
        return EtcdLockSpace(parts.netloc, prefix, **options)
    raise ValueError(f"{url!r}: unknown lockspace scheme {parts.scheme!r}")
