"""Lockspaces: resources held by owners, exclusive or shared, on lease files
(``LockSpace(directory)``) or across hosts on ZooKeeper or etcd
(``LockSpace("zk://...")``, ``LockSpace("etcd://...")``).

- ``_types``: what they all share (``Lease``, owners, names, remote states);
- ``local``: the lockspace of files;
- ``remote``: what the engines share (sessions, leases with fencing tokens,
  the wait loop), with ``zookeeper`` and ``etcd`` for the engines themselves
  (their clients are optional extras, imported only when asked for), and
  ``url`` to reach one by URL.
"""

from latchwire.lockspace._types import Lease, lease_owner, resource_name
from latchwire.lockspace.local import LockSpace

__all__ = ["Lease", "LockSpace", "lease_owner", "resource_name"]
