"""Moved to ``latchwire.lockspace.etcd``; this name stays importable."""

from latchwire.lockspace.etcd import EtcdLockSpace

__all__ = ["EtcdLockSpace"]
