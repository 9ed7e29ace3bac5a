"""The lockspace on etcd, against a real etcd with real processes.

The module starts Debian's etcd on 127.0.0.1 (``coord.start_etcd``) and stops
it at the end; each test works under a prefix of its own. The cases every
engine shares are in ``remote_cases`` (imported below, run here against etcd);
this file adds what is etcd's own.
"""

from __future__ import annotations

import pytest
from coord import Server, etcd_missing, start_etcd
from remote_cases import *  # noqa: F403  (the shared cases, collected here)
from remote_cases import SESSION, engine_fixtures

from latchwire import LockBusy, LockSpace

pytestmark = pytest.mark.usefixtures("watchdog")


server, url, space, agents = engine_fixtures("etcd", "etcd", etcd_missing, start_etcd)


def test_url_and_factory_give_the_etcd_lockspace(server: Server, url: str) -> None:
    from latchwire.lockspace.etcd import EtcdLockSpace

    with LockSpace(url, session_timeout=SESSION) as by_url, \
            LockSpace.etcd(f"127.0.0.1:{server.port}", "/" + url.split("/", 3)[3],
                           session_timeout=SESSION) as by_factory:
        assert isinstance(by_url, EtcdLockSpace) and isinstance(by_factory, EtcdLockSpace)
        by_url.acquire("r", "a")
        with pytest.raises(LockBusy):
            by_factory.acquire("r", "b")
