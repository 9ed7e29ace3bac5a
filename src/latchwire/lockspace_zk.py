"""Moved to ``latchwire.lockspace.zookeeper``; this name stays importable."""

from latchwire.lockspace.zookeeper import ZkLockSpace

__all__ = ["ZkLockSpace"]
